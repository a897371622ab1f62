"""Text metrics of generated explanations: reference-based (BLEU-4, ROUGE-1/2/L, BERTScore) and
reference-free (length, repetition, Distinct-1/2).

Reference-based metrics exist only where references exist: every function here returns ``None``
(absent, never zero) for a metric that has no reference to compare with. Scales are those of
the packages that define the metrics, and are written into the run record:

- BLEU-4: sacrebleu's corpus BLEU (0-100, tokenizer ``13a``, exponential smoothing), one
  reference per explanation; its signature is recorded.
- ROUGE-1/2/L: rouge-score's F-measure (0-1), Porter stemming on, averaged over explanations.
- BERTScore: the bert-score package's F1 (0-1) with a named encoder and layer (default: the
  offline all-MiniLM-L6-v2, layer 6), no idf weighting, no baseline rescaling.
- Length: words per explanation (:func:`words`); repetition: seq-rep-2 of one explanation (the
  share of its word bigrams that repeat an earlier bigram of the same explanation, Welleck et
  al. 2020); Distinct-n: distinct word n-grams over all explanations / all n-grams (Li et al. 2016).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.util import package_version

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits, an inner apostrophe kept: ``don't``)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``len(tokens) - n + 1`` n-grams of a token list (none when it is shorter than n)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n over a corpus: distinct word n-grams / all word n-grams (None without n-grams)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else None


def seq_rep(text: str, n: int = 2) -> float | None:
    """seq-rep-n of one text: 1 - distinct n-grams / n-grams (None when it has no n-gram)."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def row_text_stats(text: str) -> dict[str, Any]:
    """Per-explanation reference-free numbers: ``length`` (words) and ``rep2`` (seq-rep-2)."""
    return {"length": len(words(text)), "rep2": seq_rep(text, 2)}


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def reference_free(texts: Sequence[str]) -> dict[str, float | None]:
    """Corpus numbers of explanations without references: mean length, mean seq-rep-2,
    Distinct-1/2, and the share of explanations that are empty."""
    stats = [row_text_stats(t) for t in texts]
    return {
        "length": _mean([s["length"] for s in stats]),
        "rep2": _mean([s["rep2"] for s in stats]),
        "distinct1": distinct_n(texts, 1),
        "distinct2": distinct_n(texts, 2),
        "empty": _mean([float(s["length"] == 0) for s in stats]),
    }


# ----------------------------------------------------------------------------- reference-based


def _paired(hyps: Sequence[str], refs: Sequence[str | None]) -> tuple[list[str], list[str]]:
    """The (explanation, reference) pairs that have a reference."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} explanations but {len(refs)} references")
    kept = [(h, r) for h, r in zip(hyps, refs, strict=True) if r is not None]
    return [h for h, _ in kept], [r for _, r in kept]


def bleu4(hyps: Sequence[str], refs: Sequence[str | None]) -> tuple[float | None, str | None]:
    """sacrebleu corpus BLEU-4 (0-100) over the explanations that have a reference.

    Returns:
        (score, sacrebleu signature); (None, None) when no explanation has a reference.
    """
    h, r = _paired(hyps, refs)
    if not h:
        return None, None
    from sacrebleu.metrics import BLEU

    bleu = BLEU(max_ngram_order=4, tokenize="13a", smooth_method="exp")
    return float(bleu.corpus_score(h, [r]).score), str(bleu.get_signature())


def _rouge_scorer() -> Any:
    """rouge-score's scorer for :data:`ROUGE_TYPES` with stemming, leaving logging as it was.

    Compatibility shim for rouge-score 0.1.2, which logs through absl from ``RougeScorer.__init__``:
    (1) before absl is set up that call makes ``logging.basicConfig`` attach a StreamHandler to the
    root logger: the root handlers are restored; (2) absl's handler keeps the ``sys.stderr`` of the
    moment absl was imported and closes it when logging is reconfigured (Hydra's job logging):
    pointed at the process's own stderr, which it never closes. Remove it when rouge-score stops
    logging there.
    """
    import logging
    import sys

    from rouge_score import rouge_scorer

    before = list(logging.root.handlers)
    try:
        return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    finally:
        logging.root.handlers[:] = before
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


def rouge_rows(hyps: Sequence[str], refs: Sequence[str | None]) -> list[dict[str, float] | None]:
    """Per-explanation ROUGE-1/2/L F-measures (rouge-score, stemming on); None without a reference."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} explanations but {len(refs)} references")
    if all(r is None for r in refs):
        return [None] * len(hyps)
    scorer = _rouge_scorer()
    out: list[dict[str, float] | None] = []
    for h, r in zip(hyps, refs, strict=True):
        if r is None:
            out.append(None)
            continue
        s = scorer.score(r, h)  # (target, prediction)
        out.append({k: float(s[k].fmeasure) for k in ROUGE_TYPES})
    return out


def rouge_means(rows: Sequence[dict[str, float] | None]) -> dict[str, float | None]:
    """Mean ROUGE-1/2/L F over the explanations that have a reference (None for each without any)."""
    return {k: _mean([r[k] for r in rows if r is not None]) for k in ROUGE_TYPES}


def bertscore_rows(
    hyps: Sequence[str],
    refs: Sequence[str | None],
    model: str | Path,
    layer: int,
    batch_size: int = 32,
) -> tuple[list[float | None], dict[str, Any] | None]:
    """Per-explanation BERTScore F1 with a named encoder and layer (bert-score package).

    Args:
        hyps: explanations.
        refs: one reference per explanation, None where there is none.
        model: a local encoder folder or hub name (the run's default, the offline
            all-MiniLM-L6-v2, is resolved by :mod:`benchmark.explain`).
        layer: the hidden layer whose token embeddings are matched.
        batch_size: sentences per encoder batch.

    Returns:
        ([F1 or None per explanation], facts: encoder, layer, idf, rescaling, package version,
        bert-score's hash); (all None, None) when no explanation has a reference.
    """
    import bert_score

    if all(r is None for r in refs):
        return [None] * len(hyps), None
    h, r = _paired(hyps, refs)
    scorer = bert_score.BERTScorer(
        model_type=str(model),
        num_layers=int(layer),
        lang="en",
        idf=False,
        rescale_with_baseline=False,
        device="cpu",
        batch_size=batch_size,
    )
    _, _, f1 = scorer.score(h, r, batch_size=batch_size)
    values = iter(float(x) for x in f1.tolist())
    per_row = [None if ref is None else next(values) for ref in refs]
    facts = {
        "encoder": str(model),
        "layer": int(layer),
        "idf": False,
        "rescale_with_baseline": False,
        "package": f"bert-score=={package_version('bert-score')}",
        "hash": Path(scorer.hash).name if "/" in scorer.hash else scorer.hash,
    }
    return per_row, facts
