"""Untrusted submissions: crafted archives, records, ranked lists and configs get a verdict or a
one-line error, never a traceback; nothing a record names is instantiated or used as a path."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.data.views import LabeledRows, RankingRows
from benchmark.errors import BenchmarkError, ConfigError
from benchmark.results.archive import read_archive
from benchmark.results.protocol import labeled_predictions, ranking_predictions
from benchmark.results.schema import schema_errors
from benchmark.results.submission import submit, validate
from benchmark.results.trust import (
    check_record_config,
    check_record_path,
    config_dirs,
    defined_targets,
    infer_choices,
)
from benchmark.untrusted import DEFAULT_LIMITS, Limits, Rejected

H = "a" * 64


def minimal_record(pred: bytes, **changes) -> dict:
    """A record that follows the schema (its content is not a real run)."""
    rec = {
        "schema_version": 1,
        "run_id": "tiny-loo-full-pop-s0-aaaaaaaa",
        "created_at": "2026-01-01T00:00:00+00:00",
        "config": {"data": {}, "split": {}, "eval": {}, "model": {}, "seed": 0},
        "config_hash": H,
        "group_key": H,
        "seed": 0,
        "dataset": {"name": "tiny", "fingerprint": H, "files": {}, "stats": {}},
        "split": {"protocol": "loo", "fingerprint": H, "stats": {}},
        "eval": {"protocol": "full", "ks": [5], "list_length": 20, "rows": 1, "n_items": 5, "slice_rows": {"all": 1}},
        "model": {"name": "pop", "label": "pop", "family": "classic", "params_total": 0, "params_trainable": 0},
        "labels": {"device": "cpu"},
        "training": {"seconds": 0.0},
        "metrics": {"test/hr@5": 0.5},
        "efficiency": {"train_seconds": 0.0, "eval_seconds": 0.0, "peak_rss_mb": 1.0},
        "environment": {"git_sha": None, "packages": {}, "python": "3", "platform": "x"},
        "predictions": {"file": "predictions.jsonl.gz", "sha256": hashlib.sha256(pred).hexdigest()},
    }
    rec.update(changes)
    return rec


def make_tar(path: Path, members: list, gz: bool = True) -> Path:
    """``members``: (name, bytes) for regular files, or ready TarInfo objects (links, devices)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0) if gz else raw.getvalue())
    return path


PRED = gzip.compress(b'{"row":0}\n', mtime=0)


def good_members(pred: bytes = PRED, record: dict | None = None, prefix: str = "run/") -> list:
    rec = record or minimal_record(pred)
    return [(prefix + "record.json", json.dumps(rec).encode()), (prefix + "predictions.jsonl.gz", pred)]


def verdict(path: Path, limits: Limits = DEFAULT_LIMITS) -> str:
    report = validate(path, limits)
    assert not report.ok
    assert report.failed.name != "unexpected", report.summary()
    return report.verdict()


# ----------------------------------------------------------------------------- archive structure


def test_two_record_members_are_rejected(tmp_path):
    p = make_tar(tmp_path / "a.tar.gz", good_members() + [("other/record.json", b"{}")])
    assert verdict(p) == "REJECTED members: 2 record.json members; exactly one is required"


def test_links_devices_and_unsafe_names_are_rejected(tmp_path):
    link = tarfile.TarInfo("run/predictions.jsonl.gz")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("run/x")
    hard.type, hard.linkname = tarfile.LNKTYPE, "run/record.json"
    dev = tarfile.TarInfo("run/dev")
    dev.type = tarfile.CHRTYPE
    cases = {
        "link": [good_members()[0], link],
        "hard link": good_members() + [hard],
        "device": good_members() + [dev],
        "absolute": good_members(prefix="/tmp/"),
        "dotdot": good_members(prefix="../"),
        "inner dotdot": good_members(prefix="run/../../"),
    }
    for what, members in cases.items():
        v = verdict(make_tar(tmp_path / f"{what}.tar.gz", members))
        assert v.startswith("REJECTED members: "), (what, v)
    assert "is a link" in verdict(make_tar(tmp_path / "l.tar.gz", cases["link"]))
    assert "special file" in verdict(make_tar(tmp_path / "d.tar.gz", cases["device"]))


