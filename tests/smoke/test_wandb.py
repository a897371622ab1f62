"""wandb logging works offline: run metrics, the record artifact and the leaderboard table."""

from __future__ import annotations

import os

import pytest

from benchmark.cli import main
from tests.smoke.test_cli import runs, tiny_args


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)


def test_wandb_logger_offline_run_and_table(offline, tiny_dir, tmp_path):
    args = [a for a in tiny_args(tiny_dir, tmp_path) if a != "logger=none"]
    main(["run", "model=pop", "logger=wandb", *args])
    assert len(runs(tmp_path)) == 1
    offline_runs = list((tmp_path / "out" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert any(p.suffix == ".wandb" for p in offline_runs[0].iterdir())
    main(["leaderboard", "--runs", str(tmp_path / "res" / "runs"), "--out", str(tmp_path / "lb"), "--wandb"])
    tables = list((tmp_path / "outputs" / "wandb").rglob("leaderboard*.table.json"))
    assert tables, os.listdir(tmp_path / "outputs" / "wandb")
