"""The leaderboard on untrusted run folders: small records crafted here, one table per test set."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.results.leaderboard import load_runs, write_leaderboard

# Four test users, one target each; every ranked list has 10 items.
USERS = ["u1", "u2", "u3", "u4"]
TARGETS = ["i1", "i2", "i3", "i4"]


def _lines(hits_at: list[int | None]) -> list[dict[str, Any]]:
    """Predictions lines where user k's target sits at rank ``hits_at[k]`` (1-based) or is absent."""
    out = []
    for r, (u, t, pos) in enumerate(zip(USERS, TARGETS, hits_at, strict=True)):
        ranked = [f"x{j}" for j in range(10)]
        if pos is not None:
            ranked[pos - 1] = t
        out.append({"row": r, "user": u, "targets": [t], "target_slices": [[]], "ranked": ranked})
    return out


def make_run(
    runs: Path,
    folder: str | None = None,
    *,
    model: str = "pop",
    family: str = "classic",
    seed: int = 1,
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    split: dict[str, Any] | None = None,
    ev: dict[str, Any] | None = None,
    hits_at: list[int | None] | None = None,
    train_seconds: float = 2.0,
    eval_seconds: float = 1.0,
) -> Path:
    """Write ``runs/<folder>/record.json`` + predictions following the record schema; return the folder."""
    ev_cfg = {"protocol": "full", "ks": [5, 10, 20], "num_negatives": 100, "negatives_seed": 0,
              "list_length": 20, "chunk_users": 1024, "valid_metric": "ndcg@10", **(ev or {})}  # fmt: skip
    config = {
        "data": {"name": "tiny", "source": "atomic", "path": "/somewhere/tiny", "kcore": 0,
                 "rating_threshold": None, "preprocess": None, "cache_dir": ".cache", **(data or {})},  # fmt: skip
        "split": {"protocol": "loo", "ratios": [0.8, 0.1, 0.1], "seed": 0, "holdout_items": 0.0, **(split or {})},
        "eval": ev_cfg,
        "slices": {"cold_user_max": 5, "cold_item_max": 5},
        "model": {"name": model},
        "seed": seed,
    }
    no_seed = {k: v for k, v in config.items() if k != "seed"}
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    group_key = hashlib.sha256(json.dumps(no_seed, sort_keys=True).encode()).hexdigest()
    run_id = folder or f"tiny-{model}-s{seed}-{config_hash[:8]}"
    d = runs / run_id
    d.mkdir(parents=True)
    payload = "".join(json.dumps(ln) + "\n" for ln in _lines(hits_at or [1, None, 2, None]))
    (d / "predictions.jsonl.gz").write_bytes(gzip.compress(payload.encode(), mtime=0))
    record = {
        "schema_version": 1,
        "run_id": run_id,
        "created_at": "2026-01-01T00:00:00+00:00",
        "config": config,
        "config_hash": config_hash,
        "group_key": group_key,
        "seed": seed,
        "dataset": {"name": config["data"]["name"], "fingerprint": "a" * 64, "files": {}, "stats": {}},
        "split": {"protocol": config["split"]["protocol"], "fingerprint": "b" * 64, "stats": {"holdout_items": 0}},
        "eval": {"protocol": ev_cfg["protocol"], "ks": ev_cfg["ks"], "list_length": 20, "rows": 4, "n_items": 14,
                 "slice_rows": {"all": 4}},  # fmt: skip
        "model": {"name": model, "label": model, "family": family, "params_total": 0, "params_trainable": 0},
        "labels": {"device": "cpu"},
        "training": {"seconds": train_seconds},
        "metrics": metrics if metrics is not None else {"test/hr@10": 0.5, "test/ndcg@10": 0.4},
        "efficiency": {"train_seconds": train_seconds, "eval_seconds": eval_seconds, "peak_rss_mb": 1.0},
        "environment": {"git_sha": None, "packages": {}, "python": "3", "platform": "x"},
        "predictions": {"file": "predictions.jsonl.gz", "sha256": "c" * 64},
    }
    (d / "record.json").write_text(json.dumps(record, indent=1))
    return d


