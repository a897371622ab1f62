"""Bounded readers for untrusted submission archives (``.tar.gz`` or ``.tar``) and run folders.

Standard library only, so an archive is checked (and a bad one rejected) before any heavy
module (numpy, torch) is imported: memory stays bounded by :class:`~benchmark.untrusted.Limits`
whatever the input claims. The generic part (limits, :class:`~benchmark.untrusted.Rejected`,
run folders, records, predictions lines) is :mod:`benchmark.untrusted`; this module adds the
tar stream.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from benchmark.untrusted import (
    DEFAULT_LIMITS,
    KIB,
    RECORD,
    Limits,
    Rejected,
    Submission,
    parse_record,
    predictions_name,
    read_run_dir,
)


class _LimitedGunzip:
    """A read-only file object decompressing gzip, refusing to produce more than ``limit`` bytes."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.limit, self.total = raw, limit, 0
        self.dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.buf = b""
        self.eof = False

    def _fill(self, want: int) -> None:
        while len(self.buf) < want and not self.eof:
            if self.dec.unconsumed_tail:
                chunk = self.dec.decompress(self.dec.unconsumed_tail, 64 * KIB)
            else:
                data = self.raw.read(64 * KIB)
                if not data:
                    self.eof = True
                    chunk = self.dec.flush()
                else:
                    chunk = self.dec.decompress(data, 64 * KIB)
                    if self.dec.eof and self.dec.unused_data.strip(b"\0"):
                        raise Rejected("archive", "data after the end of the gzip stream")
            self.total += len(chunk)
            if self.total > self.limit:
                raise Rejected("limits", f"archive inflates to more than {self.limit} bytes")
            self.buf += chunk

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.limit + 1
        try:
            self._fill(n)
        except zlib.error as e:
            raise Rejected("archive", f"not a gzip stream ({e})") from None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses extended headers (pax, GNU long names) over ``header_bytes`` before reading them."""

    header_limit = DEFAULT_LIMITS.header_bytes
    _EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in self._EXTENDED and self.size > self.header_limit:
            raise Rejected("limits", f"extended tar header of {self.size} bytes (limit {self.header_limit})")
        return super()._proc_member(tarfile_)


def _member_name(name: str) -> PurePosixPath:
    """A member name as a relative path; absolute, ``..``, backslash or control characters are rejected."""
    if not name or "\\" in name or any(ord(c) < 32 for c in name) or len(name) > 512:
        raise Rejected("members", f"unsafe member name {name[:80]!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in p.parts:
        raise Rejected("members", f"unsafe member name {name[:80]!r} (absolute or '..')")
    return p


def read_archive(path: Path, limits: Limits = DEFAULT_LIMITS) -> Submission:
    """Read a submission archive (``.tar.gz`` or plain ``.tar``) as a stream, within ``limits``.

    Exactly one ``record.json`` and one predictions member (the name the record declares, in the
    same folder) must be present; links, devices and unsafe names are rejected.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
        f.seek(0)
        stream: Any = _LimitedGunzip(f, limits.archive_bytes) if magic == b"\x1f\x8b" else _Capped(f, limits.archive_bytes)
        tarinfo = type("_TarInfo", (_BoundedTarInfo,), {"header_limit": limits.header_bytes})
        files: dict[PurePosixPath, bytes] = {}
        count = 0
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=tarinfo) as tar:
                for m in tar:
                    count += 1
                    if count > limits.members:
                        raise Rejected("limits", f"more than {limits.members} archive members")
                    name = _member_name(m.name)
                    if m.isdir():
                        continue
                    if not m.isreg() or m.issparse():
                        kind = "link" if (m.issym() or m.islnk()) else "special file"
                        raise Rejected("members", f"{m.name[:80]!r} is a {kind}, only regular files are accepted")
                    if m.size > limits.member_bytes:
                        raise Rejected("limits", f"member {m.name[:80]!r} is {m.size} bytes (limit {limits.member_bytes})")
                    if name in files:
                        raise Rejected("members", f"member {m.name[:80]!r} appears twice")
                    fobj = tar.extractfile(m)
                    data = fobj.read(m.size) if fobj is not None else b""
                    if len(data) != m.size:
                        raise Rejected("archive", f"member {m.name[:80]!r} is truncated")
                    files[name] = data
        except Rejected:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, UnicodeError) as e:
            raise Rejected("archive", f"not a readable tar archive ({type(e).__name__}: {e})") from None
    records = [n for n in files if n.name == RECORD]
    if len(records) != 1:
        raise Rejected("members", f"{len(records)} {RECORD} members; exactly one is required")
    record = parse_record(files[records[0]], limits)
    pname = predictions_name(record)
    preds = [n for n in files if n.name == pname]
    if len(preds) != 1:
        raise Rejected("members", f"{len(preds)} {pname} members; exactly one is required")
    if preds[0].parent != records[0].parent:
        raise Rejected("members", f"{pname} and {RECORD} are in different folders")
    return Submission(str(path), record, files[preds[0]], sorted(str(n) for n in files))


class _Capped:
    """A file object that refuses to read more than ``limit`` bytes (uncompressed tar)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.limit, self.total = raw, limit, 0

    def read(self, n: int = -1) -> bytes:
        n = self.limit + 1 if n is None or n < 0 else n
        data = self.raw.read(n)
        self.total += len(data)
        if self.total > self.limit:
            raise Rejected("limits", f"archive larger than {self.limit} bytes")
        return data


def read_submission(path: Path, limits: Limits = DEFAULT_LIMITS) -> Submission:
    """A run folder or an archive, read within ``limits``; :class:`Rejected` on any problem."""
    path = Path(path)
    if path.is_dir():
        return read_run_dir(path, limits)
    if not path.is_file():
        raise Rejected("files", f"{path}: no such run folder or archive")
    try:
        return read_archive(path, limits)
    except OSError as e:
        raise Rejected("files", f"{path}: cannot read ({e.strerror or e})") from None


__all__ = ["read_archive", "read_submission"]
