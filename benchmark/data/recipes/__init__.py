"""Dataset recipes: obtain, verify and convert public raw datasets into RecBole atomic files.

A recipe (``datasets/<name>/recipe.yaml``) is data, not code: where each raw file
comes from (URL, optional archive), its published sha256 (or ``null`` when none
is published), its raw format, and how raw fields map to the canonical atomic
fields. :func:`prepare` is the one generic preparer for every recipe:

raw files (user's ``raw_dir`` or downloaded into ``cache_dir/raw/<name>/``)
-> sha256 check -> streamed, chunked reading of only the mapped columns, ids
mapped to ints on the fly -> named preprocessing (e.g. ``p5``: iterated 5-core,
time order) -> ``<name>.inter`` / ``<name>.item`` / ``<name>.user`` written into a
temporary directory that is renamed into place once complete.

The result directory is keyed by the recipe's content hash, the raw files'
checksums and the preprocessing name, so preparing twice reuses it. Nothing
here knows about splits.

The package, along its seams: :mod:`.schema` (recipe files), :mod:`.transforms` (field
transforms), :mod:`.fetch` (find, download, verify raw files), :mod:`.read` (streamed
reading and joins) and :mod:`.cache` (preprocess, write, the cached :func:`prepare`).

Recipe keys (see ``datasets/*/recipe.yaml`` for complete examples):

- ``name`` (= the folder name), ``homepage``, optional ``manual_download`` (where to
  get files that have no URL);
- ``archives``: ``{file name: {url, sha256}}`` for downloads that hold raw files;
- ``files``: ``{key: {name, url | archive, sha256, format: {type, ...}}}``; the format
  options are those of :func:`benchmark.data.raw_readers.read_chunks`;
- ``interactions``: ``{file, user_id, item_id, rating, timestamp}`` with ``rating`` a
  field or null, ``timestamp`` ``{field, unit: s|ms|date, format}`` or null (row
  number), optional ``dedup: first`` and ``rating_from: {file, user_id, item_id, value}``;
- ``items`` / ``users``: ``{file, id, fields: {column: {from, type, transform, ...}}}``
  with ``from`` a field or a list of fallbacks, ``type`` token|token_seq|float and
  ``transform`` text|list|float|year (default by type);
- ``preprocess``: ``{name: {option: value}}`` with options from :data:`PREPROCESS_KEYS`.

Conventions of the written files (read them with
:func:`benchmark.data.atomic.read_atomic`):

- ``.inter`` header ``user_id:token  item_id:token  rating:float  timestamp:float``
  (tab-separated); raw dataset ids; ``timestamp`` in unix seconds (the raw row
  number when a dataset has no time); ``rating`` empty when the dataset has none.
- Text fields are single-line (tabs and line breaks become spaces); list-valued
  fields (categories, genres) are joined with ``", "``.
"""

from benchmark.data.recipes.cache import (
    INTER_HEADER,
    PREPARER_VERSION,
    apply_preprocess,
    dataset_stats,
    prepare,
)
from benchmark.data.recipes.fetch import HASH_CACHE_MIN_BYTES, Checked, resolve_raw_files
from benchmark.data.recipes.read import InteractionTable, read_interactions, read_side
from benchmark.data.recipes.schema import (
    FIELD_TYPES,
    MANIFEST,
    PREPROCESS_KEYS,
    TIME_UNITS,
    Archive,
    RawFile,
    Recipe,
    available_recipes,
    load_recipe,
    recipes_root,
)
from benchmark.data.recipes.transforms import TRANSFORMS, t_float, t_list, t_text, t_year

__all__ = [
    "FIELD_TYPES",
    "HASH_CACHE_MIN_BYTES",
    "INTER_HEADER",
    "MANIFEST",
    "PREPARER_VERSION",
    "PREPROCESS_KEYS",
    "TIME_UNITS",
    "TRANSFORMS",
    "Archive",
    "Checked",
    "InteractionTable",
    "RawFile",
    "Recipe",
    "apply_preprocess",
    "available_recipes",
    "dataset_stats",
    "load_recipe",
    "prepare",
    "read_interactions",
    "read_side",
    "recipes_root",
    "resolve_raw_files",
    "t_float",
    "t_list",
    "t_text",
    "t_year",
]