def board(runs: Path, out: Path) -> tuple[list[dict[str, str]], str, list[str]]:
    """Write the leaderboard; return (CSV rows, Markdown, warnings)."""
    warnings: list[str] = []
    md = write_leaderboard(runs, out, warnings.append)
    return list(csv.DictReader((out / "leaderboard.csv").open())), md, warnings


def page_data(out: Path) -> dict[str, Any]:
    """The JSON embedded in the HTML page, parsed strictly (NaN/Infinity are not JSON)."""
    text = (out / "leaderboard.html").read_text()
    raw = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1)

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} in page JSON")

    return json.loads(raw.replace("<\\/", "</"), parse_constant=no_constants)


def test_mean_and_sample_std_over_seeds_by_hand(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, seed=1, metrics={"test/ndcg@10": 0.2, "test/hr@10": 0.5})
    make_run(runs, seed=2, metrics={"test/ndcg@10": 0.4, "test/hr@10": 0.5})
    rows, md, warnings = board(runs, tmp_path / "lb")
    assert warnings == [] and len(rows) == 1 and rows[0]["seeds"] == "2"
    # mean 0.3; sample std sqrt(((0.2-0.3)^2 + (0.4-0.3)^2) / 1) = 0.141421...
    assert float(rows[0]["test/ndcg@10"]) == pytest.approx(0.3)
    assert float(rows[0]["test/ndcg@10_std"]) == pytest.approx(0.1414213562)
    assert "0.3000 ± 0.1414" in md
    # train 2 s + eval 1 s per run: the cost the page draws is 3 s.
    assert page_data(tmp_path / "lb")["rows"][0]["cost_seconds"] == pytest.approx(3.0)


