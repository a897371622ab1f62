"""The quickstart experiment of `make run`, and the eval.test_users subset it scores on."""

from __future__ import annotations

import fnmatch
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.compose import check_config, compose
from benchmark.config import EvalConfig
from benchmark.data.views import RankingRows
from benchmark.errors import ConfigError
from benchmark.eval.rows import pick_test_users, take_rows
from benchmark.models.llm_rerank import first_stage_dir
from benchmark.results.identity import config_hashes, run_id_for
from benchmark.results.submission import validate
from tests.smoke.test_cli import runs, tiny_args

ROWS = ["bpr", "llm_rerank", "pop", "sasrec", "p5"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quickstart() -> dict:
    sweep = compose(["experiment=quickstart"], hydra=True).hydra
    jobs = {q: compose(["experiment=quickstart", f"quickstart={q}"]) for q in sweep.sweeper.params.quickstart.split(",")}
    return {"sweep": sweep, "jobs": jobs}


def test_quickstart_sweeps_five_models_in_order_bpr_before_its_rerank(quickstart):
    order = quickstart["sweep"].sweeper.params.quickstart.split(",")
    assert sorted(order) == sorted(ROWS)
    assert order.index("bpr") < order.index("llm_rerank")
    # jobs run one after the other, in sweep order (a parallel launcher could start the rerank first)
    assert quickstart["sweep"].launcher._target_.endswith("BasicLauncher")
    names = {q: c.model.name for q, c in quickstart["jobs"].items()}
    assert names == {"sasrec": "sasrec", "p5": "p5", "pop": "pop", "bpr": "bpr", "llm_rerank": "llm_rerank"}
    for cfg in quickstart["jobs"].values():
        check_config(cfg)
        assert cfg.data.name == "ml-100k" and cfg.split.protocol == "loo" and cfg.eval.protocol == "full"
        assert cfg.skip_existing is True and cfg.reuse_trained is True


def test_every_quickstart_row_is_scored_on_the_same_test_user_subset(quickstart):
    subsets = {q: c.eval.test_users for q, c in quickstart["jobs"].items()}
    assert len(set(subsets.values())) == 1
    n = next(iter(subsets.values()))
    assert isinstance(n, int) and 0 < n < 943


def test_quickstart_labels_show_the_shortened_budgets(quickstart):
    jobs = quickstart["jobs"]
    full = {m: compose([f"model={m}"]).model for m in ("bpr", "sasrec", "p5")}
    for q in ("bpr", "sasrec", "p5"):
        ep = jobs[q].model.train.max_epochs
        assert ep < full[q].train.max_epochs, q
        assert f"-{ep}ep" in jobs[q].model.label, jobs[q].model.label
    p5 = jobs["p5"].model
    assert p5.backbone == "t5-tiny-scratch"
    assert p5.module.sample_windows is not None
    assert f"{p5.module.sample_windows}win" in p5.label
    assert "tiny" in p5.label
    assert jobs["pop"].model.get("label") in (None, "pop")  # nothing to shorten
    assert "top20" in jobs["llm_rerank"].model.label and "bpr-20ep" in jobs["llm_rerank"].model.label


def test_the_rerank_row_reads_this_sweeps_bpr_run_and_no_other(quickstart):
    jobs = quickstart["jobs"]
    ids = {q: run_id_for(c, config_hashes(c)[0]) for q, c in jobs.items()}
    pattern = jobs["llm_rerank"].model.module.first_stage
    root, name = pattern.rsplit("/", 1)
    assert root == f"{jobs['bpr'].paths.results}/runs"
    assert [q for q, i in ids.items() if fnmatch.fnmatchcase(i, name)] == ["bpr"]
    assert jobs["bpr"].seed == jobs["llm_rerank"].seed


def test_first_stage_pattern_must_name_exactly_one_run(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with pytest.raises(ConfigError, match="0 run directories match .*run the first stage first"):
        first_stage_dir(runs_dir / "a-sasrec-*")
    (runs_dir / "a-sasrec-1111").mkdir()
    assert first_stage_dir(runs_dir / "a-sasrec-*") == runs_dir / "a-sasrec-1111"
    (runs_dir / "a-sasrec-2222").mkdir()
    with pytest.raises(ConfigError, match="2 run directories match .*a-sasrec-1111, a-sasrec-2222"):
        first_stage_dir(runs_dir / "a-sasrec-*")
    assert first_stage_dir(runs_dir / "plain") == runs_dir / "plain"  # no pattern: taken as given


def test_take_rows_keeps_targets_exclusions_slices_and_negatives_of_kept_rows():
    # 3 rows: user 2 -> targets [5, 6], excl [1]; user 4 -> [7], excl [1, 2, 3]; user 9 -> [8], excl []
    rows = RankingRows(
        "test",
        np.array([2, 4, 9]),
        np.array([0, 2, 3, 4]),
        np.array([5, 6, 7, 8]),
        np.array([0, 1, 4, 4]),
        np.array([1, 1, 2, 3]),
        {"cold_item": np.array([True, False, False, True])},
        np.array([[10, 11], [12, 13], [14, 15]]),
    )
    sub = take_rows(rows, np.array([True, False, True]))
    assert sub.users.tolist() == [2, 9]
    assert sub.target_ptr.tolist() == [0, 2, 3] and sub.targets.tolist() == [5, 6, 8]
    assert sub.exclude_ptr.tolist() == [0, 1, 1] and sub.exclude.tolist() == [1]
    assert sub.slices["cold_item"].tolist() == [True, False, True]
    assert sub.negatives.tolist() == [[10, 11], [14, 15]]


def test_pick_test_users_is_a_fixed_draw_of_distinct_test_users():
    users = np.array([3, 3, 5, 8, 13, 21, 34])  # a labeled part: several rows per user
    a = pick_test_users(users, 4)
    assert len(a) == 4 and len(set(a.tolist())) == 4 and set(a.tolist()) <= {3, 5, 8, 13, 21, 34}
    assert a.tolist() == sorted(a.tolist())
    assert a.tolist() == pick_test_users(users, 4).tolist()
    assert pick_test_users(users, 6).tolist() == [3, 5, 8, 13, 21, 34]
    with pytest.raises(ConfigError, match="eval.test_users=7: the test part has only 6 users"):
        pick_test_users(users, 7)
    with pytest.raises(ConfigError, match="eval.test_users"):
        EvalConfig(test_users=0)


def _lines(run_dir: Path) -> list[dict]:
    """Predictions lines without their row number (which counts the run's own rows)."""
    rec = json.loads((run_dir / "record.json").read_text())
    raw = gzip.decompress((run_dir / rec["predictions"]["file"]).read_bytes()).decode().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "row"} for x in raw]


