"""The recorded names of the item encoders (``configs/adapter/encoder``'s ``_target_`` values).

Configs and committed run records name the encoders
``benchmark.models.components.features.OpenCLIPEncoder`` and ``...features.HFTextEncoder``, and
that ``_target_`` is part of a run's config hash and run id; so this path stays importable for as
long as such records are reproduced. The encoders live in
:mod:`benchmark.models.components.encoders`, item images in :mod:`~benchmark.models.components.images`,
and the feature store in :mod:`~benchmark.models.components.feature_store`; import from those.
"""

from __future__ import annotations

from benchmark.models.components.encoders import HFTextEncoder, OpenCLIPEncoder

__all__ = ["HFTextEncoder", "OpenCLIPEncoder"]