def test_archive_limits(tmp_path):
    p = make_tar(tmp_path / "many.tar.gz", good_members() + [(f"run/x{i}", b"") for i in range(5)])
    assert verdict(p, Limits(members=4)) == "REJECTED limits: more than 4 archive members"
    big = make_tar(tmp_path / "big.tar.gz", good_members() + [("run/big.bin", b"\0" * 300_000)])
    assert verdict(big, Limits(member_bytes=100_000)).startswith("REJECTED limits: member 'run/big.bin' is 300000 bytes")
    assert verdict(big, Limits(archive_bytes=200_000)) == "REJECTED limits: archive inflates to more than 200000 bytes"
    # a pax header is refused by its declared size, before it is read
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("run/record.json")
        info.pax_headers = {"comment": "x" * 200_000}
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "pax.tar").write_bytes(raw.getvalue())
    assert verdict(tmp_path / "pax.tar").startswith("REJECTED limits: extended tar header of ")


def test_malformed_archives_and_records_get_verdicts(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8bnot really gzip" * 10)
    assert verdict(tmp_path / "junk.tar.gz").startswith("REJECTED archive: ")
    (tmp_path / "text.tar").write_bytes(b"hello world\n" * 100)
    assert verdict(tmp_path / "text.tar").startswith("REJECTED archive: ")
    cases = {
        "notjson": (b"{not json", "REJECTED record: not valid JSON"),
        "list": (b"[1, 2]", "REJECTED record: record.json holds a JSON list, not an object"),
        "nan": (json.dumps(minimal_record(PRED, metrics={"test/hr@5": float("nan")})).encode(), "REJECTED record: not valid JSON (non-finite number NaN"),
        "latin1": (b'{"a": "\xff"}', "REJECTED record: not UTF-8"),
        # a repeated key: two JSON readers could see two different run ids or metrics
        "twice": (json.dumps(minimal_record(PRED))[:-1].encode() + b', "run_id": "other"}',
                  "REJECTED record: not valid JSON (the key 'run_id' appears twice in one object)"),
        "deep": (b"[" * 100_000 + b"]" * 100_000, "REJECTED record: JSON nested too deeply"),
        "types": (json.dumps(minimal_record(PRED, eval=[1])).encode(), "REJECTED schema: eval: [1] is not of type 'object'"),
        "run_id": (json.dumps(minimal_record(PRED, run_id="../../x")).encode(), "REJECTED schema: run_id: '../../x' does not match"),
    }
    for what, (rec, want) in cases.items():
        p = make_tar(tmp_path / f"{what}.tar.gz", [("run/record.json", rec), ("run/predictions.jsonl.gz", PRED)])
        assert verdict(p).startswith(want), (what, verdict(p))


def test_predictions_file_is_streamed_within_limits(tmp_path):
    not_gz = b"plain text, not gzip\n"
    p = make_tar(tmp_path / "a.tar.gz", good_members(not_gz))
    assert verdict(p).startswith("REJECTED predictions: not a gzip file")
    inflating = gzip.compress(b"x" * 3_000_000, mtime=0)  # one 3 MB line
    p = make_tar(tmp_path / "b.tar.gz", good_members(inflating))
    assert verdict(p, Limits(line_bytes=100_000)) == "REJECTED limits: predictions line 1 is longer than 100000 bytes"
    lines = gzip.compress(b"{}\n" * 1_000_000, mtime=0)
    p = make_tar(tmp_path / "c.tar.gz", good_members(lines))
    assert verdict(p, Limits(predictions_bytes=1_000_000)) == "REJECTED limits: predictions inflate to more than 1000000 bytes"
    truncated = PRED[:-6]
    p = make_tar(tmp_path / "d.tar.gz", good_members(truncated))
    assert verdict(p).startswith("REJECTED predictions: ")


def test_run_folder_predictions_must_be_a_plain_regular_file(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "predictions.jsonl.gz").symlink_to("/etc/hostname")
    (d / "record.json").write_text(json.dumps(minimal_record(PRED)))
    assert verdict(d).startswith("REJECTED files: predictions file 'predictions.jsonl.gz' is missing, a link")
    rec = minimal_record(PRED)
    rec["predictions"]["file"] = "/etc/hostname"
    (d / "record.json").write_text(json.dumps(rec))
    assert verdict(d) == "REJECTED files: predictions.file '/etc/hostname' is not a plain file name"


def test_read_archive_returns_the_declared_members(tmp_path):
    p = make_tar(tmp_path / "a.tar.gz", good_members() + [("run/config.yaml", b"a: 1\n")])
    sub = read_archive(p)
    assert sub.predictions == PRED and sub.record["run_id"] == "tiny-loo-full-pop-s0-aaaaaaaa"
    assert sub.members == ["run/config.yaml", "run/predictions.jsonl.gz", "run/record.json"]
    with pytest.raises(Rejected, match="different folders"):
        read_archive(make_tar(tmp_path / "b.tar.gz", [good_members()[0], ("x/predictions.jsonl.gz", PRED)]))


def test_validate_cli_prints_one_verdict_and_exits_1(tmp_path, capsys):
    p = make_tar(tmp_path / "a.tar.gz", good_members() + [("b/record.json", b"{}")])
    with pytest.raises(SystemExit) as e:
        main(["validate", str(p)])
    assert e.value.code == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "REJECTED members: 2 record.json members; exactly one is required"


def test_schema_refuses_non_finite_metrics():
    assert schema_errors(minimal_record(PRED, metrics={"test/hr@5": float("nan")})) == [
        "metrics/test/hr@5: nan is not a finite number"
    ]
    assert schema_errors(minimal_record(PRED)) == []


# ----------------------------------------------------------------------------- protocol checks


USERS = np.array(["u0", "u1"])
ITEMS = np.array(["a", "b", "c", "d", "e"])


def tiny_rows(negatives: bool = False) -> RankingRows:
    """u0: target c, excluded a b; u1: target d, excluded e (indices a=0 .. e=4)."""
    rows = RankingRows(
        "test",
        users=np.array([0, 1]),
        target_ptr=np.array([0, 1, 2]),
        targets=np.array([2, 3]),
        exclude_ptr=np.array([0, 2, 3]),
        exclude=np.array([0, 1, 4]),
        slices={"cold_item": np.array([True, False])},
    )
    if negatives:
        rows.negatives = np.array([[0, 1], [1, 2]])
    return rows


def rline(user, targets, ranked, slices=None):
    return {"user": user, "targets": targets, "target_slices": slices or [["cold_item"] if t == "c" else [] for t in targets], "ranked": ranked}


def test_valid_ranked_lists_map_to_canonical_rows():
    lines = [rline("u1", ["d"], ["d", "a", None]), rline("u0", ["c"], ["d", "c", "e"])]
    pred = ranking_predictions(lines, tiny_rows(), USERS, ITEMS, "full", 3)
    assert pred.ranked.tolist() == [[3, 2, 4], [3, 0, -1]]  # row order, -1 for null


@pytest.mark.parametrize(
    ("lines", "check"),
    [
        ([rline("u0", ["c"], ["c", "c", "c"]), rline("u1", ["d"], ["d", "a", "b"])], "duplicates"),
        ([rline("u0", ["c"], ["a", "c", "d"]), rline("u1", ["d"], ["d", "a", "b"])], "excluded_items"),
        ([rline("u0", ["c"], ["c", "d"]), rline("u1", ["d"], ["d", "a", "b"])], "list_length"),
        ([rline("u0", ["c"], ["c", "d", "zz"]), rline("u1", ["d"], ["d", "a", "b"])], "item_ids"),
        ([rline("u0", ["c"], ["c", "d", "e"])], "rows"),
        ([rline("u0", ["c"], ["c", "d", "e"]), rline("u0", ["c"], ["c", "d", "e"])], "rows"),
        ([rline("u0", ["d"], ["c", "d", "e"]), rline("u1", ["d"], ["d", "a", "b"])], "rows"),
        ([rline("u0", ["c"], ["c", "d", "e"], [[]]), rline("u1", ["d"], ["d", "a", "b"])], "slices"),
        ([rline("u0", ["c"], "cde"), rline("u1", ["d"], ["d", "a", "b"])], "predictions"),
        ([[1, 2], rline("u1", ["d"], ["d", "a", "b"])], "predictions"),
        ([rline("u0", ["c"], [1, 2, 3]), rline("u1", ["d"], ["d", "a", "b"])], "predictions"),
    ],
)
def test_ranked_lists_breaking_the_protocol_are_rejected(lines, check):
    with pytest.raises(Rejected) as e:
        ranking_predictions(lines, tiny_rows(), USERS, ITEMS, "full", 3)
    assert e.value.check == check


def test_sampled_lists_must_stay_within_the_candidates():
    ok = [rline("u0", ["c"], ["c", "a"]), rline("u1", ["d"], ["b", "d"])]
    assert ranking_predictions(ok, tiny_rows(True), USERS, ITEMS, "sampled", 2).ranked.tolist() == [[2, 0], [1, 3]]
    bad = [rline("u0", ["c"], ["c", "e"]), rline("u1", ["d"], ["b", "d"])]
    with pytest.raises(Rejected) as e:
        ranking_predictions(bad, tiny_rows(True), USERS, ITEMS, "sampled", 2)
    assert e.value.check == "candidates"


def lrows() -> LabeledRows:
    return LabeledRows("test", np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([1, 0, 1]), {"cold_user": np.array([False, False, True])})


def lline(u, i, y, s, sl=None):
    return {"user": u, "item": i, "label": y, "score": s, "slices": sl if sl is not None else (["cold_user"] if u == "u1" else [])}


def test_labeled_scores_one_per_row_finite_and_probabilities_in_range():
    lines = [lline("u1", "a", 1, 0.9), lline("u0", "b", 0, 0.2), lline("u0", "a", 1, 0.7)]
    assert labeled_predictions(lines, lrows(), USERS, ITEMS, True).scores.tolist() == [0.7, 0.2, 0.9]
    cases = [
        ([lline("u1", "a", 1, 0.9), lline("u0", "b", 0, 0.2)], False, "rows"),
        ([lline("u1", "a", 1, 0.9), lline("u0", "b", 0, 0.2), lline("u0", "a", 1, 0.7), lline("u0", "a", 1, 0.7)], False, "rows"),
        ([lline("u1", "a", 0, 0.9), lline("u0", "b", 0, 0.2), lline("u0", "a", 1, 0.7)], False, "rows"),
        ([lline("u1", "a", 1, 1.5), lline("u0", "b", 0, 0.2), lline("u0", "a", 1, 0.7)], True, "scores"),
        ([lline("u1", "a", 1, "0.5"), lline("u0", "b", 0, 0.2), lline("u0", "a", 1, 0.7)], False, "predictions"),
        ([lline("u1", "a", 1, True), lline("u0", "b", 0, 0.2), lline("u0", "a", 1, 0.7)], False, "predictions"),
        ([lline("u1", "a", 1, 0.9, []), lline("u0", "b", 0, 0.2), lline("u0", "a", 1, 0.7)], False, "slices"),
    ]
    for lines, probs, check in cases:
        with pytest.raises(Rejected) as e:
            labeled_predictions(lines, lrows(), USERS, ITEMS, probs)
        assert e.value.check == check, (lines, e.value)
    # scores outside [0, 1] are fine for a model that does not claim probabilities
    lines = [lline("u1", "a", 1, 7.0), lline("u0", "b", 0, -2.0), lline("u0", "a", 1, 0.7)]
    assert labeled_predictions(lines, lrows(), USERS, ITEMS, False).scores.tolist() == [0.7, -2.0, 7.0]


# ----------------------------------------------------------------------------- reproduce: config rebuild


def test_only_targets_the_configs_define_are_accepted(tmp_path):
    allowed = defined_targets(config_dirs([]))
    assert {"benchmark.models.bpr.BPR", "torch.optim.Adam", "benchmark.models.p5.P5"} <= allowed
    for target in ("builtins.open", "shutil.copyfile", "os.system", "benchmark.results.submission.submit"):
        cfg = {"model": {"module": {"_target_": "benchmark.models.bpr.BPR", "evil": {"_target_": target, "_args_": ["/tmp/x", "w"]}}}}
        with pytest.raises(ConfigError, match=f"model.module.evil._target_='{target}' is not a _target_ defined"):
            check_record_config(cfg, allowed)
    with pytest.raises(ConfigError, match="positional _args_"):
        check_record_config({"model": {"module": {"_target_": "benchmark.models.bpr.BPR", "_args_": [1]}}}, allowed)
    with pytest.raises(ConfigError, match="interpolation"):
        check_record_config({"data": {"path": "${oc.env:HOME}"}}, allowed)
    with pytest.raises(ConfigError, match="not a key the project's configs use"):
        check_record_config({"model": {"_set_": 1}}, allowed)
    check_record_config({"model": {"module": {"_target_": "benchmark.models.bpr.BPR", "dim": 4}}}, allowed)
    # a plugin's config directory, passed by the user, extends what is trusted
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: mine\nmodule:\n  _target_: my_plugin.Model\n")
    assert "my_plugin.Model" in defined_targets(config_dirs([f"hydra.searchpath=[file://{tmp_path}]"]))


def test_record_paths_must_stay_inside_the_current_directory(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "escape").symlink_to("/etc")
    for bad in ("/etc/passwd", "../x", "runs/../../x", "~/.ssh/id_rsa", "escape/hostname", "file:///etc/passwd"):
        with pytest.raises(ConfigError, match="load_weights="):
            check_record_path("load_weights", bad, tmp_path)
    for good in (None, "runs", "runs/model.pt", "smollm2-135m-instruct"):
        check_record_path("load_weights", good, tmp_path)


def test_group_options_are_inferred_from_the_recorded_values():
    runs = Path(__file__).resolve().parents[2] / "results" / "runs"
    want = {
        "ml-100k-loo-full-p5-collaborative-s1-*": ["data=ml-100k", "split=loo", "eval=full", "model=p5", "adapter=none"],
        "ml-100k-loo-full-p5-collaborative-smollm2-s1-*": ["model=p5_smollm2"],
        "ml-100k-loo-sampled-pop-s1-*": ["eval=sampled", "model=pop"],
        "ml-100k-tallrec_movie-labeled-tallrec-64shot-s1-*": ["split=tallrec_movie", "eval=labeled", "model=tallrec"],
        "ml-100k-tallrec_movie-labeled-tallrec-icl0-s1-*": ["model=tallrec_zeroshot"],
    }
    for pattern, choices in want.items():
        found = sorted(runs.glob(pattern))
        assert found, pattern
        for run in found:  # e.g. the zero-shot scorer's prompt ablations share its label
            got = infer_choices(json.loads((run / "record.json").read_text())["config"], config_dirs([]))
            assert set(choices) <= set(got), (run.name, got)
    # a record fills every schema field: cold_user's truncate_to (the default, 3) agrees with a loo
    # record, but its truncate_users (0.2) contradicts it, and a contradiction outweighs an agreement
    loo = {"protocol": "loo", "seed": 0, "truncate_users": 0.0, "truncate_to": 3, "holdout_items": 0.0}
    assert "split=loo" in infer_choices({"split": loo}, config_dirs([]))
    assert "split=cold_user" in infer_choices({"split": {**loo, "truncate_users": 0.2}}, config_dirs([]))


# ----------------------------------------------------------------------------- submit


def test_submit_refuses_unsafe_run_ids_and_foreign_files(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "predictions.jsonl.gz").write_bytes(PRED)
    (d / "record.json").write_text(json.dumps(minimal_record(PRED, run_id="../../x")))
    out = tmp_path / "out" / "a.tar.gz"
    with pytest.raises(BenchmarkError, match="run_id: '../../x' does not match"):
        submit(d, out)
    rec = minimal_record(PRED)
    rec["predictions"]["file"] = "/etc/hostname"
    (d / "record.json").write_text(json.dumps(rec))
    with pytest.raises(BenchmarkError, match=r"predictions.file '/etc/hostname' is not a plain file name"):
        submit(d, out)
    os.remove(d / "predictions.jsonl.gz")
    (d / "predictions.jsonl.gz").symlink_to("/etc/hostname")
    (d / "record.json").write_text(json.dumps(minimal_record(PRED)))
    with pytest.raises(BenchmarkError, match="is missing, a link or not a regular file"):
        submit(d, out)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    (d / "predictions.jsonl.gz").unlink()
    (d / "predictions.jsonl.gz").write_bytes(PRED)
    archive = submit(d, out)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [f"tiny-loo-full-pop-s0-aaaaaaaa/{n}" for n in ("config.yaml", "environment.json", "predictions.jsonl.gz", "record.json")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tar.gz"]  # no temp file left