def test_unreadable_records_are_skipped_and_named(tmp_path):
    runs = tmp_path / "runs"
    good = make_run(runs, seed=1)
    text = (good / "record.json").read_text()
    bad = {
        "truncated": text[: len(text) // 2],
        "a-list": "[1, 2, 3]",
        "not-utf8": "\udcff",
        "seed-text": text.replace('"seed": 1', '"seed": "abc"'),
        "escape": text.replace('"file": "predictions.jsonl.gz"', '"file": "../../../etc/hostname"'),
    }
    for name, body in bad.items():
        (runs / name).mkdir()
        (runs / name / "record.json").write_bytes(body.encode("utf-8", "surrogateescape"))
    rows, md, warnings = board(runs, tmp_path / "lb")
    assert len(rows) == 1 and rows[0]["model"] == "pop"
    assert len(warnings) == len(bad)
    for name in bad:
        (line,) = [w for w in warnings if f"/{name}/record.json" in w]
        assert line.startswith("skipped ") and "\n" not in line
    assert all("predictions" in w and "file" in w for w in warnings if "/escape/" in w)
    assert "(5 skipped" in md


def test_cli_warns_on_stderr_one_line_per_skipped_record(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, seed=1)
    (runs / "broken").mkdir()
    (runs / "broken" / "record.json").write_text('{"schema_version": 1, "run_id"')
    main(["leaderboard", "--runs", str(runs), "--out", str(tmp_path / "lb")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(runs / "broken" / "record.json") in err[0] and "warning" in err[0]


def test_run_without_ndcg_at_10_gives_empty_cells_not_an_error(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, model="pop", seed=1)
    make_run(runs, model="bpr", seed=1, ev={"ks": [1682]}, metrics={"test/hr@1682": 1.0, "test/ndcg@1682": 0.3})
    rows, md, warnings = board(runs, tmp_path / "lb")
    assert warnings == []
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"pop", "bpr"} and len({(r["dataset"], r["split"], r["eval"]) for r in rows}) == 1
    assert by_model["bpr"]["test/ndcg@10"] == "" and by_model["bpr"]["test/hr@1682"] == "1.0"
    assert "| bpr | 1 | cpu |  |  |" in md  # hr@10 and ndcg@10 empty
    bpr = next(r for r in page_data(tmp_path / "lb")["rows"] if r["model"] == "bpr")
    assert "test/ndcg@10" not in bpr["metrics"]


def test_a_copied_run_counts_once_wherever_it_lies(tmp_path):
    runs = tmp_path / "runs"
    original = make_run(runs, seed=1)
    make_run(runs, seed=2)
    shutil.copytree(original, runs / "copy-of-seed-1")
    shutil.copytree(original, runs / "backup" / "nested" / original.name)
    warnings: list[str] = []
    loaded = load_runs(runs, warnings.append)
    assert sorted(rec["seed"] for rec, _ in loaded) == [1, 2]
    # The copy in the folder named after the run id wins; both other copies are named in a warning.
    assert original in {d for _, d in loaded}
    assert len(warnings) == 2 and all("same run" in w for w in warnings)
    rows, _, _ = board(runs, tmp_path / "lb")
    assert len(rows) == 1 and rows[0]["seeds"] == "2"


def test_tables_are_keyed_by_everything_that_changes_test_rows(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, model="pop", seed=1)
    make_run(runs, model="bpr", seed=1, metrics={"test/ndcg@10": 0.9})
    # Same test rows, different options that do not select rows: same table as the default.
    make_run(runs, model="lgcn", seed=1, ev={"chunk_users": 7, "valid_metric": "hr@10", "list_length": 50,
                                             "negatives_seed": 3})  # fmt: skip
    # Each of these changes the test rows: a table of its own, titled with the difference.
    make_run(runs, model="pop", seed=2, data={"rating_threshold": 4, "kcore": 5})
    make_run(runs, model="pop", seed=3, data={"preprocess": "p5"})
    make_run(runs, model="pop", seed=4, split={"ratios": [0.7, 0.2, 0.1]})
    make_run(runs, model="pop", seed=5, ev={"protocol": "sampled", "num_negatives": 50})
    make_run(runs, model="pop", seed=6, ev={"protocol": "sampled"})
    make_run(runs, model="pop", seed=7, ev={"test_users": 60})  # an option this module never names
    rows, md, warnings = board(runs, tmp_path / "lb")
    assert warnings == []
    keys = {(r["dataset"], r["split"], r["eval"]): r for r in rows if r["model"] == "pop"}
    assert set(keys) == {
        ("tiny", "loo", "full"),
        ("tiny[kcore=5,rating_threshold=4]", "loo", "full"),
        ("tiny[preprocess=p5]", "loo", "full"),
        ("tiny", "loo[ratios=[0.7,0.2,0.1]]", "full"),
        ("tiny", "loo", "sampled[num_negatives=50]"),
        ("tiny", "loo", "sampled"),
        ("tiny", "loo", "full[test_users=60]"),
    }
    default = [r["model"] for r in rows if (r["dataset"], r["split"], r["eval"]) == ("tiny", "loo", "full")]
    assert sorted(default) == ["bpr", "lgcn", "pop"]
    # Titles say how the setting differs from the default; default tables have plain titles.
    assert "### tiny · split=loo · eval=full\n" in md
    assert "### tiny · split=loo · eval=full · not the default: data.kcore=5, data.rating_threshold=4\n" in md
    assert "### tiny · split=loo · eval=sampled · not the default: eval.num_negatives=50\n" in md
    assert "### tiny · split=loo · eval=sampled (100 negatives)\n" in md
    assert "### tiny · split=loo · eval=full · not the default: eval.test_users=60\n" in md
    # The best of a table is picked within it: bpr's 0.9 is not compared with the other tables.
    sig = {(r["dataset"], r["split"], r["eval"], r["model"]): r["sig_vs"] for r in rows}
    assert sig[("tiny[preprocess=p5]", "loo", "full", "pop")] == "(best baseline)"
    tables = page_data(tmp_path / "lb")["tables"]
    assert ["eval.test_users=60"] in [t["setting"] for t in tables]


def test_same_config_on_other_test_rows_is_kept_apart(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, model="pop", seed=1)
    make_run(runs, model="pop", seed=2)
    other = make_run(runs, model="bpr", seed=1)
    rec = json.loads((other / "record.json").read_text())
    rec["split"]["fingerprint"] = "d" * 64  # another file behind the same dataset name
    (other / "record.json").write_text(json.dumps(rec))
    rows, md, _ = board(runs, tmp_path / "lb")
    evals = {r["model"]: r["eval"] for r in rows}
    assert evals["pop"] == "full" and evals["bpr"].startswith("full[rows=")
    assert "other test rows (split fingerprint dddddddd" in md


def test_nan_never_reaches_the_outputs(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, model="pop", seed=1, metrics={"test/ndcg@10": float("nan"), "test/hr@10": 0.5})
    make_run(runs, model="bpr", seed=1, metrics={"test/ndcg@10": 0.25, "test/hr@10": 0.25}, train_seconds=float("nan"))
    make_run(runs, model="lgcn", seed=1, metrics={"test/ndcg@10": float("inf"), "test/hr@10": 0.75})
    rows, md, warnings = board(runs, tmp_path / "lb")
    # A non-finite metric is named in a warning: the record is refused (schema) or the value dropped.
    for model in ("pop", "lgcn"):
        assert any(f"tiny-{model}-s1-" in w for w in warnings)
    by_model = {r["model"]: r for r in rows}
    for r in rows:
        assert "nan" not in ",".join(r.values()).lower() and "inf" not in ",".join(r.values()).lower()
    for model in ("pop", "lgcn"):
        assert model not in by_model or by_model[model]["test/ndcg@10"] == ""
    body = md.split("### ", 1)[1]  # the header names the folder, whose name may contain anything
    assert "nan" not in body.lower() and "inf" not in body.lower()
    data = page_data(tmp_path / "lb")  # raises on NaN/Infinity
    bpr = next(r for r in data["rows"] if r["model"] == "bpr")
    assert bpr["train_seconds"] is None and bpr["cost_seconds"] is None
    assert bpr["metrics"]["test/ndcg@10"] == [0.25, None]


def test_a_record_with_a_repeated_key_is_skipped_with_a_warning(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, model="pop", seed=1, metrics={"test/ndcg@10": 0.5, "test/hr@10": 0.5})
    make_run(runs, model="bpr", seed=1, metrics={"test/ndcg@10": 0.25, "test/hr@10": 0.25})
    path = next(p for p in runs.rglob("record.json") if "tiny-bpr-s1-" in str(p))
    text = path.read_text()
    path.write_text(text.replace('"seed": 1', '"seed": 1, "seed": 2', 1))
    assert path.read_text() != text
    rows, _, warnings = board(runs, tmp_path / "lb")
    assert [r["model"] for r in rows] == ["pop"]
    assert any("tiny-bpr-s1-" in w and "appears twice" in w for w in warnings)


@pytest.mark.parametrize("name", ["../outside.jsonl.gz", "/abs/p.jsonl.gz", "link.jsonl.gz", "", 7])
def test_run_predictions_reads_only_a_plain_file_inside_the_run_folder(tmp_path, name):
    """Every reader of a run's predictions (leaderboard, prompt and precision tables) goes through
    run_predictions: a name pointing outside the folder, a link or a non-name is refused."""
    from benchmark.results.leaderboard import run_predictions

    folder = tmp_path / "run"
    folder.mkdir()
    good = gzip.compress(b'{"user": "u1", "score": 0.5}\n')
    (tmp_path / "outside.jsonl.gz").write_bytes(good)
    (folder / "p.jsonl.gz").write_bytes(good)
    (folder / "link.jsonl.gz").symlink_to(tmp_path / "outside.jsonl.gz")
    assert run_predictions(folder, {"predictions": {"file": "p.jsonl.gz"}}) == [{"user": "u1", "score": 0.5}]
    with pytest.raises(ValueError, match="predictions.file"):
        run_predictions(folder, {"predictions": {"file": name}})


@pytest.mark.parametrize("kind", ["missing", "empty", "only-unreadable"])
def test_missing_or_empty_runs_folder_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, kind):
    runs = tmp_path / "runs"
    if kind != "missing":
        runs.mkdir()
    if kind == "only-unreadable":
        (runs / "x").mkdir()
        (runs / "x" / "record.json").write_text("{")
    out = tmp_path / "lb"
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", "--runs", str(runs), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("llm4rec: error: --runs ") and str(runs) in err[-1]
    assert not out.exists()
    with pytest.raises(BenchmarkError):
        write_leaderboard(runs, out, lambda _: None)


def test_outputs_name_the_folder_read_and_the_page_links_records(tmp_path, monkeypatch):
    runs = tmp_path / "elsewhere" / "my-runs"
    d1 = make_run(runs, seed=1)
    make_run(runs, seed=2)
    out = tmp_path / "site"
    _, md, _ = board(runs, out)
    assert f"run records in `{runs}`" in md and "results/runs" not in md
    assert f"from {runs};" in (out / "leaderboard.tex").read_text().splitlines()[0]
    data = page_data(out)
    assert data["meta"]["source"] == str(runs) and data["meta"]["records"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", data["meta"]["generated"])
    links = data["rows"][0]["records"]
    assert [s for s, _ in links] == [1, 2]
    assert links[0][1] == f"../elsewhere/my-runs/{d1.name}/record.json"  # relative to the page
    assert (out / links[0][1]).resolve() == (d1 / "record.json").resolve()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    board(runs, out)
    assert page_data(out)["meta"]["generated"] == "1970-01-01 00:00 UTC"


def test_untrusted_strings_are_escaped_in_every_output(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "run-1", model="<img src=x onerror=alert(1)>|x", seed=1)
    make_run(runs, model="bpr", seed=1, data={"preprocess": "</script><b>"})
    _, md, _ = board(runs, tmp_path / "lb")
    html_text = (tmp_path / "lb" / "leaderboard.html").read_text()
    assert "<img" not in html_text and "</script><b>" not in html_text
    assert "&lt;img src=x onerror=alert(1)&gt;" in json.dumps(page_data(tmp_path / "lb"))
    assert "\\|x" in md  # a pipe in a label does not split the Markdown row


def test_two_configs_with_one_label_in_a_table_are_told_apart(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, model="bpr", seed=1)
    d = make_run(runs, model="bpr", seed=1, data={"item_fields": {"title": "t"}})  # same rows, other config
    rows, _, _ = board(runs, tmp_path / "lb")
    labels = sorted(r["model"] for r in rows)
    assert len(labels) == 2 and labels[0] != labels[1] and all(m.startswith("bpr [") for m in labels)
    rec = json.loads((d / "record.json").read_text())
    assert f"bpr [{rec['group_key'][:8]}]" in labels


def test_cost_counts_the_training_behind_reused_weights(tmp_path):
    runs = tmp_path / "runs"
    d = make_run(runs, model="bpr", seed=1, train_seconds=0.0, eval_seconds=1.5)
    rec = json.loads((d / "record.json").read_text())
    rec["efficiency"]["original_train_seconds"] = 40.0  # trained by an earlier run, reused here
    (d / "record.json").write_text(json.dumps(rec))
    make_run(runs, model="pop", seed=1, train_seconds=0.0, eval_seconds=0.5)
    rows, _, _ = board(runs, tmp_path / "lb")
    by_model = {r["model"]: r for r in page_data(tmp_path / "lb")["rows"]}
    # bpr: 0 s of its own + 40 s behind its weights + 1.5 s evaluation; pop trains nothing.
    assert by_model["bpr"]["train_seconds"] == 0.0 and by_model["bpr"]["cost_seconds"] == pytest.approx(41.5)
    assert by_model["pop"]["cost_seconds"] == pytest.approx(0.5)


def test_llm_rows_name_their_prompt_examples_history_and_length(tmp_path):
    runs = tmp_path / "runs"
    llm = {
        "prompt": {"name": "tallrec_role", "sha256": "0" * 64},
        "icl_shots": 4,
        "icl_select": "similar",
        "history_fit": {"select": "summary", "budget_tokens": 256},
    }
    for seed, mean in ((1, 300.0), (2, 320.0)):
        d = make_run(runs, model="tallrec", seed=seed, family="llm")
        rec = json.loads((d / "record.json").read_text())
        rec["model"]["llm"] = {**llm, "prompt_tokens": {"prompts": 4, "mean": mean, "max": 400}}
        (d / "record.json").write_text(json.dumps(rec))
    make_run(runs, model="pop")
    rows, _, _ = board(runs, tmp_path / "lb")
    by = {r["model"]: r for r in rows}
    assert (by["tallrec"]["prompt"], by["tallrec"]["icl"], by["tallrec"]["history"]) == ("tallrec_role", "similar:4", "summary@256")
    assert float(by["tallrec"]["prompt_tokens"]) == 310.0  # mean over the seeds
    assert (by["pop"]["prompt"], by["pop"]["icl"], by["pop"]["history"], by["pop"]["prompt_tokens"]) == ("", "", "", "")
    page = (tmp_path / "lb" / "leaderboard.html").read_text()
    assert '"prompt": "tallrec_role"' in page and '"prompt_tokens": 310.0' in page


def test_ranking_tables_show_the_heldout_share_only_where_a_row_has_it():
    from benchmark.results.leaderboard import table_columns

    cold = [{"eval": "full", "metrics": {"test/ndcg@10": (0.1, None)}}, {"eval": "full", "metrics": {"test/heldout@10": (0.2, None), "test/heldout@20": (0.3, None)}}]
    assert table_columns(cold)[-2:] == ["test/heldout@10", "test/heldout@20"]
    assert "test/heldout@10" not in table_columns([{"eval": "full", "metrics": {"test/ndcg@10": (0.1, None)}}])
    labeled = [{"eval": "labeled", "metrics": {"test/heldout@10": (0.2, None)}}]
    assert "test/heldout@10" not in table_columns(labeled)


def test_candidates_next_to_full_ranking_places_by_hand(tmp_path):
    """Places: 1 = best, hit@1 on the candidate lists and NDCG@10 in full ranking; a model without a
    full-ranking row has no place there; the table is written between the document's markers."""
    from benchmark.results.protocols import END, START, main, tables

    head = "dataset,split,eval,model,seeds,test/hit@1,test/hit@1_std,test/ndcg@10,test/valid_ratio,full_ranking:test/hr@10,full_ranking:test/ndcg@10\n"
    body = (
        "d,loo,candidates,a,3,0.30,0.01,0.6,1.0,0.10,0.05\n"
        "d,loo,candidates,b,3,0.40,0.02,0.7,1.0,0.08,0.04\n"
        "d,loo,candidates,llm,1,0.05,,0.2,0.9,,\n"
        "d,loo,full,a,3,,,,,,\n"
        "d,loo,candidates[test_users=9],a,1,0.5,,0.8,1.0,0.1,0.05\n"
        f"d,loo,candidates[test_users=9],x,2,{(0.07 + 0.04) / 2!r},,0.2,1.0,,\n"
        f"d,loo,candidates[test_users=9],y,2,{(0.05 + 0.06) / 2!r},,0.2,1.0,,\n"
    )
    text = tables(head + body)
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| model")]
    assert lines[:3] == [
        "| b | 3 | 0.4000 ± 0.0200 | 0.7000 | 1.0000 | 1 | 0.0800 | 0.0400 | 2 |",
        "| a | 3 | 0.3000 ± 0.0100 | 0.6000 | 1.0000 | 2 | 0.1000 | 0.0500 | 1 |",
        "| llm | 1 | 0.0500 | 0.2000 | 0.9000 | 3 | - | - | - |",
    ]
    assert "**d · loo · candidates[test_users=9]**" in text and len(lines) == 6
    assert [ln.split(" | ")[5] for ln in lines[4:]] == ["2", "2"]  # equal means share a place
    (tmp_path / "lb.csv").write_text(head + body)
    doc = tmp_path / "doc.md"
    doc.write_text(f"x\n{START}\nold\n{END}\n")
    assert main([str(tmp_path / "lb.csv"), "--doc", str(doc)]) == 0
    assert doc.read_text() == f"x\n{START}\n{text}{END}\n"
    assert main([str(tmp_path / "missing.csv")]) == 2
    (tmp_path / "link.csv").symlink_to(tmp_path / "lb.csv")
    assert main([str(tmp_path / "link.csv"), "--doc", str(doc)]) == 2  # a link is refused, nothing written
    assert doc.read_text() == f"x\n{START}\n{text}{END}\n"


def test_the_committed_candidates_document_matches_the_committed_leaderboard():
    """docs/candidates.md's generated tables are those of results/leaderboard.csv (``make leaderboard``)."""
    from benchmark.results.protocols import END, START, tables

    repo = Path(__file__).resolve().parents[2]
    doc = (repo / "docs" / "candidates.md").read_text()
    block = doc.split(START, 1)[1].split(END, 1)[0]
    assert block == "\n" + tables((repo / "results" / "leaderboard.csv").read_text())


def test_same_labelled_rows_are_told_apart_by_their_prompt_or_group_key():
    from benchmark.results.leaderboard import _disambiguate

    def row(model, gk, prompt="", icl="", history="", seeds=1, split="s"):
        return {"dataset": "d", "split": split, "eval": "labeled", "model": model, "group_key": gk,
                "prompt": prompt, "icl": icl, "history": history, "seeds": seeds}

    rows = [
        row("z", "a" * 12, "tallrec"),
        row("z", "b" * 12, "tallrec", history="relevant@176"),
        row("z", "c" * 12, "tallrec_summary", history="summary@176"),
        row("k", "d" * 12, "tallrec", "random:2", seeds=3),
        row("k", "e" * 12, "tallrec_role", "random:2"),
        row("k", "f" * 12, "tallrec", "similar:2"),
        row("m", "1" * 12), row("m", "2" * 12),  # not prompted: the group key
        row("q", "3" * 12, "tallrec", history="recent@9"), row("q", "4" * 12, "tallrec", history="relevant@9"),  # no plainest
        row("z", "5" * 12, "tallrec", split="other"),  # another table: untouched
        # templates alone, one seed each: the model's default template is the plain one
        row("r", "6" * 12, "rerank_role"), row("r", "7" * 12, "rerank_listwise"), row("r", "8" * 12, "rerank_json"),
    ]
    _disambiguate(rows)
    assert [r["model"] for r in rows] == [
        "z", "z [history=relevant@176]", "z [prompt=tallrec_summary, history=summary@176]",
        "k", "k [prompt=tallrec_role]", "k [icl=similar:2]",
        "m [11111111]", "m [22222222]", "q [33333333]", "q [44444444]", "z",
        "r [prompt=rerank_role]", "r", "r [prompt=rerank_json]",
    ]
