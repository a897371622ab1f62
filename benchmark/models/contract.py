"""The model contract: what the run, training and evaluation call on a model, as typing Protocols.

A model is a plain ``nn.Module`` (built from ``model.module._target_``). The run asks only for
the methods of the capabilities it uses, checked once when the model is built
(:func:`check_model`): a missing method is a one-line ConfigError naming the model and the
method, not an AttributeError deep inside a training or evaluation loop.

Required, by the test rows the run scores (``eval=``):

- ``eval=full``: :class:`Scorer` ``score(users [B]) -> [B, n_items]``, or :class:`RowRanker`
  ``rank_rows(rows, row_ids [B], k, device) -> [B, k]`` for models that generate their ranked
  lists (the latter wins when a model has both).
- ``eval=sampled`` and ``eval=labeled``: :class:`PairScorer`
  ``score_pairs(users [B], items [B, C]) -> [B, C]``.
- ``eval=candidates``: :class:`CandidateAnswerer` ``answer_candidates(rows, row_ids [B], k,
  device) -> [B, k]`` (a generative model names one candidate per row; it wins when present),
  else :class:`PairScorer` (ranks the row's candidates as ``eval=sampled`` does). A model that
  generates ranked lists over the catalogue (:class:`RowRanker`) and cannot answer a candidate
  list is refused.

A model that trains (trainable parameters and a ``model.train`` config) also needs
:class:`Trainable` ``loss(batch) -> scalar``, and validates on the valid part with the full
ranking (``eval=full``/``sampled``: score or rank_rows) or the pair scores (``eval=labeled``).
Every shipped model implements both :class:`Scorer` and :class:`PairScorer` (the
:class:`Recommender` protocol); a model may refuse a protocol inside ``score`` with a
ConfigError of its own (TALLRec refuses ``eval=full``).

Optional capabilities (used when present):

- :class:`TrainStatistics` ``init_from_train(users [N], items [N])``: reads statistics of the
  train part (popularity) before training.
- :class:`OwnTrainData` ``train_dataset(split, batch_size, seed) -> IterableDataset`` of ready
  batches for ``loss``; without it, (user, positive, negative) pairs of the train part.
- :class:`RowRanker` ``rank_rows`` (above).
- :class:`FactReporter` ``prediction_facts() -> dict``: recorded under the record's ``model``.
- :class:`ItemLogProbs` ``item_logps(prompts, items, device) -> (logps [N, T], mask [N, T])``:
  log-probs of item ids with gradients, read by preference alignment (P5).
- ``outputs_probabilities`` (bool attribute): labeled scores are calibrated probabilities
  (enables LogLoss).

Torch-free at import: the protocols only name types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from benchmark.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch.utils.data import IterableDataset

    from benchmark.data.splits import Split
    from benchmark.data.views import RankingRows


@runtime_checkable
class Scorer(Protocol):
    """Scores the whole catalogue per user (``eval=full``)."""

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """users [B] -> scores [B, n_items]."""
        ...


@runtime_checkable
class PairScorer(Protocol):
    """Scores given (user, item) pairs (``eval=sampled``, ``eval=labeled``)."""

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [B], items [B, C] -> scores [B, C]."""
        ...


@runtime_checkable
class Recommender(Scorer, PairScorer, Protocol):
    """Both scoring methods: what every shipped model implements."""


@runtime_checkable
class RowRanker(Protocol):
    """Generates its ranked lists for ranking rows (instead of scoring the catalogue)."""

    def rank_rows(
        self, rows: RankingRows, row_ids: np.ndarray, k: int, device: torch.device | str
    ) -> np.ndarray:
        """rows, row_ids [B] -> ranked item indices [B, k] (-1: an output naming no item)."""
        ...


@runtime_checkable
class CandidateAnswerer(Protocol):
    """Reads each row's candidate list (``rows.negatives`` and the target, shuffled by seed) and
    names one candidate (``eval=candidates``)."""

    def answer_candidates(
        self, rows: RankingRows, row_ids: np.ndarray, k: int, device: torch.device | str
    ) -> np.ndarray:
        """rows, row_ids [B] -> [B, k]: the named candidate first (-1: the answer names no
        candidate), -1 after it."""
        ...

    def answer_facts(self, rows: RankingRows) -> list[dict[str, Any]]:
        """Per row of ``rows`` (answered rows): raw answer, candidate order, named candidate."""
        ...


@runtime_checkable
class Trainable(Protocol):
    """Has a training loss over the batches of its train stream."""

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A batch (dict of tensors) -> scalar loss."""
        ...


@runtime_checkable
class TrainStatistics(Protocol):
    """Reads statistics of the train part before training (e.g. popularity)."""

    def init_from_train(self, users: np.ndarray, items: np.ndarray) -> None:
        """users [N], items [N]: the train interactions (indices)."""
        ...


@runtime_checkable
class OwnTrainData(Protocol):
    """Builds its own train stream (windows, prompts, RecBole interactions)."""

    def train_dataset(self, split: Split, batch_size: int, seed: int) -> IterableDataset:
        """Ready batches for :meth:`Trainable.loss`, a function of ``seed`` (and the epoch)."""
        ...


@runtime_checkable
class FactReporter(Protocol):
    """Reports facts about its predictions (validity rates, prompt, backbone) for the record."""

    def prediction_facts(self) -> dict[str, Any]:
        """JSON-able facts recorded under the record's ``model``."""
        ...


