"""A disk cache of P("Yes") per prompt for LLM scorers whose weights never change (no training).

The listwise reranker keeps the log-probability of each candidate's answer after its prompt the
same way (``model.module.score_cache``), keyed by the prompt's and the answer's token ids.

A zero-shot or in-context scorer gives the same P("Yes") to the same token ids every time, so runs
that score the same prompts again (a bandit over a template pool with other seeds or another
bandit, a rerun, a second protocol on the same rows) can read them instead of running the LM.
Entries live under ``<cache>/scores/<identity>/scores.jsonl`` (``<cache>`` = ``$LLM4REC_CACHE`` or
``.cache/llm4rec``), one ``{"k": <sha256 of the token ids>, "p": <float>}`` per line; the identity
is a sha256 of everything besides the tokens that decides the score: a digest of every parameter
and buffer of the backbone (its values, dtypes and names), the precision facts (quantized weights
are not parameters), the answer token ids and the scorer's class.

The cache is local and best-effort: a line cut short, not JSON, or with a value outside [0, 1]
is skipped (that prompt is scored again); a cache file that is a link, not a regular file or over
:data:`LIMIT` bytes is a one-line error naming it. Values computed in another batch can differ
from a fresh computation by float rounding (~1e-6); runs report how many scores they read.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError

LIMIT = 256 * 1024 * 1024  # bytes of one identity's scores file (~60 bytes a prompt)
FILE = "scores.jsonl"


def weights_digest(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every parameter and buffer of ``module``."""
    h = hashlib.sha256()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(torch.uint8).cpu().numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def identity_key(identity: dict[str, Any]) -> str:
    """sha256 (hex) of a scorer identity, as :class:`ScoreCache` names its folder."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def prompt_key(ids: Sequence[int]) -> str:
    """sha256 of a prompt's token ids (little-endian int64), hex."""
    return hashlib.sha256(torch.as_tensor(list(ids), dtype=torch.int64).numpy().tobytes()).hexdigest()


class ScoreCache:
    """P("Yes") of prompts by their token ids, for one scorer identity (see the module docstring).

    Args:
        root: the cache root.
        identity: what decides a score besides the tokens (JSON-serialisable); hashed to the folder.
        bounds: the values an entry may hold (P("Yes"): [0, 1]; the reranker's summed log-probabilities
            of an answer: [-inf, 0], finite); others are skipped on reading and never written.
    """

    def __init__(self, root: Path, identity: dict[str, Any], bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        self.lo, self.hi = bounds
        self.identity = identity_key(identity)
        self.folder = Path(root) / "scores" / self.identity[:32]
        self.path = self.folder / FILE
        self.values: dict[str, float] = {}
        self.read = self.computed = 0
        self._load(identity)

    def _load(self, identity: dict[str, Any]) -> None:
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise ConfigError(f"{self.path}: a score cache must be a regular file; delete it")
        if not self.path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "identity.json").write_text(json.dumps(identity, sort_keys=True, indent=1, default=str) + "\n")
            return
        size = self.path.stat().st_size
        if size > LIMIT:
            raise ConfigError(f"{self.path}: {size} bytes, over the score-cache limit of {LIMIT}; delete it")
        with open(self.path, "rb") as f:
            data = f.read(LIMIT)
        for line in data.split(b"\n"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # cut short by a kill, or not ours: scored again
            if not isinstance(entry, dict):
                continue
            k, p = entry.get("k"), entry.get("p")
            if isinstance(k, str) and len(k) == 64 and isinstance(p, float) and self._fits(p):
                self.values[k] = p

    def _fits(self, p: float) -> bool:
        return math.isfinite(p) and self.lo <= p <= self.hi

    def get(self, seqs: Sequence[Sequence[int]]) -> list[float | None]:
        """The cached P("Yes") of each prompt, None where it is not cached."""
        out = [self.values.get(prompt_key(s)) for s in seqs]
        self.read += sum(v is not None for v in out)
        return out

    def put(self, seqs: Sequence[Sequence[int]], values: Sequence[float]) -> None:
        """Add freshly computed scores (appended to the file and flushed)."""
        lines = []
        for s, p in zip(seqs, values, strict=True):
            k, p = prompt_key(s), float(p)
            if self._fits(p) and k not in self.values:
                self.values[k] = p
                lines.append(json.dumps({"k": k, "p": p}) + "\n")
        self.computed += len(seqs)
        if lines:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()

    def facts(self) -> dict[str, Any]:
        """What the record states: the identity (hash) and how many scores were read or computed."""
        return {"identity": self.identity[:16], "read": self.read, "computed": self.computed}
