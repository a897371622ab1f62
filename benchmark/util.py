"""Small helpers every layer uses: atomic writes, hashing, package versions, the torch device.

The bottom layer: it imports nothing from the package, and nothing heavy at import time
(torch is imported inside :func:`torch_device` only), so the torch-free commands stay light.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

# Files written for others to read (results, caches) are world-readable; mkstemp makes 0600.
FILE_MODE = 0o644
DIR_MODE = 0o755


# ----------------------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (memory stays flat for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- versions


def package_version(dist: str) -> str | None:
    """Installed version of distribution ``dist``, None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- device


# CPU features that decide which low-precision kernels exist (bf16 and int8 matmuls).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")


def cpu_features(cpuinfo: Path | str = "/proc/cpuinfo") -> dict[str, object]:
    """The CPU model, torch's kernel level and which of :data:`CPU_FLAGS` the CPU has.

    Precision options run at very different speeds on CPUs with and without bf16/int8
    instructions, so records and benches name them. Where ``cpuinfo`` is missing (not Linux),
    ``model`` and ``flags`` are None.
    """
    import torch

    model, flags = None, None
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)  # the first CPU's lines are enough
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()[:200]
        elif key.strip() == "flags" and flags is None:
            have = set(value.split())
            flags = [f for f in CPU_FLAGS if f in have]
    return {"model": model, "torch_capability": torch.backends.cpu.get_cpu_capability(), "flags": flags}


def torch_device(accelerator: str | None = "cpu") -> torch.device:
    """The torch device of a trainer accelerator or a device string.

    ``gpu``/``cuda``/``auto`` give CUDA when it is available and the CPU otherwise; ``cpu`` the
    CPU; any other string (``cuda:1``, ``mps``) is passed to ``torch.device`` as it is.
    """
    import torch

    acc = str(accelerator or "cpu")
    if acc in ("gpu", "cuda", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(acc)


# ----------------------------------------------------------------------------- atomic writes


def atomic_write(path: Path | str, data: str | bytes, mode: int = FILE_MODE) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    Readers see the old file or the new one, never a half-written one; a failure leaves no
    temporary file behind. Text is written as UTF-8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_all(files: dict[Path, str | bytes], mode: int = FILE_MODE) -> None:
    """Write every file to a temporary name first, then rename them all: no half-written set."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            os.chmod(tmp, mode)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


@contextmanager
def staged_dir(final: Path | str, exists: Literal["replace", "keep"] = "replace") -> Iterator[Path]:
    """Fill a temporary folder beside ``final``; on success it becomes ``final`` in one rename.

    ``exists="replace"``: an existing ``final`` is replaced (moved aside first, then removed, so
    readers never see a missing or half-filled folder for longer than two renames).
    ``exists="keep"``: a cache entry; when another process created ``final`` first, its folder is
    kept and this one dropped (both hold the same content by construction of the cache key).
    On an error inside the block the temporary folder is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
        if exists == "keep":
            try:
                os.replace(tmp, final)
            except OSError:  # a non-empty folder of the same key exists already: keep it
                if not final.is_dir():
                    raise
        elif final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}.", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_marked_block(path: Path | str, start: str, end: str, text: str) -> None:
    """Replace what lies between the ``start`` and ``end`` marker lines of a text file (a README's
    generated table), atomically.

    Raises:
        ValueError: the file lacks one of the markers (one line naming both).
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8")
    if start not in old or end not in old:
        raise ValueError(f"{path}: no {start} ... {end} markers")
    head, rest = old.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write(path, f"{head}{start}\n{text}{end}{tail}")
