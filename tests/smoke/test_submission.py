"""submit / validate / reproduce on real runs; tampering of each kind is rejected by name."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.submission import submit, validate
from tests.smoke.test_cli import runs, tiny_args


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    from tests.conftest import random_rows, write_atomic

    tmp = tmp_path_factory.mktemp("sub")
    d = write_atomic(tmp / "tiny", "tiny", random_rows())
    args = tiny_args(d, tmp)
    main(["run", "model=bpr", "model.train.max_epochs=2", *args])
    main(["run", "model=pop", "eval=sampled", "eval.num_negatives=20", *args])
    main(["run", "model=pop", "split=random", "eval=labeled", *args])
    out = {}
    for r in runs(tmp):
        out["bpr" if "-bpr-" in r.name else ("sampled" if "-sampled-" in r.name else "labeled")] = r
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _rewrite_predictions(run_dir: Path, edit) -> None:
    rec = json.loads((run_dir / "record.json").read_text())
    p = run_dir / rec["predictions"]["file"]
    lines = [json.loads(x) for x in gzip.decompress(p.read_bytes()).decode().splitlines()]
    lines = edit(lines)
    data = gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode(), mtime=0)
    p.write_bytes(data)
    rec["predictions"]["sha256"] = hashlib.sha256(data).hexdigest()  # a careful forger updates the hash
    (run_dir / "record.json").write_text(json.dumps(rec))


def _failed(report) -> list[str]:
    return [c.name for c in report.checks if not c.ok]


def test_every_protocol_validates_and_archives(run_dirs, tmp_path):
    for d in run_dirs.values():
        assert validate(d).ok, validate(d).summary()
        archive = submit(d, tmp_path / f"{d.name}.tar.gz")
        assert validate(archive).ok
        again = submit(d, tmp_path / "again.tar.gz")
        assert again.read_bytes() == archive.read_bytes()  # deterministic archive


def test_tampered_metric_is_rejected(run_dirs, tmp_path):
    d = _copy(run_dirs["bpr"], tmp_path)
    rec = json.loads((d / "record.json").read_text())
    rec["metrics"]["test/ndcg@10"] += 0.01
    (d / "record.json").write_text(json.dumps(rec))
    assert _failed(validate(d)) == ["metrics"]


def test_missing_test_row_is_rejected(run_dirs, tmp_path):
    d = _copy(run_dirs["bpr"], tmp_path)
    _rewrite_predictions(d, lambda lines: lines[1:])
    assert "rows" in _failed(validate(d))


def test_invalid_item_id_is_rejected(run_dirs, tmp_path):
    d = _copy(run_dirs["sampled"], tmp_path)

    def edit(lines):
        lines[0]["ranked"][3] = "no-such-item"
        return lines

    _rewrite_predictions(d, edit)
    assert "item_ids" in _failed(validate(d))


def test_wrong_split_fingerprint_is_rejected(run_dirs, tmp_path):
    d = _copy(run_dirs["labeled"], tmp_path)
    rec = json.loads((d / "record.json").read_text())
    rec["split"]["fingerprint"] = "0" * 64
    (d / "record.json").write_text(json.dumps(rec))
    assert _failed(validate(d)) == ["split_fingerprint"]


def test_validate_cli_exit_codes(run_dirs, tmp_path, capsys):
    main(["validate", str(run_dirs["labeled"])])
    assert "ACCEPTED" in capsys.readouterr().out
    d = _copy(run_dirs["labeled"], tmp_path)
    rec = json.loads((d / "record.json").read_text())
    rec["metrics"]["test/auc"] = 0.99
    (d / "record.json").write_text(json.dumps(rec))
    with pytest.raises(SystemExit) as e:
        main(["validate", str(d)])
    assert e.value.code == 1
    assert "rejected: metrics" in capsys.readouterr().err


def test_reproduce_passes_for_a_bpr_run(run_dirs, capsys):
    main(["reproduce", str(run_dirs["bpr"])])
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out


def test_every_committed_run_validates():
    committed = sorted(p for p in (Path(__file__).resolve().parents[2] / "results" / "runs").glob("*/record.json"))
    for rec in committed:
        report = validate(rec.parent)
        assert report.ok, report.summary()


@pytest.mark.slow
def test_reproduce_passes_for_a_committed_bpr_row(capsys):
    run_dir = sorted((Path(__file__).resolve().parents[2] / "results" / "runs").glob("ml-100k-loo-full-bpr-*"))[0]
    main(["reproduce", str(run_dir)])
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
