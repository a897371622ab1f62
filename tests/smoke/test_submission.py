"""submit / validate / reproduce on real runs; tampering of each kind is rejected by name, records
that name code or foreign paths are refused, and crafted archives get verdicts within bounds."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.submission import submit, validate
from tests.smoke.test_cli import runs, tiny_args

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Three tiny runs (bpr full, pop sampled, pop labeled) and the atomic dataset they read."""
    from tests.conftest import random_rows, write_atomic

    tmp = tmp_path_factory.mktemp("sub")
    d = write_atomic(tmp / "tiny", "tiny", random_rows())
    args = tiny_args(d, tmp)
    main(["run", "model=bpr", "model.train.max_epochs=2", *args])
    main(["run", "model=pop", "eval=sampled", "eval.num_negatives=20", *args])
    main(["run", "model=pop", "split=random", "eval=labeled", *args])
    out = {"data": d}
    for r in runs(tmp):
        out["bpr" if "-bpr-" in r.name else ("sampled" if "-sampled-" in r.name else "labeled")] = r
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _lines(run_dir: Path) -> list[dict]:
    rec = json.loads((run_dir / "record.json").read_text())
    return [json.loads(x) for x in gzip.decompress((run_dir / rec["predictions"]["file"]).read_bytes()).decode().splitlines()]


def _rewrite_predictions(run_dir: Path, edit) -> None:
    rec = json.loads((run_dir / "record.json").read_text())
    p = run_dir / rec["predictions"]["file"]
    data = gzip.compress("".join(json.dumps(x) + "\n" for x in edit(_lines(run_dir))).encode(), mtime=0)
    p.write_bytes(data)
    rec["predictions"]["sha256"] = hashlib.sha256(data).hexdigest()  # a careful forger updates the hash
    (run_dir / "record.json").write_text(json.dumps(rec))


def _edit_record(run_dir: Path, edit) -> None:
    rec = json.loads((run_dir / "record.json").read_text())
    edit(rec)
    (run_dir / "record.json").write_text(json.dumps(rec))


def _check(tiny, d) -> tuple[bool, str]:
    report = validate(d, data_path=tiny["data"])
    return report.ok, report.verdict()


def test_every_protocol_validates_and_archives(tiny, tmp_path):
    for key in ("bpr", "sampled", "labeled"):
        d = tiny[key]
        assert _check(tiny, d) == (True, f"ACCEPTED {d}")
        archive = submit(d, tmp_path / f"{d.name}.tar.gz")
        assert _check(tiny, archive)[0]
        again = submit(d, tmp_path / "again.tar.gz")
        assert again.read_bytes() == archive.read_bytes()  # deterministic archive


def test_a_record_path_is_not_used_without_the_users_say(tiny):
    ok, v = validate(tiny["bpr"]).ok, validate(tiny["bpr"]).verdict()
    assert not ok and v.startswith("REJECTED config: data.path='/") and "must be relative" in v


def test_tampered_metric_is_rejected(tiny, tmp_path):
    d = _copy(tiny["bpr"], tmp_path)
    _edit_record(d, lambda r: r["metrics"].__setitem__("test/ndcg@10", r["metrics"]["test/ndcg@10"] + 0.01))
    ok, v = _check(tiny, d)
    assert not ok and v.startswith("REJECTED metrics: 1 differ; first: test/ndcg@10")


def test_missing_test_row_is_rejected(tiny, tmp_path):
    d = _copy(tiny["bpr"], tmp_path)
    _rewrite_predictions(d, lambda lines: lines[1:])
    assert _check(tiny, d) == (False, "REJECTED rows: 39 predictions lines for 40 canonical test rows")


def test_invalid_item_id_is_rejected(tiny, tmp_path):
    d = _copy(tiny["sampled"], tmp_path)

    def edit(lines):
        lines[0]["ranked"][3] = "no-such-item"
        return lines

    _rewrite_predictions(d, edit)
    assert _check(tiny, d) == (False, "REJECTED item_ids: line 1: 'no-such-item' is not a catalogue item id")


