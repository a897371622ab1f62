"""docs/prompts.md: the prompt-ablation tables generated from the records (benchmark.results.prompts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.eval.significance import holm, paired_pvalue
from benchmark.results.prompts import END, START, ablation_tables, document, pool_table

REPO = Path(__file__).resolve().parents[2]


def _row(model, prompt, icl="", history="", auc=0.6, per_user=None, name="tallrec_zeroshot", seeds=1):
    return {
        "dataset": "d", "split": "s", "eval": "labeled", "model": model, "model_name": name, "prompt": prompt,
        "icl": icl, "history": history, "prompt_tokens": 100.0, "seeds": seeds,
        "metrics": {"test/auc": (auc, None)}, "_per_user": None if per_user is None else np.asarray(per_user, float),
    }


def test_each_row_is_tested_against_the_default_prompt_on_the_same_users():
    base = np.linspace(0.4, 0.6, 12)
    up = base + np.linspace(0.05, 0.10, 12)  # better on every user
    mixed = base + np.array([0.01, -0.01] * 6)
    rows = [
        _row("b", "tallrec", history="relevant@176", auc=0.65, per_user=up),
        _row("ref", "tallrec", auc=0.58, per_user=base),
        _row("c", "tallrec_role", auc=0.59, per_user=mixed),
        _row("d", "tallrec_json", auc=0.50, per_user=base[:5]),  # other users: not paired
    ]
    text = ablation_tables(rows)
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| model")]
    assert lines[0].startswith("| ref | tallrec | none | all |") and lines[0].endswith("| reference | - |")
    p = holm([paired_pvalue(up, base), paired_pvalue(mixed, base)])  # by hand, Holm over the two paired rows
    assert lines[1] == f"| b | tallrec | none | relevant@176 | 100.0 | 1 | 0.6500 | +0.0700 ▲ | {p[0]:.3g} |"
    assert p[0] < 0.05 and p[1] >= 0.05
    by_model = {ln.split(" | ")[0][2:]: ln for ln in lines}
    assert by_model["c"].endswith(f"| +0.0100 | {p[1]:.3g} |")  # role: no mark, not significant
    assert by_model["d"].endswith("| 0.5000 | - | - |")  # json: different rows, no test
    assert [ln.split(" | ")[1] for ln in lines] == ["tallrec", "tallrec", "tallrec_json", "tallrec_role"]
    # a precision variant of the default prompt is a row of its own, not a second reference
    with_int8 = ablation_tables([*rows, _row("ref@int8", "tallrec", auc=0.57, per_user=base)])
    assert sum("| reference |" in ln for ln in with_int8.splitlines()) == 1
    assert "| ref@int8 | tallrec | none | all | 100.0 | 1 | 0.5700 | -0.0100 |" in with_int8
    no_ref = ablation_tables([_row("c", "tallrec_role", per_user=base)])
    assert "| - | - |" in no_ref  # without a reference row nothing is tested


def test_each_selection_strategy_is_tested_against_random_examples_of_its_group():
    from benchmark.results.prompts import selection_tables, selection_tests, tested_values

    base = np.linspace(0.3, 0.5, 12)
    up = base + np.linspace(0.05, 0.10, 12)  # better on every user
    mixed = base + np.array([0.02, -0.01] * 6)
    rows = [
        _row("ref", "tallrec", auc=0.58, per_user=base + 0.2),  # zero-shot: no group
        _row("sim", "tallrec", icl="similar:2", auc=0.47, per_user=up),
        _row("rnd", "tallrec", icl="random:2", auc=0.40, per_user=base, seeds=3),
        _row("div", "tallrec", icl="diverse:2", auc=0.405, per_user=mixed),
        _row("few", "tallrec", icl="diverse:2", auc=0.41, per_user=base[:6]),  # other users: not tested
        _row("k4", "tallrec", icl="similar:4", auc=0.5, per_user=up),  # k=4 has no random row
        _row("json", "tallrec_json", icl="similar:2", auc=0.5, per_user=up),  # another template
        _row("rnd@int8", "tallrec", icl="random:2", auc=0.39, per_user=base),  # a precision variant
    ]
    (found,) = selection_tests(rows)
    _, metric, trs, tests = found
    assert metric == "test/auc" and [r["model"] for r in trs] == ["rnd", "div", "few", "sim"]
    p = holm([paired_pvalue(mixed, base), paired_pvalue(up, base)])  # by hand, Holm over the two paired rows
    assert set(tests) == {1, 3}
    assert np.isclose(tests[1][0], 0.005) and tests[1][1] == p[0] and np.isclose(tests[3][0], 0.07) and tests[3][1] == p[1]
    lines = selection_tables(rows).splitlines()
    assert lines[4] == "| d / s / labeled | rnd | random:2 | 100.0 | 3 | auc | 0.4000 | reference | - |"
    assert lines[7] == f"| d / s / labeled | sim | similar:2 | 100.0 | 1 | auc | 0.4700 | +0.0700 ▲ | {p[1]:.3g} |"
    assert lines[6].endswith("| 0.4100 | - | - |") and p[1] < 0.05
    assert selection_tables([r for r in rows if r["model"] != "rnd"]) == ""  # no random row: no table
    # the paper's values: each tested row's change and p, under the table's key
    assert tested_values("selection", selection_tests(rows)) == {
        "selection/d/s/labeled/div/change": "+0.0050", "selection/d/s/labeled/div/p": f"{p[0]:.3g}",
        "selection/d/s/labeled/sim/change": "+0.0700", "selection/d/s/labeled/sim/p": f"{p[1]:.3g}",
    }


def _pool_run(folder: Path, lines: list[dict]) -> tuple[dict, Path]:
    from benchmark.results.record import encode_predictions

    folder.mkdir(parents=True)
    (folder / "predictions.jsonl.gz").write_bytes(encode_predictions(lines))
    rec = {
        "model": {"name": "tallrec_pool", "label": "tallrec-pool-thompson"},
        "seed": 2,
        "predictions": {"file": "predictions.jsonl.gz"},
        "eval": {"prompt_pool": {
            "rows": 4, "bandit": 0.61, "single": {"t0": 0.58, "t1": 0.6}, "best_on_valid": {"template": "t1", "auc": 0.6},
            "random": 0.57, "oracle_per_group": {"auc": 0.63, "templates": {"0": "t1", "1": "t0"}},
        }},
    }
    return rec, folder


def test_pool_table_sets_the_bandit_against_its_baselines_and_counts_choices_per_group(tmp_path):
    lines = [
        {"row": 0, "label": 1, "prompt": {"group": 0, "template": "t1"}},
        {"row": 1, "label": 0, "prompt": {"group": 0, "template": "t1"}},
        {"row": 2, "label": 1, "prompt": {"group": 0, "template": "t0"}},
        {"row": 3, "label": 0, "prompt": {"group": 1, "template": "t0"}},
    ]
    text = pool_table([_pool_run(tmp_path / "r", lines)])
    row = [ln for ln in text.splitlines() if ln.startswith("| tallrec-pool")][0]
    assert row == "| tallrec-pool-thompson | 2 | 0.6100 | t1 0.6000 | 0.5700 | 0.6000 | 0.6300 | 0: t1 (67%); 1: t0 (100%) |"
    hostile = [{"row": 0, "prompt": {"group": "x", "template": 5}}, {"row": 1, "prompt": None}]
    piped = [{"row": 0, "label": 1, "prompt": {"group": 0, "template": "a|b"}}]
    assert "0: a\\|b (100%)" in pool_table([_pool_run(tmp_path / "p", piped)])  # a cell cannot split the table
    text = pool_table([_pool_run(tmp_path / "h", hostile)])
    assert text.splitlines()[-1].endswith("| - |")  # nothing usable per group: a dash, no traceback
    rec, _ = _pool_run(tmp_path / "b2", lines)
    (tmp_path / "b2" / "predictions.jsonl.gz").write_bytes(b"not gzip")
    assert pool_table([(rec, tmp_path / "b2")]).splitlines()[-1].endswith("| - |")


def test_pool_values_average_each_pools_comparison_over_its_seeds(tmp_path):
    from benchmark.results.prompts import pool_values

    def run(name, label, seed, cmp):
        rec = {"model": {"name": name, "label": label}, "seed": seed, "dataset": {"name": "d"}, "split": {"protocol": "s"},
               "eval": {"protocol": "labeled" if name == "tallrec_pool" else "full", "prompt_pool": cmp}}
        return rec, tmp_path

    labeled = {"bandit": 0.61, "single": {"t0": 0.58, "t1": 0.6}, "best_on_valid": {"template": "t1", "auc": 0.6},
               "random": 0.57, "oracle_per_group": {"auc": 0.63}}
    ranked = {"bandit": 0.2, "single": {"a": 0.1, "b": 0.3}, "best_on_feedback": {"template": "a", "ndcg@10": 0.1},
              "random": 0.15, "oracle_per_group": {"ndcg@10": 0.35}}
    runs = [
        run("tallrec_pool", "tp", 1, labeled),
        run("tallrec_pool", "tp", 2, {**labeled, "bandit": 0.65, "random": 0.51}),
        run("llm_rerank_pool", "rp", 1, ranked),
        run("llm_rerank_pool", "rp", 2, {**ranked, "bandit": None}),  # incomplete: left out
        run("llm_rerank", "plain", 1, ranked),  # not a pool model
    ]
    got = pool_values(runs)
    assert got["pool/d/s/labeled/tp/seeds"] == "2" and got["pool/d/s/labeled/tp/bandit"] == "0.6300"
    assert got["pool/d/s/labeled/tp/random"] == "0.5400" and got["pool/d/s/labeled/tp/fixed"] == "0.6000"
    assert got["pool/d/s/labeled/tp/best_single"] == "0.6000" and got["pool/d/s/labeled/tp/oracle"] == "0.6300"
    assert got["pool/d/s/full/rp/seeds"] == "1" and got["pool/d/s/full/rp/fixed"] == "0.1000"
    assert got["pool/d/s/full/rp/best_single"] == "0.3000" and got["pool/d/s/full/rp/oracle"] == "0.3500"
    assert not any("plain" in k for k in got)


def test_pool_tests_average_each_users_values_over_seeds_and_test_the_bandit_by_hand(tmp_path):
    from benchmark.eval.pool import paired_policy_values, rank_comparison_from_lines
    from benchmark.results.leaderboard import read_predictions_bounded
    from benchmark.results.prompts import pool_test_table, pool_tests
    from benchmark.results.record import encode_predictions

    rng = np.random.default_rng(0)

    def seed_run(seed: int, tamper: bool = False) -> tuple[dict, Path]:
        lines = []
        for u in range(12):  # t1 scores the target first for every user; t0 puts it 3rd; the bandit mixes
            s1 = [1.0, 2.0, 3.0]
            chosen = "t1" if (u + seed) % 3 else "t0"
            lines.append({"row": u, "user": f"u{u}", "targets": ["b"], "ranked": [],
                          "prompt": {"group": 0, "template": chosen, "candidates": ["a", "c", "b"], "scores": [[3.0, 2.0, rng.random()], s1]}})
        folder = tmp_path / f"s{seed}{'x' if tamper else ''}"
        folder.mkdir()
        (folder / "predictions.jsonl.gz").write_bytes(encode_predictions(lines))
        cmp = rank_comparison_from_lines(lines, ["t0", "t1"], "t0", seed)
        if tamper:
            cmp = {**cmp, "bandit": cmp["bandit"] + 0.01}
        rec = {"model": {"name": "llm_rerank_pool", "label": "rp", "prompt_pool": {
            "templates": [{"id": "t0"}, {"id": "t1"}], "feedback": {"best_on_feedback": "t0"}, "seed": seed}},
            "seed": seed, "predictions": {"file": "predictions.jsonl.gz"}, "eval": {"prompt_pool": cmp}}
        return rec, folder

    runs = [seed_run(1), seed_run(2)]
    (row,) = pool_tests(runs)
    third, first = 1 / np.log2(4), 1.0  # t0 ranks b third (score below 2); t1 ranks it first
    bandit = np.array([np.mean([first if (u + s) % 3 else third for s in (1, 2)]) for u in range(12)])
    fixed = np.full(12, third)
    assert row["seeds"] == 2 and row["users"] == 12
    assert row["bandit"] == pytest.approx(bandit.mean()) and row["fixed"] == pytest.approx(third)
    # the random policy per user and seed (its draw is tested with paired_policy_values), averaged likewise
    random = np.mean([paired_policy_values(read_predictions_bounded(f / "predictions.jsonl.gz"), ["t0", "t1"], "t0", r["seed"], True)[1]["random"]
                      for r, f in runs], axis=0)
    p = holm([paired_pvalue(bandit, fixed), paired_pvalue(bandit, random)])  # Holm over the two comparisons
    assert row["fixed_change"] == pytest.approx(bandit.mean() - third) and row["fixed_p"] == pytest.approx(p[0])
    assert row["random"] == pytest.approx(random.mean()) and row["random_p"] == pytest.approx(p[1]) and p[0] < 0.05
    line = pool_test_table(runs).splitlines()[-1]
    assert line.startswith(f"| rp | NDCG@10 | 2 | 12 | {bandit.mean():.4f} | {third:.4f} | +{bandit.mean() - third:.4f} ▲ |")
    from benchmark.results.prompts import pool_values

    got = pool_values(runs)  # the paper's values: the same tests under the pool's key
    assert got["pool/None/None/None/rp/paired_fixed_change"] == f"{bandit.mean() - third:+.4f}"
    assert got["pool/None/None/None/rp/paired_random_p"] == f"{p[1]:.3g}"
    # a run whose values do not average to its record's comparison is left out
    assert pool_tests([runs[0], seed_run(2, tamper=True)])[0]["seeds"] == 1
    nan_rec, nan_dir = seed_run(3)
    nan_rec["eval"]["prompt_pool"]["bandit"] = float("nan")  # a record's NaN does not pass the check
    assert pool_tests([runs[0], (nan_rec, nan_dir)])[0]["seeds"] == 1


def test_the_committed_prompt_document_matches_the_committed_records():
    doc = (REPO / "docs" / "prompts.md").read_text()
    block = doc.split(START, 1)[1].split(END, 1)[0]
    assert block == "\n" + document(REPO / "results" / "runs")
