"""Any unmodified RecBole model as a benchmark model: ``RecBoleModel(split, data, name, params)``.

The RecBole class is built by name (``recbole.utils.get_model``) on the RecBole dataset
the bridge makes from our split (:mod:`baselines.bridge`), and trained by our Lightning
task through its own ``calculate_loss``; it is scored through its own ``predict`` and
``full_sort_predict``, with ids mapped both ways. Nothing of the model is re-implemented.

Supported RecBole model types:

- general (e.g. BPR, LightGCN): trained on (user, item, sampled negative) rows
  (pairwise), or positives and sampled negatives with a 0/1 label (pointwise);
- context-aware (e.g. DeepFM): trained on every train row with the CTR label
  (rating >= ``split.label_threshold``) and the user/item feature fields;
- sequential (e.g. SASRec, DIN): trained on train rows with their history
  (``item_id_list``, ``item_length``); DIN-like pointwise models use the CTR label. A model
  whose RecBole config names a batch ``transform`` (BERT4Rec's ``mask_itemseq``) gets every
  train batch through RecBole's own transform, as RecBole's train loader does;
- fitted at construction (EASE, ItemKNN, SLIMElastic: :data:`FITTED_MODELS`): RecBole builds
  their matrices from the train part's interaction matrix when the class is instantiated, and
  their one dummy parameter is frozen, so the run trains nothing (no epochs); the seconds of
  the fit are in :meth:`RecBoleModel.prediction_facts`. They score from the train interactions.

Context-aware models and DIN-like ones output probabilities (RecBole's ``predict`` is a
sigmoid), so the labeled protocol also reports LogLoss for them.

Histories at evaluation: a sequential model scores the valid part from the user's
train items and the test part from train + valid items; on a split whose rows carry
their own history (``tallrec_movie``), a labeled row is scored with that row's history,
found by its (user, item) pair, which names one row of such a split. The model cannot see which
part it is scoring, so it follows training: scoring uses the valid history until
weights are loaded into it (which :func:`benchmark.training.fit` does with the best
checkpoint when training ends, and ``run`` does when it reuses trained weights), then
the test history; a training step switches back. :attr:`RecBoleModel.eval_part` can also
be set directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

from baselines import bridge as B
from baselines import compat
from benchmark.data.histories import has_histories, padded_row_histories, padded_user_histories
from benchmark.data.interactions import Interactions
from benchmark.data.shots import draw_rows, rows_digest
from benchmark.data.splits import Split
from benchmark.errors import ConfigError, DataError

# RecBole trains these on user batches of the rating matrix (its UserDataLoader).
USER_BATCH_MODELS = (
    "MultiDAE",
    "MultiVAE",
    "MacridVAE",
    "CDAE",
    "ENMF",
    "RaCT",
    "RecVAE",
    "DiffRec",
    "LDiffRec",
)
# Closed-form / neighbourhood models that RecBole fits when the class is built, from the train part's
# interaction matrix (its TraditionalTrainer only runs a dummy epoch for them): built once, not trained.
FITTED_MODELS = ("EASE", "ItemKNN", "SLIMElastic")
# Sequential models whose forward is defined for an empty history (others gather at length - 1).
EMPTY_HISTORY_OK = ("DIN",)
# Rows per ``predict`` call when a model has no full-sort scorer.
PREDICT_ROWS = 1 << 16


def recbole_class(name: str) -> type:
    """The RecBole model class ``name``, or a one-line ConfigError saying why it cannot run here."""
    import importlib
    import importlib.util

    from recbole.utils import ModelType, get_model

    if name.lower() in ("lightgbm", "xgboost"):  # importing them needs the libraries
        raise ConfigError(
            f"model.module.name={name}: RecBole decisiontree model not supported: "
            "decision-tree models (xgboost/lightgbm) are not torch modules trained by gradient"
        )
    # get_model would import recbole.model.exlib_recommender (needs xgboost and lightgbm)
    # for a name found nowhere else: look it up in the other packages first.
    packages = ("general", "context_aware", "sequential", "knowledge_aware")
    if not any(importlib.util.find_spec(f"recbole.model.{p}_recommender.{name.lower()}") for p in packages):
        raise ConfigError(f"model.module.name: RecBole has no model '{name}'")
    try:
        cls = get_model(name)
    except AttributeError:
        raise ConfigError(
            f"model.module.name: RecBole has no model '{name}' (class names are case-sensitive, e.g. DeepFM)"
        ) from None
    except ImportError as e:
        raise ConfigError(f"model.module.name={name}: RecBole's model cannot be imported ({e})") from None
    why = None
    if cls.type == ModelType.KNOWLEDGE:
        why = "knowledge-aware models need a knowledge graph (.kg/.link files), which benchmark splits do not carry"
    elif cls.type == ModelType.TRADITIONAL and name not in FITTED_MODELS:
        why = "it is fitted in closed form / by counting (RecBole's TraditionalTrainer), not trained by gradient"
    elif cls.type == ModelType.DECISIONTREE:
        why = "decision-tree models (xgboost/lightgbm) are not torch modules trained by gradient"
    elif name in USER_BATCH_MODELS:
        why = "it trains on user batches of the rating matrix (RecBole's UserDataLoader), which the wrapper does not build"
    elif hasattr(importlib.import_module("recbole.trainer"), f"{name}Trainer"):
        why = f"it needs RecBole's own {name}Trainer (a custom training loop)"
    elif hasattr(importlib.import_module("recbole.data.dataset"), f"{name}Dataset"):
        why = f"it needs RecBole's own {name}Dataset"
    if why:
        raise ConfigError(
            f"model.module.name={name}: RecBole {cls.type.name.lower()} model not supported: {why}"
        )
    return cls


class _Rows:
    """CPU tensors of the RecBole train part (kept out of the module's device moves)."""

    def __init__(self, fields: dict[str, torch.Tensor]) -> None:
        self.fields = fields


class RecBoleStream(IterableDataset):
    """Shuffled batches of RecBole train rows (dicts of field tensors), one pass per epoch.

    ``mode``: ``rows`` yields the rows as they are; ``pairwise`` adds ``neg_item_id``;
    ``pointwise`` yields the positives with label 1 and as many negatives with label 0.
    Negatives are uniform over RecBole item ids the user has no train row with. As in
    :class:`benchmark.training.PairwiseStream`, the order and negatives of an epoch are a
    function of (seed, epoch) only (``epoch`` is set by the training task), and every
    batch is split across processes (rank r of world w takes rows r, r + w, ...).
    """

    def __init__(
        self,
        fields: dict[str, torch.Tensor],
        batch_size: int,
        seed: int,
        mode: str = "rows",
        n_items: int = 0,
    ) -> None:
        self.fields = fields
        self.n = len(next(iter(fields.values())))
        self.batch_size = batch_size
        self.seed = seed
        self.mode = mode
        self.n_items = n_items  # RecBole ids 1..n_items-1 (0 = padding)
        self.epoch = 0
        self.rank, self.world = 0, 1
        if mode != "rows":
            self.pos_keys = torch.unique(fields[B.UID] * n_items + fields[B.IID])  # sorted

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def _negatives(self, users: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """[N] uniform RecBole item ids that are no train positive of ``users`` [N]."""
        neg = torch.randint(1, self.n_items, (len(users),), generator=g)
        while True:  # resample negatives that hit a train positive
            keys = users * self.n_items + neg
            pos = torch.searchsorted(self.pos_keys, keys).clamp(max=len(self.pos_keys) - 1)
            bad = self.pos_keys[pos] == keys
            if not bad.any():
                return neg
            neg[bad] = torch.randint(1, self.n_items, (int(bad.sum()),), generator=g)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        neg = self._negatives(self.fields[B.UID][perm], g) if self.mode != "rows" else None
        for start in range(0, self.n, self.batch_size):
            idx = perm[start : start + self.batch_size][self.rank :: self.world]
            batch = {k: v[idx] for k, v in self.fields.items()}
            if self.mode == "pairwise":
                batch["neg_item_id"] = neg[start : start + self.batch_size][self.rank :: self.world]
            elif self.mode == "pointwise":
                k = len(idx)
                batch = {key: torch.cat([v, v]) for key, v in batch.items()}
                batch[B.IID][k:] = neg[start : start + self.batch_size][self.rank :: self.world]
                batch[B.LABEL] = torch.cat([torch.ones(k), torch.zeros(k)])
            yield batch


class RecBoleModel(nn.Module):
    """An unmodified RecBole model behind the benchmark's model interface.

    Args:
        split: our split (parts with user/item indices).
        data: the dataset (user/item side tables for feature fields).
        name: RecBole model class name (``DeepFM``, ``DIN``, ``SASRec``, ``BPR``, ``LightGCN``, ...).
        params: RecBole hyperparameters of the model (``embedding_size``, ``loss_type``, ...);
            unset ones take RecBole's defaults (its ``properties/model/<name>.yaml``).
        user_features: user columns as feature fields; None = all (only models that
            read features use them).
        item_features: item columns; None = all but the title.
        field_types: column -> ``token``/``token_seq``/``float`` overriding the inferred type.
        max_len: longest history for sequential models (RecBole's ``MAX_ITEM_LIST_LENGTH``).
        min_history: sequential train rows need at least this many history items.
        shots: train on this many train rows drawn by the run seed (the rows a TALLRec-style
            model with the same ``shots`` and seed tunes on), or ``all``/None for every row.

    Attributes:
        outputs_probabilities: True for models trained on the CTR label.
        eval_part: ``valid`` or ``test``: whose history a sequential model scores from.
    """

    def __init__(
        self,
        split: Split,
        data: Interactions,
        name: str,
        params: dict[str, Any] | None = None,
        user_features: list[str] | None = None,
        item_features: list[str] | None = None,
        field_types: dict[str, str] | None = None,
        max_len: int = 50,
        min_history: int = 1,
        shots: int | Literal["all"] | None = None,
    ) -> None:
        super().__init__()
        if shots is not None and shots != "all" and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
            raise ConfigError(f"model.module.shots: a positive number of train rows or 'all', got {shots!r}")
        self.shots = None if shots == "all" else shots
        self._shot_rows: np.ndarray | None = None
        from recbole.data.interaction import Interaction
        from recbole.model.abstract_recommender import AbstractRecommender
        from recbole.utils import InputType, ModelType

        self._interaction = Interaction
        params = {k: _plain(v) for k, v in dict(params or {}).items()}
        cls = recbole_class(name)
        self.name = name
        self.kind = {
            ModelType.GENERAL: "general",
            ModelType.TRADITIONAL: "general",  # FITTED_MODELS (others are refused above)
            ModelType.CONTEXT: "context",
            ModelType.SEQUENTIAL: "sequential",
        }[cls.type]
        self.outputs_probabilities = B.needs_label(cls)
        user_features, item_features, field_types = map(_plain, (user_features, item_features, field_types))
        spec = B.spec_for(cls, split, data, user_features, item_features, field_types, max_len, min_history)
        task = "labeled" if self.outputs_probabilities else "full"
        bridge = B.build_bridge(split, data, cls, spec, task, params)
        with compat.recbole_session():
            # RecBole builds the batch transform (it names the fields BERT4Rec reads) before the model.
            self._transform = _batch_transform(bridge.config)
            t0 = time.perf_counter()
            self.recbole = cls(bridge.config, bridge.parts["train"])  # FITTED_MODELS: fit on train only
            fit_seconds = time.perf_counter() - t0
        self.fitted = cls.type == ModelType.TRADITIONAL
        self._fit_seconds = fit_seconds if self.fitted else None
        if self.fitted:  # the dummy parameter: nothing to train, so the run trains no epochs
            for p in self.recbole.parameters():
                p.requires_grad_(False)
        self.n_rb_items = bridge.n_rb_items
        self._transform_data = _ItemCount(self.n_rb_items)
        self._user_rb = torch.as_tensor(bridge.user_rb)  # [n_users] our index -> RecBole id
        self._item_rb = torch.as_tensor(bridge.item_rb)  # [n_items]
        self._user_feat = _features(bridge.dataset.user_feat, B.UID)  # field -> [n_rb_users, ...]
        self._item_feat = _features(bridge.dataset.item_feat, B.IID)  # field -> [n_rb_items, ...]
        self._full_sort = type(self.recbole).full_sort_predict is not AbstractRecommender.full_sort_predict
        self._empty_history_ok = name in EMPTY_HISTORY_OK
        self._hist: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._row_keys: dict[str, torch.Tensor] = {}  # sequence splits: sorted user * n_items + item
        self._n_items = split.n_items
        if self.kind == "sequential":
            for part in ("valid", "test"):
                if has_histories(split):  # one history per row, looked up by (user, item)
                    df = split.parts[part]
                    keys = df["user"].to_numpy() * split.n_items + df["item"].to_numpy()
                    order = np.argsort(keys, kind="stable")
                    if len(keys) and (np.diff(keys[order]) == 0).any():
                        raise DataError(f"split {split.protocol}: a (user, item) pair names two {part} rows")
                    hist, length = padded_row_histories(split, part, max_len)
                    hist, length = hist[order], length[order]
                    self._row_keys[part] = torch.as_tensor(keys[order])
                else:
                    hist, length = padded_user_histories(split, part, max_len)  # our item indices, -1 = none
                rb = np.where(hist >= 0, bridge.item_rb[np.maximum(hist, 0)], 0)
                self._hist[part] = (torch.as_tensor(rb), torch.as_tensor(length))
        train = bridge.parts["train"].inter_feat
        self._train = _Rows({k: v for k, v in train.interaction.items()})
        if self.kind == "general":
            self._mode = (
                "pointwise" if getattr(cls, "input_type", None) == InputType.POINTWISE else "pairwise"
            )
        elif self.kind == "sequential" and B.train_negatives(cls, params):
            self._mode = "pairwise"
        else:
            self._mode = "rows"
        self.eval_part = "valid"
        self.register_load_state_dict_post_hook(_after_load)

    # ------------------------------------------------------------------ training

    def train_dataset(self, split: Split, batch_size: int, seed: int) -> RecBoleStream:
        """Seeded, epoch-dependent batches of the RecBole train part (shardable by batch)."""
        fields = self._train.fields
        if self.shots is not None:
            n = len(next(iter(fields.values())))
            if n != len(split.train):
                raise ConfigError(
                    f"model.module.shots: {len(split.train) - n} train rows have no history "
                    "(min_history); shots need every train row"
                )
            self._shot_rows = draw_rows(n, self.shots, seed, stream=0)  # RecBole train row p = our row p
            fields = {k: v[torch.as_tensor(self._shot_rows)] for k, v in fields.items()}
        return RecBoleStream(fields, batch_size, seed, self._mode, self.n_rb_items)

    def prediction_facts(self) -> dict[str, Any]:
        """Facts for ``record["model"]``: the RecBole class and, with ``shots``, the rows trained on."""
        rows = self._shot_rows
        facts: dict[str, Any] = {
            "name": self.name,
            "shots": self.shots if self.shots is not None else "all",
            "shot_rows_sha256": rows_digest(rows) if rows is not None else None,
        }
        if self.fitted:  # built from the train part's interaction matrix when the class was made
            facts["fit"] = {"epochs": 0, "seconds": self._fit_seconds, "from": "train"}
        return {"recbole": facts}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The RecBole model's ``calculate_loss`` on a batch (multi-part losses are summed)."""
        self.eval_part = "valid"
        inter = self._inter(dict(batch))
        if self._transform is not None:  # e.g. BERT4Rec's masking, as RecBole's train loader applies it
            inter = self._transform(self._transform_data, inter)
        out = self.recbole.calculate_loss(inter)
        return sum(out) if isinstance(out, tuple) else out

    # ------------------------------------------------------------------ scoring

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[B] user indices -> [B, n_items] scores over our catalogue (RecBole's ``full_sort_predict``)."""
        if self._row_keys:
            raise ConfigError(
                f"model={self.name}: this split's rows carry their own histories; score it with eval=labeled"
            )
        if not self._full_sort:  # e.g. context-aware models: predict every (user, item) pair
            n = len(self._item_rb)
            items = torch.arange(n, device=users.device)
            parts = [
                self.score_pairs(u, items.expand(len(u), n)) for u in users.split(max(1, PREDICT_ROWS // n))
            ]
            return torch.cat(parts) if parts else torch.zeros(0, n, device=users.device)
        inter = {B.UID: self._user_rb[users]}
        self._add_history(inter, users)
        scores = self.recbole.full_sort_predict(self._inter(inter)).view(len(users), -1)  # [B, n_rb_items]
        return scores.to(self._item_rb.device)[:, self._item_rb]  # FITTED_MODELS score on the CPU

    def item_embeddings(self) -> np.ndarray | None:
        """[n_items, d] the RecBole model's item embedding table (``item_embedding``) in our item
        order (RecBole's id order undone; its padding row dropped), None for a model without one."""
        table = getattr(self.recbole, "item_embedding", None)
        if not isinstance(table, nn.Embedding):
            return None
        weight = table.weight.detach().float().cpu()
        return weight[self._item_rb.cpu()].numpy().copy()

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B] users, [B, C] items -> [B, C] scores (RecBole's ``predict``; probabilities for CTR models)."""
        b, c = items.shape
        if c > 1 and self._full_sort and not self.outputs_probabilities and not self._row_keys:
            return self.score(users).gather(1, items)
        flat_users = users.repeat_interleave(c)  # [B*C]
        inter = {B.UID: self._user_rb[flat_users], B.IID: self._item_rb[items.reshape(-1)]}
        self._add_history(inter, flat_users, items.reshape(-1))
        out = []
        for start in range(0, b * c, PREDICT_ROWS):
            chunk = {k: v[start : start + PREDICT_ROWS] for k, v in inter.items()}
            out.append(self.recbole.predict(self._inter(chunk)).reshape(-1).to(items.device))
        return torch.cat(out).view(b, c)

    # ------------------------------------------------------------------ helpers

    def _add_history(
        self, inter: dict[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor | None = None
    ) -> None:
        """Add ``item_id_list``/``item_length`` of ``users`` (of the rows ``(users, items)`` on a
        sequence split) for the current eval part."""
        if self.kind != "sequential":
            return
        hist, length = self._hist[self.eval_part]
        at = users
        if self.eval_part in self._row_keys:
            keys = self._row_keys[self.eval_part]
            want = users * self._n_items + items
            at = torch.searchsorted(keys, want).clamp(max=max(len(keys) - 1, 0))
            if len(keys) == 0 or (keys[at] != want).any():
                raise ConfigError(
                    f"model={self.name}: a scored (user, item) pair is no {self.eval_part} row of this sequence split"
                )
        inter[B.ITEM_LIST] = hist[at]  # [N, max_len] RecBole ids, 0 = padding
        n = length[at]
        inter[B.ITEM_LEN] = n if self._empty_history_ok else n.clamp(min=1)  # empty: one padding item

    def _inter(self, fields: dict[str, torch.Tensor]) -> Any:
        """A RecBole ``Interaction`` with the user/item feature fields joined, as RecBole's loaders do."""
        if B.UID in fields:
            for k, v in self._user_feat.items():
                fields.setdefault(k, v[fields[B.UID]])
        if B.IID in fields:
            for k, v in self._item_feat.items():
                fields.setdefault(k, v[fields[B.IID]])
        if "neg_item_id" in fields:
            for k, v in self._item_feat.items():
                fields.setdefault(f"neg_{k}", v[fields["neg_item_id"]])
        return self._interaction(fields)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RecBoleModel:
        """Move RecBole's plain tensor attributes along with the parameters.

        RecBole models keep tensors outside parameters and buffers (LightGCN's adjacency
        matrix, DIN's feature tables and masks) and a ``device`` attribute; Lightning's
        device placement would leave them behind.
        """
        super()._apply(fn, recurse)
        device = fn(torch.zeros(1)).device
        for m in self.modules():
            for name, value in list(vars(m).items()):
                if name.startswith("_") and name not in (
                    "_user_rb",
                    "_item_rb",
                    "_user_feat",
                    "_item_feat",
                    "_hist",
                    "_row_keys",
                ):
                    continue
                moved = _move(value, fn, device)
                if moved is not value:
                    object.__setattr__(m, name, moved)
        return self

    def extra_repr(self) -> str:
        return f"name={self.name}, kind={self.kind}, eval_part={self.eval_part}"


def _after_load(module: RecBoleModel, incompatible: Any) -> None:
    """Weights were loaded (best checkpoint, or reused): score the test part; drop stale caches."""
    module.eval_part = "test"
    for name in ("restore_user_e", "restore_item_e"):  # e.g. LightGCN's cached propagated embeddings
        if getattr(module.recbole, name, None) is not None:
            setattr(module.recbole, name, None)


def _move(value: Any, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Any:
    from recbole.data.interaction import Interaction

    if isinstance(value, nn.Parameter) or isinstance(value, nn.Module):
        return value
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, torch.device):
        return device
    if isinstance(value, Interaction):
        return value.to(device)
    if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return {k: fn(v) for k, v in value.items()}
    if isinstance(value, dict) and value and all(isinstance(v, tuple) for v in value.values()):
        return {k: tuple(fn(t) if isinstance(t, torch.Tensor) else t for t in v) for k, v in value.items()}
    return value


class _ItemCount:
    """What RecBole's batch transforms read of a dataset: its item count (``num(ITEM_ID)``)."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


def _batch_transform(config: Any) -> Callable[[Any, Any], Any] | None:
    """RecBole's train-batch transform named by ``config['transform']`` (None when it names none)."""
    if not config["transform"]:
        return None
    from recbole.data.transform import construct_transform

    return construct_transform(config)


def _features(feat: Any, key: str) -> dict[str, torch.Tensor]:
    """Feature columns of a RecBole user/item table (without the id), indexed by RecBole id."""
    if feat is None:
        return {}
    return {k: v for k, v in feat.interaction.items() if k != key}


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (RecBole checks ``isinstance(x, list)``)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value