def test_repeated_target_is_rejected_although_metrics_match(tiny, tmp_path):
    """The target 20 times gives HR@10 = 1 and metrics recomputed to match; the protocol refuses it."""
    d = _copy(tiny["bpr"], tmp_path)

    def edit(lines):
        for ln in lines:
            ln["ranked"] = [ln["targets"][0]] * len(ln["ranked"])
        return lines

    _rewrite_predictions(d, edit)
    _edit_record(d, lambda r: r["metrics"].__setitem__("test/hr@10", 1.0))
    ok, v = _check(tiny, d)
    assert not ok and v.startswith("REJECTED duplicates: line 1: item ") and "ranked 20 times" in v


def test_train_items_under_full_are_rejected(tiny, tmp_path):
    from tests.conftest import random_rows

    d = _copy(tiny["bpr"], tmp_path)
    rows = random_rows()

    def edit(lines):
        ln = lines[0]
        own = [i for u, i, *_ in rows if u == ln["user"] and i not in ln["targets"]]  # train + valid items
        ln["ranked"] = own[:1] + [x for x in ln["ranked"] if x not in own[:1]][:19]
        return lines

    _rewrite_predictions(d, edit)
    ok, v = _check(tiny, d)
    assert not ok and v.startswith("REJECTED excluded_items: line 1: ") and "excluded under eval=full" in v


def test_nan_metric_is_rejected(tiny, tmp_path):
    d = _copy(tiny["bpr"], tmp_path)
    text = (d / "record.json").read_text()
    rec = json.loads(text)
    rec["metrics"]["test/ndcg@10"] = float("nan")
    (d / "record.json").write_text(json.dumps(rec))  # Python writes NaN, which is not JSON
    ok, v = _check(tiny, d)
    assert not ok and v.startswith("REJECTED record: not valid JSON (non-finite number NaN")


def test_scores_claimed_as_probabilities_must_lie_in_0_1(tiny, tmp_path):
    d = _copy(tiny["labeled"], tmp_path)
    assert max(ln["score"] for ln in _lines(d)) > 1  # pop scores are train counts
    _edit_record(d, lambda r: r["eval"].__setitem__("probabilities", True))
    ok, v = _check(tiny, d)
    assert not ok and v.startswith("REJECTED scores: line ") and "outside [0, 1]" in v


def test_config_hash_must_be_the_hash_of_the_recorded_config(tiny, tmp_path):
    d = _copy(tiny["bpr"], tmp_path)
    _edit_record(d, lambda r: r["config"]["model"]["module"].__setitem__("dim", 128))
    ok, v = _check(tiny, d)
    assert not ok and v.startswith("REJECTED config_hash: ")


def test_wrong_split_fingerprint_is_rejected(tiny, tmp_path):
    d = _copy(tiny["labeled"], tmp_path)
    _edit_record(d, lambda r: r["split"].__setitem__("fingerprint", "0" * 64))
    ok, v = _check(tiny, d)
    assert not ok and v.startswith("REJECTED split_fingerprint: 000000000000 != canonical ")


def test_validate_cli_exit_codes(tiny, tmp_path, capsys):
    main(["validate", str(tiny["labeled"]), "--data", str(tiny["data"])])
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"ACCEPTED {tiny['labeled']}"
    d = _copy(tiny["labeled"], tmp_path)
    _edit_record(d, lambda r: r["metrics"].__setitem__("test/auc", 0.99))
    with pytest.raises(SystemExit) as e:
        main(["validate", str(d), "--data", str(tiny["data"])])
    assert e.value.code == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("REJECTED metrics: 1 differ; first: test/auc")


def _members(archive: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(archive) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _pack(members: list[tuple[str, bytes]], path: Path, gz: bool = True) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0) if gz else raw.getvalue())
    return path


def test_second_record_member_is_rejected(tiny, tmp_path):
    members = _members(submit(tiny["bpr"], tmp_path / "a.tar.gz"))
    rec = next(data for name, data in members if name.endswith("record.json"))
    forged = json.loads(rec)
    forged["metrics"]["test/ndcg@10"] = 0.99
    archive = _pack([*members, ("x/record.json", json.dumps(forged).encode())], tmp_path / "two.tar.gz")
    ok, v = _check(tiny, archive)
    assert (ok, v) == (False, "REJECTED members: 2 record.json members; exactly one is required")


