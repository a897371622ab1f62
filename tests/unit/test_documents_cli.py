"""The command line of the documents generated from run records (prompts, precision)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("module", ["benchmark.results.prompts", "benchmark.results.precision"])
def test_cli_refuses_a_missing_folder_a_link_or_a_file_without_markers(tmp_path, capsys, module):
    mod = importlib.import_module(module)
    start, end, main = mod.START, mod.END, mod.main
    doc = tmp_path / "doc.md"
    doc.write_text(f"x\n{start}\nold\n{end}\n")
    assert main([str(tmp_path / "missing"), "--doc", str(doc)]) == 2
    assert "missing: not a folder of run records" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    assert main([str(tmp_path / "link"), "--doc", str(doc)]) == 2
    assert doc.read_text() == f"x\n{start}\nold\n{end}\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert main([str(tmp_path / "runs"), "--doc", str(plain)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith("error: ") and "plain.md" in err[-1]
    assert plain.read_text() == "no markers\n"
    assert main([str(tmp_path / "runs"), "--doc", str(doc)]) == 0  # no records: an empty block
    assert doc.read_text() == f"x\n{start}\n{end}\n"
    assert main([str(tmp_path / "runs")]) == 0 and capsys.readouterr().out == ""