@runtime_checkable
class ItemLogProbs(Protocol):
    """Log-probs of item ids given prompts, with gradients (a generative model that preference
    alignment can train: :mod:`benchmark.align`)."""

    def item_logps(self, prompts: Any, items: Any, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """N prompts and N items -> (logps [N, T], mask [N, T]) over each item's id tokens."""
        ...


# What each eval protocol calls: alternatives of (protocol, signature as users read it).
_EVAL_NEEDS: dict[str, tuple[tuple[type, str], ...]] = {
    "full": ((RowRanker, "rank_rows(rows, row_ids, k, device)"), (Scorer, "score(users)")),
    "sampled": ((PairScorer, "score_pairs(users, items)"),),
    "labeled": ((PairScorer, "score_pairs(users, items)"),),
    "candidates": ((CandidateAnswerer, "answer_candidates(rows, row_ids, k, device)"), (PairScorer, "score_pairs(users, items)")),
}


def answers_candidates(model: Any) -> bool:
    """Whether ``model`` names one candidate per candidate list (:class:`CandidateAnswerer`)."""
    return isinstance(model, CandidateAnswerer)


def ranks_rows(model: Any) -> bool:
    """Whether ``model`` generates its ranked lists (:class:`RowRanker`)."""
    return isinstance(model, RowRanker)


def reads_train(model: Any) -> bool:
    """Whether ``model`` reads statistics of the train part (:class:`TrainStatistics`)."""
    return isinstance(model, TrainStatistics)


def has_own_train_data(model: Any) -> bool:
    """Whether ``model`` builds its own train stream (:class:`OwnTrainData`)."""
    return isinstance(model, OwnTrainData)


def prediction_facts(model: Any) -> dict[str, Any]:
    """The model's facts about its predictions (:class:`FactReporter`), ``{}`` when it has none."""
    return dict(model.prediction_facts()) if isinstance(model, FactReporter) else {}


def outputs_probabilities(model: Any) -> bool:
    """Whether the model's labeled scores are calibrated probabilities (False when it does not say)."""
    return bool(getattr(model, "outputs_probabilities", False))


def valid_protocol(eval_protocol: str, model: Any = None) -> str:
    """The protocol validation ranks or scores the valid part with during training.

    ``labeled`` under ``eval=labeled``; otherwise ``full`` (the whole catalogue ranked), except
    for a pair scorer that neither answers ``eval=full`` (its ``eval_protocols`` leave it out,
    e.g. TALLRec) nor ranks rows itself, under ``eval=sampled``/``candidates``: it ranks each valid row's target among
    ``eval.num_negatives`` negatives outside the user's train and valid items (``sampled``).
    """
    if eval_protocol == "labeled":
        return "labeled"
    allowed = getattr(model, "eval_protocols", None)
    if (
        eval_protocol in ("sampled", "candidates")
        and allowed
        and "full" not in allowed
        and _has(model, PairScorer)
        and not _has(model, RowRanker)  # a model that ranks rows answers its valid rows itself (LLaRA)
    ):
        return "sampled"
    return "full"


def missing(model: Any, protocol: str, trains: bool = False) -> list[str]:
    """The methods ``model`` lacks for ``eval=protocol`` (and for training when ``trains``).

    Each entry reads ``score_pairs(users, items) required by eval=labeled``; empty when the
    model fulfils the contract. Works on a model class as well as an instance.
    """
    needs = [(protocol, f"eval={protocol}")]
    if trains:
        needs.append((valid_protocol(protocol, model), "validation during training"))
    out: list[str] = []
    for proto, why in needs:
        alternatives = _EVAL_NEEDS.get(proto)
        if alternatives is None:
            raise ConfigError(f"eval.protocol: unknown protocol {proto!r} (one of {', '.join(_EVAL_NEEDS)})")
        if not any(_has(model, p) for p, _ in alternatives):
            out.append(" or ".join(sig for _, sig in reversed(alternatives)) + f" required by {why}")
        elif proto == "candidates" and _has(model, RowRanker) and not _has(model, CandidateAnswerer):
            out.append(
                "answer_candidates(rows, row_ids, k, device) required by eval=candidates (it generates ranked "
                "lists over the catalogue; use eval=full, or model=llm_rerank or a scoring model under eval=candidates)"
            )
    allowed = getattr(model, "eval_protocols", None)  # a model that answers only some protocols
    if allowed and protocol not in allowed:
        out.append(f"support for eval={protocol} (it answers eval={' or eval='.join(allowed)} only)")
    if trains and not _has(model, Trainable):
        out.append(
            "loss(batch) required by training (model.train is set and the model has trainable parameters)"
        )
    return list(dict.fromkeys(out))


def check_model(model: Any, name: str, protocol: str, trains: bool = False) -> None:
    """Refuse a model that lacks a method the run will call.

    Args:
        model: the built model (or its class).
        name: the model's config name (``cfg.model.name``), for the message.
        protocol: the eval protocol (``full``, ``sampled``, ``labeled``, ``candidates``).
        trains: whether the run trains it (then ``loss`` and the validation method are needed).

    Raises:
        ConfigError: ``model foo: missing score_pairs(users, items) required by eval=labeled``.
    """
    gaps = missing(model, protocol, trains)
    if gaps:
        raise ConfigError(f"model {name}: missing {gaps[0]}")


def _has(model: Any, protocol: type) -> bool:
    if isinstance(model, type):  # a class: its methods, without building it
        return all(callable(getattr(model, m, None)) for m in _methods(protocol))
    return isinstance(model, protocol)


def _methods(protocol: type) -> list[str]:
    """The public methods a protocol declares (its own and its bases')."""
    return sorted(
        {
            m
            for b in protocol.__mro__
            if b.__module__ == __name__
            for m, v in vars(b).items()
            if callable(v) and not m.startswith("_")
        }
    )
