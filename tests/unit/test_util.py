"""Shared helpers: atomic writes leave the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmark.util import (
    atomic_write,
    atomic_write_all,
    package_version,
    sha256_file,
    sha256_text,
    staged_dir,
    torch_device,
)


def test_sha256_of_known_inputs(tmp_path: Path) -> None:
    # FIPS 180-2 test vector for "abc"
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_text("abc") == abc
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == abc


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "out.txt"
    atomic_write(p, "one")
    atomic_write(p, b"two")
    assert p.read_text() == "two"
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(os.listdir(p.parent)) == ["out.txt"]


def test_atomic_write_all_writes_nothing_when_one_file_fails(tmp_path: Path) -> None:
    good = tmp_path / "a.txt"
    blocked = tmp_path / "file"
    blocked.write_text("x")  # a file where a folder is needed: the second write fails
    with pytest.raises(OSError):
        atomic_write_all({good: "a", blocked / "b.txt": "b"})
    assert not good.exists()
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_staged_dir_replace_keep_and_failure(tmp_path: Path) -> None:
    final = tmp_path / "run"
    with staged_dir(final) as d:
        (d / "x").write_text("1")
    with staged_dir(final) as d:
        (d / "x").write_text("2")
    assert (final / "x").read_text() == "2"
    with staged_dir(final, exists="keep") as d:  # a cache entry made first by another process stays
        (d / "x").write_text("3")
    assert (final / "x").read_text() == "2"
    with pytest.raises(RuntimeError), staged_dir(final) as d:
        (d / "x").write_text("4")
        raise RuntimeError("boom")
    assert (final / "x").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_package_version_and_device() -> None:
    assert package_version("pytest") == pytest.__version__
    assert package_version("no-such-distribution-xyz") is None
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type in ("cpu", "cuda")


def test_write_marked_block_replaces_only_between_the_markers(tmp_path):
    from benchmark.util import write_marked_block

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t:start -->\nold table\n<!-- t:end -->\noutro\n")
    write_marked_block(readme, "<!-- t:start -->", "<!-- t:end -->", "| a |\n")
    assert readme.read_text() == "intro\n<!-- t:start -->\n| a |\n<!-- t:end -->\noutro\n"
    before = readme.read_text()
    with pytest.raises(ValueError, match="no <!-- x:start --> ... <!-- x:end --> markers"):
        write_marked_block(readme, "<!-- x:start -->", "<!-- x:end -->", "new")
    assert readme.read_text() == before


def test_cpu_features_reads_the_model_and_the_low_precision_flags(tmp_path):
    from benchmark.util import cpu_features

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_int8\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    facts = cpu_features(info)
    assert facts["model"] == "Some CPU 9000"  # the first CPU's lines
    assert facts["flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_int8"]  # in CPU_FLAGS order, known ones only
    assert isinstance(facts["torch_capability"], str)
    missing = cpu_features(tmp_path / "absent")
    assert missing["model"] is None and missing["flags"] is None