def test_submit_writes_inside_its_folder_only(tiny, tmp_path, capsys):
    d = _copy(tiny["sampled"], tmp_path / "runs")
    _edit_record(d, lambda r: r.__setitem__("run_id", "../../x"))
    with pytest.raises(SystemExit) as e:
        main(["submit", str(d), "--out", str(tmp_path / "out" / "a.tar.gz")])
    assert e.value.code == 2
    assert "run_id: '../../x' does not match" in capsys.readouterr().err
    _edit_record(d, lambda r: r["predictions"].__setitem__("file", "/etc/hostname"))
    with pytest.raises(SystemExit):
        main(["submit", str(d), "--out", str(tmp_path / "out" / "a.tar.gz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"llm4rec: error: {d}: predictions.file '/etc/hostname' is not a plain file name"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- byte flips


@pytest.fixture(scope="module")
def small_archives(tiny, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("flip")
    gz = submit(tiny["labeled"], tmp / "a.tar.gz")
    plain = _pack(_members(gz), tmp / "a.tar", gz=False)
    return {"tar.gz": gz, "tar": plain}


@pytest.mark.parametrize("kind", ["tar.gz", "tar"])
def test_random_byte_flips_never_crash_nor_change_accepted_metrics(tiny, small_archives, kind, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    original = small_archives[kind].read_bytes()
    metrics = json.loads(next(d for n, d in _members(small_archives["tar.gz"]) if n.endswith("record.json")))["metrics"]
    work = tmp_path_factory.mktemp("flips") / f"x.{kind}"

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(1, 255)), min_size=1, max_size=4))
    def flip(changes):
        data = bytearray(original)
        for pos, x in changes:
            data[pos] ^= x
        work.write_bytes(bytes(data))
        report = validate(work, data_path=tiny["data"])  # never raises
        assert report.failed is None or report.failed.name != "unexpected", report.verdict()
        if report.ok:
            with tarfile.open(work) as tar:
                rec = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("record.json"))).read())
            assert rec["metrics"] == metrics

    flip()


# ----------------------------------------------------------------------------- reproduce


def test_reproduce_passes_for_a_bpr_run(tiny, capsys):
    main(["reproduce", str(tiny["bpr"]), f"data.path={tiny['data']}"])
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out