@pytest.mark.parametrize("protocol", ["full", "sampled", "labeled"])
def test_eval_test_users_scores_and_records_only_that_many_users(tiny_dir, tmp_path, protocol):
    extra = ["eval.num_negatives=20"] if protocol == "sampled" else (["split=random"] if protocol == "labeled" else [])
    args = ["run", "model=pop", f"eval={protocol}", *extra, *tiny_args(tiny_dir, tmp_path)]
    main(args)
    main([*args, "eval.test_users=7"])
    by_n = {json.loads((r / "record.json").read_text())["eval"].get("test_users"): r for r in runs(tmp_path)}
    full, sub = by_n[None], by_n[7]
    rec = json.loads((sub / "record.json").read_text())
    assert rec["config"]["eval"]["test_users"] == 7 and rec["eval"]["test_users"] == 7
    assert len(rec["eval"]["test_users_fingerprint"]) == 64
    lines_full, lines_sub = _lines(full), _lines(sub)
    assert len({ln["user"] for ln in lines_sub}) == 7
    if protocol != "labeled":  # LOO and sampled: one row per user
        assert rec["eval"]["rows"] == 7
    # a kept row is exactly the full run's row for that user (same targets, negatives, ranking)
    by_user = {}
    for ln in lines_full:
        by_user.setdefault(ln["user"], []).append(ln)
    for ln in lines_sub:
        assert ln in by_user[ln["user"]]
    assert sum(len(by_user[u]) for u in {ln["user"] for ln in lines_sub}) == len(lines_sub) == rec["eval"]["rows"]
    report = validate(sub, data_path=tiny_dir)
    assert report.ok, report.summary()


def test_eval_test_users_larger_than_the_test_part_is_a_config_error(tiny_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "model=pop", "eval.test_users=41", *tiny_args(tiny_dir, tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "llm4rec: error: eval.test_users=41: the test part has only 40 users"
    assert runs(tmp_path) == []


def test_make_run_splits_the_sweep_into_two_ordered_halves(quickstart):
    """`make run`: two concurrent sweeps that together run every row once, the rerank after its BPR."""
    recipe = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    halves = [m.split(",") for m in re.findall(r"\bquickstart=([\w,]+)", recipe)]
    assert len(halves) == 2
    assert sorted(q for h in halves for q in h) == sorted(quickstart["sweep"].sweeper.params.quickstart.split(","))
    first = next(h for h in halves if "llm_rerank" in h)
    assert "bpr" in first and first.index("bpr") < first.index("llm_rerank")
    assert "OMP_NUM_THREADS=1" in recipe and recipe.count(" & ") == 1  # two jobs at a time
    assert "outputs/quickstart/leaderboard.html" in recipe
