"""Our ``Split`` (+ ``Interactions``) -> the RecBole ``Config``/``Dataset`` an unmodified model expects.

The bridge writes the split as RecBole *benchmark* atomic files (``bench.train.inter``,
``bench.valid.inter``, ``bench.test.inter``, ``bench.user``, ``bench.item``) into a
scratch folder and lets RecBole's own loader read them (``benchmark_filename``), so a
wrapped model and RecBole's native ``Trainer`` (see :mod:`baselines.crosscheck`) see the
very same RecBole dataset. RecBole's filtering is off in benchmark mode: every row of
every part is kept, in our file order (row ``p`` of RecBole's part = row ``p`` of ours).

Tokens written to the files are codes, not raw values: user and item tokens are our
indices (``"17"``), feature tokens are positions in a sorted per-field vocabulary. So no
raw value can be mangled by RecBole's CSV reading (``"NA"``, spaces, tabs), and every
value maps back exactly (:meth:`Bridge.decode_part`, :meth:`Bridge.decode_features`).
RecBole remaps tokens to ids by first appearance with 0 reserved for padding; the
bridge keeps the exact maps both ways (``user_rb``/``rb_user``, ``item_rb``/``rb_item``).

Fields (names as RecBole's defaults):
- inter: ``user_id``, ``item_id`` (token), ``rating``, ``timestamp`` (float), ``label``
  (float, rating >= ``split.label_threshold``; only for models trained on labels) and,
  for sequential models, ``item_id_list`` (token_seq in the item id space, at most
  ``max_len`` items, oldest first) from which RecBole derives ``item_length``.
- user / item: the id and the selected side-table columns: float columns as ``float``,
  text with whitespace as ``token_seq`` (e.g. genres ``class``), else ``token``.

Histories are leak-free: a train row's history is the user's train items strictly
before it in (timestamp, file order); a valid row's history is the user's train items;
a test row's is the user's train and valid items (all in time order, last ``max_len``).
Sequential train rows with an empty history are left out, as RecBole's own sequence
augmentation does (``min_history``). A split whose rows carry their own history (a
sequence protocol such as ``tallrec_movie``) gives every row of every part that history.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from baselines import compat
from benchmark.data.histories import (
    has_histories,
    padded_row_histories,
    padded_train_histories,
    padded_user_histories,
)
from benchmark.data.interactions import Interactions
from benchmark.data.splits import PARTS, Split
from benchmark.errors import ConfigError, DataError

NAME = "bench"
UID, IID, LABEL, RATING, TIME = "user_id", "item_id", "label", "rating", "timestamp"
ITEM_LIST, ITEM_LEN = "item_id_list", "item_length"
RESERVED = {UID, IID, LABEL, RATING, TIME, ITEM_LIST, ITEM_LEN, "neg_item_id", "position_id"}
FIELD_TYPES = ("token", "token_seq", "float")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FeatureField:
    """One side-table column as a RecBole field.

    Attributes:
        name: column name (= RecBole field name).
        source: ``"user"`` or ``"item"``.
        type: ``"token"``, ``"token_seq"`` or ``"float"``.
    """

    name: str
    source: str
    type: str


@dataclass
class BridgeSpec:
    """What the bridge writes for one model.

    Attributes:
        features: side-table columns to write.
        label: write the CTR label (needs ratings).
        sequential: write ``item_id_list`` histories.
        max_len: longest history (RecBole's ``MAX_ITEM_LIST_LENGTH``).
        min_history: sequential train rows need at least this many history items.
        label_threshold: label = rating >= threshold.
    """

    features: list[FeatureField] = field(default_factory=list)
    label: bool = False
    sequential: bool = False
    max_len: int = 50
    min_history: int = 1
    label_threshold: float = 4.0


# ----------------------------------------------------------------------------- features


def infer_type(values: pd.Series) -> str:
    """RecBole type of a side-table column: float dtype -> float; text with whitespace -> token_seq."""
    if pd.api.types.is_float_dtype(values) or pd.api.types.is_integer_dtype(values):
        return "float"
    text = values.dropna().astype(str)
    return "token_seq" if text.str.contains(r"\s", regex=True).any() else "token"


def feature_fields(
    data: Interactions,
    user_features: list[str] | None,
    item_features: list[str] | None,
    field_types: dict[str, str] | None = None,
) -> list[FeatureField]:
    """The side-table columns a model uses, with their RecBole types.

    Args:
        data: the dataset (``data.users`` / ``data.items`` side tables).
        user_features: user columns; None = every column of the user table.
        item_features: item columns; None = every item column except the title
            (``data.item_fields["title"]``, free text kept for the LLM models).
        field_types: column -> type, overriding the inferred type.

    Raises:
        ConfigError: a named column is missing, reserved, or has an unknown type.
    """
    types = dict(field_types or {})
    out: list[FeatureField] = []
    for source, table, wanted in (("user", data.users, user_features), ("item", data.items, item_features)):
        if wanted is None:
            title = data.item_fields.get("title") if source == "item" else None
            wanted = [c for c in table.columns if c != title]
        for name in wanted:
            if name not in table.columns:
                have = ", ".join(map(str, table.columns)) or "none"
                raise ConfigError(
                    f"model.module.{source}_features: '{name}' is not a {source} column of {data.name} (have: {have})"
                )
            if name in RESERVED or not _FIELD_NAME.match(str(name)):
                raise ConfigError(f"model.module.{source}_features: '{name}' cannot be a RecBole field name")
            typ = types.pop(name, None) or infer_type(table[name])
            if typ not in FIELD_TYPES:
                raise ConfigError(f"model.module.field_types: '{name}: {typ}' (types: {FIELD_TYPES})")
            out.append(FeatureField(str(name), source, typ))
    if types:
        raise ConfigError(f"model.module.field_types: {sorted(types)} are not selected features")
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"model.module: a column is both a user and an item feature ({names})")
    return out


def _tokens(value: Any) -> list[str]:
    return [] if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).split()


def _vocab(values: pd.Series, typ: str) -> np.ndarray:
    """Sorted distinct tokens of a column (token_seq split on whitespace); '' never a token."""
    toks: set[str] = set()
    for v in values.to_numpy():
        if typ == "token_seq":
            toks.update(_tokens(v))
        elif not (v is None or (isinstance(v, float) and np.isnan(v))) and str(v) != "":
            toks.add(str(v))
    return np.array(sorted(toks), dtype=object)


def _encode(values: pd.Series, typ: str, vocab: np.ndarray) -> list[str]:
    """Column -> file cells: token codes (position in ``vocab``); ' ' for an empty sequence."""
    code = {t: str(i) for i, t in enumerate(vocab)}
    cells = []
    for v in values.to_numpy():
        if typ == "float":
            cells.append("" if v is None or np.isnan(float(v)) else repr(float(v)))
        elif typ == "token_seq":
            # A lone space reads back as an empty sequence (an empty cell would be NaN,
            # which RecBole 1.2.1 cannot handle under pandas 3).
            cells.append(" ".join(code[t] for t in _tokens(v)) or " ")
        else:
            s = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            cells.append(code[s] if s else "")
    return cells


# ----------------------------------------------------------------------------- files


def _write(path: Path, columns: dict[str, list[str] | np.ndarray], header: list[str]) -> None:
    body = pd.DataFrame(
        {h: np.asarray(v, dtype=object) for h, v in zip(header, columns.values(), strict=True)}
    )
    body.to_csv(path, sep="\t", index=False, header=True, lineterminator="\n")


def write_files(split: Split, data: Interactions, directory: Path, spec: BridgeSpec) -> dict[str, np.ndarray]:
    """Write ``bench.{train,valid,test}.inter``, ``bench.user`` and ``bench.item`` into ``directory``.

    Returns:
        feature name -> its token vocabulary (for decoding); floats have none.

    Raises:
        ConfigError: labels are needed but the dataset has no ratings.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if spec.label and any(split.parts[p]["rating"].isna().any() for p in PARTS):
        raise ConfigError(
            "this RecBole model trains on labels (rating >= split.label_threshold); the dataset has no ratings"
        )
    own = has_histories(split)
    hist_train = padded_train_histories(split, spec.max_len) if spec.sequential and not own else None
    for part in PARTS:
        df = split.parts[part]
        cols: dict[str, Any] = {
            UID: df["user"].astype(str).to_numpy(),
            IID: df["item"].astype(str).to_numpy(),
            RATING: [repr(float(r)) for r in df["rating"].to_numpy()],
            TIME: [repr(float(t)) for t in df["timestamp"].to_numpy()],
        }
        header = [f"{UID}:token", f"{IID}:token", f"{RATING}:float", f"{TIME}:float"]
        if spec.label:
            cols[LABEL] = (df["rating"].to_numpy() >= spec.label_threshold).astype(int).astype(str)
            header.append(f"{LABEL}:float")
        keep = np.ones(len(df), dtype=bool)
        if spec.sequential:
            if own:
                hist, length = padded_row_histories(split, part, spec.max_len)
                keep = length >= spec.min_history if part == "train" else keep
            elif part == "train":
                hist, length = hist_train
                keep = length >= spec.min_history
            else:
                uh, ul = padded_user_histories(split, part, spec.max_len)
                hist, length = uh[df["user"].to_numpy()], ul[df["user"].to_numpy()]
            cols[ITEM_LIST] = [" ".join(map(str, h[:n])) or " " for h, n in zip(hist, length, strict=True)]
            header.append(f"{ITEM_LIST}:token_seq")
        cols = {k: np.asarray(v, dtype=object)[keep] for k, v in cols.items()}
        _write(directory / f"{NAME}.{part}.inter", cols, header)

    vocab: dict[str, np.ndarray] = {}
    for source, ids, table in (("user", split.user_ids, data.users), ("item", split.item_ids, data.items)):
        fields = [f for f in spec.features if f.source == source]
        key = UID if source == "user" else IID
        cols = {key: np.arange(len(ids)).astype(str)}
        header = [f"{key}:token"]
        rows = table.reindex(pd.Index(ids, dtype=object)) if len(fields) else None
        for f in fields:
            values = rows[f.name]
            if f.type != "float":
                vocab[f.name] = _vocab(values, f.type)
            cols[f.name] = _encode(values, f.type, vocab.get(f.name, np.zeros(0, dtype=object)))
            header.append(f"{f.name}:{f.type}")
        _write(directory / f"{NAME}.{source}", cols, header)
    return vocab


# ----------------------------------------------------------------------------- config + dataset


def recbole_config(
    model: Any,
    directory: Path,
    spec: BridgeSpec,
    task: str,
    params: dict[str, Any] | None = None,
    native: bool = False,
    seed: int = 0,
) -> Any:
    """RecBole ``Config`` for the files in ``directory`` (call inside ``compat.recbole_session``).

    Args:
        model: RecBole model class (or its name).
        directory: where :func:`write_files` wrote ``bench.*``.
        spec: what was written.
        task: ``labeled`` (AUC/LogLoss on every row) or a ranking protocol (full ranking, Hit/NDCG@10).
        params: model hyperparameters and RecBole settings; override everything else.
        native: the config is for RecBole's own trainer (GPU if this process sees one).
        seed: RecBole's seed setting.
    """
    from recbole.config import Config

    users = [UID] + [f.name for f in spec.features if f.source == "user"]
    items = [IID] + [f.name for f in spec.features if f.source == "item"]
    inter = (
        [UID, IID, RATING, TIME] + ([LABEL] if spec.label else []) + ([ITEM_LIST] if spec.sequential else [])
    )
    labeled = task == "labeled"
    params = dict(params or {})
    cfg: dict[str, Any] = {
        "data_path": str(directory.parent),
        "checkpoint_dir": str(directory / "saved"),
        "benchmark_filename": list(PARTS),
        "load_col": {"inter": inter, "user": users, "item": items},
        "USER_ID_FIELD": UID,
        "ITEM_ID_FIELD": IID,
        "RATING_FIELD": RATING,
        "TIME_FIELD": TIME,
        "LABEL_FIELD": LABEL,
        "threshold": None,
        "seq_len": None,
        "normalize_all": False,
        "normalize_field": None,
        "numerical_features": [],
        "MAX_ITEM_LIST_LENGTH": spec.max_len,
        "alias_of_item_id": [ITEM_LIST] if spec.sequential else None,
        "gpu_id": compat.gpu_id(native),
        "show_progress": False,
        "state": "WARNING",
        "seed": seed,
        "reproducibility": True,
        "repeatable": spec.sequential,
        "eval_args": {
            "split": {"RS": [0.8, 0.1, 0.1]},  # unused: benchmark files are pre-split
            "order": "TO",
            "group_by": None if labeled else "user",
            "mode": "labeled" if labeled else "full",
        },
        "metrics": ["AUC", "LogLoss"] if labeled else ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "AUC" if labeled else "NDCG@10",
        "eval_batch_size": 4096,
    }
    if not train_negatives(model, params):
        cfg["train_neg_sample_args"] = None
    cfg.update(params)
    return Config(model=model, dataset=directory.name, config_dict=cfg)


def model_defaults(name: str) -> dict[str, Any]:
    """RecBole's default hyperparameters of a model (its ``properties/model/<name>.yaml``)."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("recbole")
    path = Path(spec.origin).parent / "properties" / "model" / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def needs_label(model: Any) -> bool:
    """Whether the model trains on the CTR label: context-aware models and pointwise
    sequential ones such as DIN."""
    from recbole.utils import InputType, ModelType

    return model.type == ModelType.CONTEXT or (
        model.type == ModelType.SEQUENTIAL and getattr(model, "input_type", None) == InputType.POINTWISE
    )


def spec_for(
    model: Any,
    split: Split,
    data: Interactions,
    user_features: list[str] | None = None,
    item_features: list[str] | None = None,
    field_types: dict[str, str] | None = None,
    max_len: int = 50,
    min_history: int = 1,
) -> BridgeSpec:
    """What to write for a RecBole model class: features, label (CTR models), histories (sequential)."""
    from recbole.utils import ModelType

    return BridgeSpec(
        features=feature_fields(data, user_features, item_features, field_types),
        label=needs_label(model),
        sequential=model.type == ModelType.SEQUENTIAL,
        max_len=max_len,
        min_history=min_history,
        label_threshold=float(split.config.get("label_threshold", 4.0)),
    )


def train_negatives(model: Any, params: dict[str, Any]) -> bool:
    """Whether training samples negative items: general models, and sequential ones with BPR loss."""
    from recbole.utils import ModelType

    if model.type == ModelType.GENERAL:
        return True
    if model.type == ModelType.SEQUENTIAL and not needs_label(model):
        return params.get("loss_type", model_defaults(model.__name__).get("loss_type")) == "BPR"
    return False


def load_recbole_dataset(config: Any) -> Any:
    """RecBole's (pandas-3-safe) dataset for ``config``, not yet built into parts."""
    return compat.dataset_class(config["MODEL_TYPE"])(config)


@dataclass
class Bridge:
    """A RecBole dataset built from our split, with exact maps between the id spaces.

    Attributes:
        config: the RecBole ``Config``.
        dataset: RecBole's full dataset (after :meth:`build`, its feature tables are
            ``Interaction`` objects indexed by RecBole ids).
        parts: ``train``/``valid``/``test`` -> RecBole dataset of that part (our rows, our order).
        spec: what was written.
        vocab: feature -> token vocabulary (code -> raw token).
        user_rb, item_rb: [n_users], [n_items] our index -> RecBole id (>= 1).
        rb_user, rb_item: RecBole id -> our index (-1 for the padding id 0).
    """

    config: Any
    dataset: Any
    parts: dict[str, Any]
    spec: BridgeSpec
    vocab: dict[str, np.ndarray]
    user_rb: np.ndarray
    item_rb: np.ndarray
    rb_user: np.ndarray
    rb_item: np.ndarray

    @classmethod
    def from_dataset(
        cls,
        config: Any,
        dataset: Any,
        spec: BridgeSpec,
        vocab: dict[str, np.ndarray],
        n_users: int,
        n_items: int,
    ) -> Bridge:
        """Compute the id maps of a loaded dataset, then build its parts."""
        maps: dict[str, np.ndarray] = {}
        for fld, n, ours, theirs in (
            (UID, n_users, "user_rb", "rb_user"),
            (IID, n_items, "item_rb", "rb_item"),
        ):
            token_id = dataset.field2token_id[fld]
            ours_to_rb = np.array([token_id.get(str(i), -1) for i in range(n)], dtype=np.int64)
            if (ours_to_rb < 1).any() or len(token_id) != n + 1:
                raise DataError(
                    f"RecBole bridge: {fld} ids do not cover the catalogue ({len(token_id) - 1} vs {n})"
                )
            rb_to_ours = np.full(n + 1, -1, dtype=np.int64)
            rb_to_ours[ours_to_rb] = np.arange(n)
            maps[ours], maps[theirs] = ours_to_rb, rb_to_ours
        built = dataset.build()
        if spec.sequential:
            # Benchmark files are padded to their longest history; RecBole's own sequence
            # augmentation pads to MAX_ITEM_LIST_LENGTH, which models size layers by (DIN's mask).
            for part in [dataset, *built]:
                seqs = part.inter_feat.interaction[ITEM_LIST]
                if seqs.shape[1] < spec.max_len:
                    part.inter_feat.interaction[ITEM_LIST] = torch.nn.functional.pad(
                        seqs, (0, spec.max_len - seqs.shape[1])
                    )
        return cls(config, dataset, dict(zip(PARTS, built, strict=True)), spec, vocab, **maps)

    @property
    def n_rb_items(self) -> int:
        """RecBole's item count (catalogue + the padding id)."""
        return len(self.rb_item)

    def decode_part(self, part: str) -> pd.DataFrame:
        """A RecBole part back in our terms: ``user``, ``item`` indices (+ ``label``, ``history``)."""
        inter = self.parts[part].inter_feat
        out = pd.DataFrame(
            {
                "user": self.rb_user[inter[UID].numpy()],
                "item": self.rb_item[inter[IID].numpy()],
            }
        )
        if LABEL in inter:
            out["label"] = inter[LABEL].numpy().astype(np.int64)
        if ITEM_LIST in inter:
            seqs, lens = inter[ITEM_LIST].numpy(), inter[ITEM_LEN].numpy()
            out["history"] = [self.rb_item[s[:n]].tolist() for s, n in zip(seqs, lens, strict=True)]
        return out

    def decode_features(self, source: str) -> pd.DataFrame:
        """Side features back as raw values, one row per our user/item index.

        Token fields give the raw string ('' when missing), token_seq fields the tokens
        joined by one space, float fields the float (RecBole fills missing with the mean).
        """
        feat = self.dataset.user_feat if source == "user" else self.dataset.item_feat
        back = self.user_rb if source == "user" else self.item_rb
        out = {}
        for f in self.spec.features:
            if f.source != source:
                continue
            values = feat[f.name][back].numpy()
            if f.type == "float":
                out[f.name] = values.astype(np.float64)
                continue
            codes = self.dataset.field2id_token[f.name]
            vocab = self.vocab[f.name]

            def raw(rb_id: int, codes: np.ndarray = codes, vocab: np.ndarray = vocab) -> str:
                return "" if rb_id == 0 else str(vocab[int(codes[rb_id])])

            if f.type == "token":
                out[f.name] = [raw(int(v)) for v in values]
            else:
                out[f.name] = [" ".join(raw(int(v)) for v in row if v != 0) for row in values]
        return pd.DataFrame(out)


def build_bridge(
    split: Split,
    data: Interactions,
    model: Any,
    spec: BridgeSpec,
    task: str,
    params: dict[str, Any] | None = None,
    native: bool = False,
    seed: int = 0,
    workdir: Path | None = None,
) -> Bridge:
    """Write the split as RecBole benchmark files, load them with RecBole, build the parts.

    Args:
        split, data: our split and dataset.
        model: RecBole model class or name.
        spec: fields to write.
        task: ``labeled`` or a ranking protocol (sets RecBole's eval settings).
        params: RecBole settings and model hyperparameters.
        native: the config is for RecBole's own trainer.
        seed: RecBole's seed setting.
        workdir: keep the files here (default: a temporary folder, removed afterwards).
    """
    tmp = Path(tempfile.mkdtemp(prefix="recbole-bridge-")) if workdir is None else workdir
    directory = tmp / NAME
    try:
        with compat.recbole_session():
            vocab = write_files(split, data, directory, spec)
            config = recbole_config(model, directory, spec, task, params, native, seed)
            dataset = load_recbole_dataset(config)
            return Bridge.from_dataset(config, dataset, spec, vocab, split.n_users, split.n_items)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