@pytest.mark.parametrize(
    "evil",
    [
        lambda p: {"_target_": "builtins.open", "_args_": [str(p), "w"]},
        lambda p: {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": str(p)},
        lambda p: {"_target_": "benchmark.results.submission.submit", "run_dir": ".", "out": str(p)},
    ],
)
def test_reproduce_never_instantiates_what_a_record_names(tiny, tmp_path, capsys, evil):
    d = _copy(tiny["bpr"], tmp_path / "runs")
    victim = tmp_path / "created-by-the-record"
    _edit_record(d, lambda r: r["config"]["model"]["module"].__setitem__("hook", evil(victim)))
    with pytest.raises(SystemExit) as e:
        main(["reproduce", str(d), f"data.path={tiny['data']}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.module.hook._target_=" in err[0] and "is not a _target_ defined by this project's configs" in err[0]
    assert not victim.exists()
    # the whole module replaced by the injected node
    _edit_record(d, lambda r: r["config"]["model"].__setitem__("module", {"_target_": "builtins.open", "_args_": [str(victim), "w"]}))
    with pytest.raises(SystemExit) as e:
        main(["reproduce", str(d), f"data.path={tiny['data']}"])
    assert e.value.code == 2 and not victim.exists()


def test_reproduce_refuses_paths_from_the_record(tiny, tmp_path, capsys):
    d = _copy(tiny["bpr"], tmp_path / "runs")
    with pytest.raises(SystemExit) as e:  # the record's own data.path is absolute
        main(["reproduce", str(d)])
    assert e.value.code == 2
    assert "data.path='/" in capsys.readouterr().err
    _edit_record(d, lambda r: r["config"].__setitem__("load_weights", "/etc/hostname"))
    with pytest.raises(SystemExit) as e:
        main(["reproduce", str(d), f"data.path={tiny['data']}"])
    assert e.value.code == 2
    assert "load_weights='/etc/hostname': a path from the record must be relative" in capsys.readouterr().err


def test_reproduce_trusts_targets_of_the_users_config_directories(tiny, tmp_path, capsys, monkeypatch):
    """A plugin model (its own YAML and Python module) reproduces when its config directory is on the search path."""
    plug = tmp_path / "plugin"
    (plug / "conf" / "model").mkdir(parents=True)
    (plug / "tiny_plugin_model.py").write_text("from benchmark.models.pop import Pop\n\nclass PluginPop(Pop):\n    pass\n")
    (plug / "conf" / "model" / "plugin_pop.yaml").write_text(
        "name: plugin_pop\nfamily: classic\nmodule:\n  _target_: tiny_plugin_model.PluginPop\ntrain: null\n"
    )
    monkeypatch.syspath_prepend(str(plug))
    search = f"hydra.searchpath=[file://{plug / 'conf'}]"
    out = tmp_path / "o"
    main(["run", "model=plugin_pop", search, *tiny_args(tiny["data"], out)])
    (run_dir,) = runs(out)
    with pytest.raises(SystemExit) as e:
        main(["reproduce", str(run_dir), f"data.path={tiny['data']}"])
    assert e.value.code == 2 and "tiny_plugin_model.PluginPop" in capsys.readouterr().err
    main(["reproduce", str(run_dir), f"data.path={tiny['data']}", search])
    assert "PASS" in capsys.readouterr().out


# ----------------------------------------------------------------------------- committed records and bounds


@pytest.mark.slow
def test_every_committed_run_validates():
    committed = sorted((ROOT / "results" / "runs").glob("*/record.json"))
    assert len(committed) > 50
    for rec in committed:
        report = validate(rec.parent)
        assert report.ok, report.summary()


def _inflating_archive(path: Path, total: int, line: bytes) -> Path:
    """An archive whose predictions member inflates to ``total`` bytes of ``line`` repeated."""
    import zlib

    from tests.unit.test_submission_security import minimal_record

    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = line * (1024 * 1024 // len(line))
    parts = [comp.compress(block) for _ in range(total // len(block))]
    pred = b"".join(parts) + comp.flush()
    rec = json.dumps(minimal_record(pred)).encode()
    return _pack([("run/record.json", rec), ("run/predictions.jsonl.gz", pred)], path)


def _peak_rss_mb(*args: str) -> tuple[float, str]:
    """Peak RSS (MB) of ``python -m benchmark.cli ARGS`` run alone in a fresh process, and its stdout."""
    probe = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'benchmark.cli', *sys.argv[1:]], capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
        "print(p.stdout.strip().splitlines()[-1])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    rss, verdict = out.strip().splitlines()
    return float(rss), verdict


@pytest.mark.slow
def test_an_archive_inflating_to_1_gib_is_rejected_in_bounded_memory(tmp_path):
    lines = _inflating_archive(tmp_path / "lines.tar.gz", 2**30, b'{"user": "1"}\n')
    one_line = _inflating_archive(tmp_path / "one.tar.gz", 2**30, b"x" * 64)
    assert lines.stat().st_size < 2 * 2**20 and one_line.stat().st_size < 2 * 2**20
    rss, verdict = _peak_rss_mb("validate", str(lines))
    assert verdict == "REJECTED limits: predictions inflate to more than 268435456 bytes"
    assert rss < 300, rss
    rss, verdict = _peak_rss_mb("validate", str(one_line))
    assert verdict == "REJECTED limits: predictions line 1 is longer than 1048576 bytes"
    assert rss < 300, rss


@pytest.mark.parametrize(
    "key, node",
    [
        ("describe.generator", {"describe": {"name": "x", "generator": "/tmp/evil-model"}}),
        ("adapter.encoder.run", {"adapter": {"name": "cf_proj", "encoder": {"_target_": "benchmark.models.components.cf_features.CFEncoder", "run": "../../elsewhere/run"}}}),
    ],
)
def test_reproduce_refuses_generator_and_first_stage_paths_from_the_record(tiny, tmp_path, capsys, key, node):
    d = _copy(tiny["bpr"], tmp_path / "runs")
    _edit_record(d, lambda r: r["config"].update(node))
    with pytest.raises(SystemExit) as e:
        main(["reproduce", str(d), f"data.path={tiny['data']}"])
    assert e.value.code == 2
    assert f"{key}=" in (err := capsys.readouterr().err) and "a path from the record must be relative" in err, err
