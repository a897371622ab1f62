"""Typed, validated configuration for the parts where correctness matters.

The dataclasses are registered in Hydra's ConfigStore as schemas (``*_schema``),
so a misspelled key is rejected at composition; ``__post_init__`` checks values
when a config is turned into an object with :func:`to_object`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from benchmark.errors import ConfigError

# The project's Hydra config groups (data/, split/, model/, ...). Composition reads it through
# :data:`benchmark.compose.CONFIG_DIR`; record checks under ``benchmark.results`` take it from here.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

SPLIT_PROTOCOLS = ("loo", "temporal", "random", "tallrec_movie")
EVAL_PROTOCOLS = ("full", "sampled", "labeled", "candidates")
DUPLICATE_RULES = ("error", "first", "last", "max_rating")  # data.duplicates; see benchmark.data.atomic


@dataclass
class DataConfig:
    """Where a dataset comes from and how it is filtered before splitting."""

    name: str = "ml-100k"
    source: str = "bundled"  # bundled (inside recbole) | atomic (data.path) | recipe (datasets/<name>)
    path: str | None = None
    user_field: str = "user_id"
    item_field: str = "item_id"
    rating_field: str | None = "rating"
    timestamp_field: str | None = "timestamp"
    item_fields: dict[str, str] = field(default_factory=dict)  # role -> column, e.g. title: movie_title
    rating_threshold: float | None = None  # keep rating >= threshold (implicit feedback)
    kcore: int = 0
    duplicates: str = "error"  # a (user, item) pair on several rows: error | first | last | max_rating
    raw_dir: str | None = None  # recipe: files the user already has
    cache_dir: str = "${oc.env:LLM4REC_CACHE,.cache/llm4rec}"
    preprocess: str | None = None  # recipe: named preprocessing, e.g. p5

    def __post_init__(self) -> None:
        if self.source not in ("bundled", "atomic", "recipe"):
            raise ConfigError(f"data.source: unknown source '{self.source}' (bundled, atomic, recipe)")
        if self.source == "atomic" and not self.path:
            raise ConfigError("data.path: required when data.source=atomic (a directory of atomic files)")
        if self.kcore < 0:
            raise ConfigError(f"data.kcore: must be >= 0, got {self.kcore}")
        if self.duplicates not in DUPLICATE_RULES:
            raise ConfigError(f"data.duplicates: unknown rule '{self.duplicates}' (one of {DUPLICATE_RULES})")
        if self.duplicates == "max_rating" and self.rating_field is None:
            raise ConfigError("data.duplicates=max_rating needs data.rating_field (it is null)")


@dataclass
class SplitConfig:
    """A split protocol and its options; see benchmark.data.splits."""

    protocol: str = "loo"
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0  # only protocols that draw randomness use it
    holdout_items: float = 0.0  # strict cold-start: share of items kept out of train entirely
    label_threshold: float = 4.0  # labeled CTR view: label = rating >= threshold
    history: int = 10  # tallrec_movie: history length
    keep_last: int = 10000  # tallrec_movie: rows kept from the end
    like_threshold: float = 3.0  # tallrec_movie: like = rating > threshold
    truncate_users: float = 0.0  # cold-user view: share of test users whose train history is cut
    truncate_to: int = 3  # ... to their last N train interactions (0: none left)

    def __post_init__(self) -> None:
        if self.protocol not in SPLIT_PROTOCOLS:
            raise ConfigError(
                f"split.protocol: unknown protocol '{self.protocol}' (one of {SPLIT_PROTOCOLS})"
            )
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1) > 1e-9:
            raise ConfigError(
                f"split.ratios: need three non-negative parts summing to 1, got {list(self.ratios)}"
            )
        if not 0.0 <= self.holdout_items < 1.0:
            raise ConfigError(f"split.holdout_items: must be in [0, 1), got {self.holdout_items}")
        if isinstance(self.truncate_users, bool) or not isinstance(self.truncate_users, (int, float)) or not 0.0 <= self.truncate_users <= 1.0:
            raise ConfigError(f"split.truncate_users: a share of test users in [0, 1], got {self.truncate_users!r}")
        if isinstance(self.truncate_to, bool) or not isinstance(self.truncate_to, int) or self.truncate_to < 0:
            raise ConfigError(f"split.truncate_to: a number of train interactions >= 0, got {self.truncate_to!r}")


@dataclass
class SliceConfig:
    """Cold-start slice thresholds, counted on the train part only."""

    cold_user_max: int = 5
    cold_item_max: int = 5

    def __post_init__(self) -> None:
        if self.cold_user_max < 0 or self.cold_item_max < 0:
            raise ConfigError("slices: thresholds must be >= 0")


@dataclass
class EvalConfig:
    """Evaluation protocol, metric cut-offs and ranking batch size."""

    protocol: str = "full"
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    num_negatives: int = 100  # sampled and candidates protocols
    negatives_seed: int = 0
    also_candidates: bool = False  # full: also score the candidates view (1 target + candidates_negatives)
    candidates_negatives: int = 19  # the negatives of that view
    list_length: int = 20  # stored top-K per row (at least max(ks) and 20)
    chunk_users: int = 1024  # full ranking: users scored per chunk
    test_users: int | None = None  # evaluate a fixed seeded subset of this many test users (null = all)
    valid_metric: str = "ndcg@10"

    def __post_init__(self) -> None:
        if self.protocol not in EVAL_PROTOCOLS:
            raise ConfigError(f"eval.protocol: unknown protocol '{self.protocol}' (one of {EVAL_PROTOCOLS})")
        if not self.ks:
            raise ConfigError("eval.ks: need at least one cut-off")
        for k in self.ks:
            if not isinstance(k, int) or k <= 0:
                raise ConfigError(f"eval.ks: every K must be a positive integer, got {k}")
        if self.num_negatives <= 0:
            raise ConfigError(f"eval.num_negatives: must be > 0, got {self.num_negatives}")
        if self.candidates_negatives <= 0:
            raise ConfigError(f"eval.candidates_negatives: must be > 0, got {self.candidates_negatives}")
        if self.also_candidates and self.protocol != "full":
            raise ConfigError(
                f"eval.also_candidates: only eval=full adds a candidates view (this is eval={self.protocol})"
            )
        if self.test_users is not None and (not isinstance(self.test_users, int) or self.test_users <= 0):
            raise ConfigError(f"eval.test_users: must be null or a positive integer, got {self.test_users}")
        if self.chunk_users <= 0:
            raise ConfigError(f"eval.chunk_users: must be > 0, got {self.chunk_users}")
        if self.protocol == "labeled" and self.valid_metric != "auc":
            raise ConfigError(f"eval.valid_metric: the labeled protocol validates with auc, not {self.valid_metric}")
        if self.protocol != "labeled" and self.valid_metric.split("@")[0] not in ("hr", "recall", "precision", "ndcg", "mrr"):
            raise ConfigError(f"eval.valid_metric: expected <metric>@K such as ndcg@10, got {self.valid_metric}")
        self.ks = sorted(set(self.ks))
        self.list_length = max(self.list_length, max(self.ks), 20)

    @property
    def max_k(self) -> int:
        return self.list_length


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """How a model is trained (``model.train``): epochs, early stopping, batch size, optimizer.

    ``optimizer`` is a ``_partial_`` node of a ``torch.optim`` class; its other arguments are
    checked against that class's signature by :func:`benchmark.checks.check_model`.
    """

    max_epochs: int = 300
    patience: int = 10  # epochs without a better valid metric before early stopping
    batch_size: int = 2048
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    )

    def __post_init__(self) -> None:
        for name, low in (("max_epochs", 1), ("patience", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if not _whole(value) or value < low:
                raise ConfigError(f"model.train.{name}: expected an integer >= {low}, got {value!r}")
        opt = self.optimizer
        if not isinstance(opt, dict) or not isinstance(opt.get("_target_"), str):
            raise ConfigError(f"model.train.optimizer: expected a node with a _target_ (torch.optim.Adam), got {opt!r}")
        if opt.get("_partial_") is not True:
            raise ConfigError("model.train.optimizer._partial_: must be true (the model's parameters are bound later)")
        lr = opt.get("lr")
        if lr is not None and (
            not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0
        ):
            raise ConfigError(f"model.train.optimizer.lr: expected a number > 0, got {lr!r}")
        wd = opt.get("weight_decay")
        if wd is not None and (
            not isinstance(wd, (int, float)) or isinstance(wd, bool) or not math.isfinite(wd) or wd < 0
        ):
            raise ConfigError(f"model.train.optimizer.weight_decay: expected a number >= 0, got {wd!r}")


def register_schemas() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="split", name="split_schema", node=SplitConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    cs.store(group="slices", name="slices_schema", node=SliceConfig)


def to_object(node: Any, cls: type, key: str | None = None) -> Any:
    """Build a validated dataclass from a config node (or pass an instance through).

    Hydra's ``_target_``/``_convert_`` keys are ignored. With ``key`` (the config path, e.g.
    ``model.prompt``), every error is a one-line ConfigError that starts with it.
    """
    if isinstance(node, cls):
        return node
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    data.pop("_target_", None)
    data.pop("_convert_", None)
    prefix = f"{key}: " if key else ""
    extra = set(data) - set(cls.__dataclass_fields__)
    if extra:
        raise ConfigError(f"{prefix}unknown key(s) {sorted(extra)} for {cls.__name__}")
    if key is None:
        return cls(**data)
    try:
        return cls(**data)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix}{e}") from None
