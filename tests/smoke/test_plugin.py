"""The plugin path: a user's model is one file on PYTHONPATH plus one YAML found through hydra.searchpath.

The example plugin is ``examples/plugin`` (``itemknn_plugin.py`` and ``conf/model/itemknn_plugin.yaml``).
Its scores are checked against hand-computed cosine similarities, a run on a constructed
three-user dataset against hand-computed metrics, a run on MovieLens-100K through the installed
``llm4rec`` command (``PYTHONPATH=examples/plugin``) against ``llm4rec validate``, and a plugin
whose module is not importable against a one-line error.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.results.record import load_record
from tests.conftest import write_atomic

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "plugin"
SEARCH = f"hydra.searchpath=[file://{PLUGIN / 'conf'}]"

# Hand-computed case: 3 users x 4 items, train interactions u0 {0, 1}, u1 {1, 2}, u2 {0, 1, 3}.
# Item columns: item 0 <- users {0, 2}, item 1 <- {0, 1, 2}, item 2 <- {1}, item 3 <- {2}; cosine:
C01 = 2 / math.sqrt(2 * 3)  # |{0,2} & {0,1,2}| / sqrt(2 * 3) = 0.8165
C03 = 1 / math.sqrt(2 * 1)  # 0.7071
C12 = C13 = 1 / math.sqrt(3 * 1)  # 0.5774
# cos(0, 2) = cos(2, 3) = 0: no common user.
USERS = np.array([0, 0, 1, 1, 2, 2, 2])
ITEMS = np.array([0, 1, 1, 2, 0, 1, 3])


@pytest.fixture
def itemknn(monkeypatch: pytest.MonkeyPatch):
    """The plugin module, imported the way a run imports it (its folder on the path)."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    sys.modules.pop("itemknn_plugin", None)
    import itemknn_plugin

    yield itemknn_plugin
    sys.modules.pop("itemknn_plugin", None)


def test_plugin_imports_nothing_of_the_benchmark():
    text = (PLUGIN / "itemknn_plugin.py").read_text()
    assert "import benchmark" not in text and "from benchmark" not in text


def test_itemknn_scores_are_hand_computed_cosine_sums(itemknn):
    model = itemknn.ItemKNN(n_users=3, n_items=4, k=3)  # every neighbour kept
    model.init_from_train(USERS, ITEMS)
    expected_sim = torch.tensor(
        [
            [0.0, C01, 0.0, C03],
            [C01, 0.0, C12, C13],
            [0.0, C12, 0.0, 0.0],
            [C03, C13, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(model.similarity, expected_sim)
    # u0 = {0, 1}: item 2 -> S[0,2] + S[1,2]; item 3 -> S[0,3] + S[1,3]
    # u1 = {1, 2}: item 0 -> S[1,0] + S[2,0]; item 3 -> S[1,3] + S[2,3]
    scores = model.score(torch.tensor([0, 1]))
    assert scores.shape == (2, 4)
    torch.testing.assert_close(scores[0, [2, 3]], torch.tensor([C12, C03 + C13]))
    torch.testing.assert_close(scores[1, [0, 3]], torch.tensor([C01, C13]))
    pairs = model.score_pairs(torch.tensor([0, 1]), torch.tensor([[3, 2], [0, 3]]))
    torch.testing.assert_close(pairs, torch.tensor([[C03 + C13, C12], [C01, C13]]))


def test_itemknn_keeps_the_k_most_similar_items_per_item(itemknn):
    model = itemknn.ItemKNN(n_users=3, n_items=4, k=1)
    model.init_from_train(USERS, ITEMS)
    # Per column j, the one best row i: col 0 <- item 1 (C01 > C03), col 1 <- item 0 (C01 > C12 = C13),
    # col 2 <- item 1 (its only neighbour), col 3 <- item 0 (C03 > C13).
    expected = torch.zeros(4, 4)
    expected[1, 0] = expected[0, 1] = C01
    expected[1, 2] = C12
    expected[0, 3] = C03
    torch.testing.assert_close(model.similarity, expected)
    # u1 = {1, 2}: item 3 lost its neighbour 1, so only item 0 keeps a score.
    torch.testing.assert_close(model.score(torch.tensor([1]))[0, [0, 3]], torch.tensor([C01, 0.0]))


def test_run_of_the_plugin_gives_hand_computed_metrics(itemknn, tmp_path):
    """The run (plugin YAML via hydra.searchpath) on a constructed dataset, leave-one-out, full ranking.

    Train parts of u0..u2 are the hand-computed case above (items a..d = 0..3; e has no train
    row). u3 only fills the catalogue to 24 items (a run ranks 20 per row): train f01..f17,
    valid f18, test f19, no item in common with u0..u2, so the cosines above stay as they are.
    Candidates at test (train and valid items excluded; items are indexed by sorted raw id and
    equal scores are ordered by index) and their scores:

    u0: d = S[a,d] + S[b,d] = C03 + C13; e, f01..f19 = 0      -> d at rank 1
    u1: a = S[b,a] + S[c,a] = C01; d = C13 < C01; the rest 0  -> d at rank 2
    u2: c = S[b,c] = C12; e, f01..f19 = 0                     -> c at rank 1
    u3: a, b, c, d, e, f19 all 0 (no common user)             -> f19 at rank 6
    """
    timeline = {
        "u0": ["a", "b", "c", "d"],
        "u1": ["b", "c", "e", "d"],
        "u2": ["a", "b", "d", "e", "c"],
        "u3": [f"f{n:02d}" for n in range(1, 20)],
    }
    rows = [(u, i, 5, t) for u, items in timeline.items() for t, i in enumerate(items, start=1)]
    data = write_atomic(tmp_path / "knn", "knn", rows)
    main(
        [
            "run",
            "model=itemknn_plugin",
            SEARCH,
            "data=atomic",
            f"data.path={data}",
            "data.name=knn",
            "eval.ks=[1,5,10]",
            "logger=none",
            f"paths.results={tmp_path / 'res'}",
            f"paths.outputs={tmp_path / 'out'}",
            "trainer.enable_progress_bar=false",
        ]
    )
    (run_dir,) = (tmp_path / "res" / "runs").iterdir()
    rec = load_record(run_dir)
    assert rec["model"]["name"] == "itemknn_plugin" and "-itemknn-k50-" in rec["run_id"]
    ranks = {"u0": 1, "u1": 2, "u2": 1, "u3": 6}
    m = rec["metrics"]
    assert rec["eval"]["rows"] == len(ranks)
    for k in (1, 5, 10):
        assert m[f"test/hr@{k}"] == pytest.approx(np.mean([r <= k for r in ranks.values()])), k
        ndcg = np.mean([1 / math.log2(r + 1) if r <= k else 0.0 for r in ranks.values()])
        assert m[f"test/ndcg@{k}"] == pytest.approx(ndcg), k
    assert m["test/hr@10"] == 1.0 and m["test/hr@1"] == 0.5  # the hand-computed values, spelled out
    assert m["test/mrr@5"] == pytest.approx((1 + 1 / 2 + 1 + 0) / 4)
    main(["validate", str(run_dir), "--data", str(data)])


def test_model_shorthand_reaches_the_plugins_module():
    """``model.k=20`` is ``model.module.k=20`` for a plugin model too (its YAML found on the search path)."""
    from benchmark.compose import compose, expand_overrides

    assert expand_overrides(["model=itemknn_plugin", SEARCH, "model.k=20"])[-1] == "model.module.k=20"
    cfg = compose(["model=itemknn_plugin", SEARCH, "model.k=20"])
    assert cfg.model.module.k == 20 and cfg.model.label == "itemknn-k20"


def _llm4rec(args: list[str], pythonpath: Path | None) -> subprocess.CompletedProcess:
    """The installed ``llm4rec`` command (next to this interpreter), one torch thread."""
    exe = Path(sys.executable).parent / "llm4rec"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "benchmark"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _run_args(tmp_path: Path) -> list[str]:
    return [
        "run",
        "model=itemknn_plugin",
        SEARCH,
        f"paths.results={tmp_path / 'res'}",
        f"paths.outputs={tmp_path / 'out'}",
        "data=ml-100k",
        "eval.test_users=50",
        "logger=none",
    ]


def test_plugin_runs_on_ml100k_from_pythonpath_and_validates(tmp_path):
    done = _llm4rec(_run_args(tmp_path), pythonpath=PLUGIN)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "res" / "runs").iterdir()
    rec = load_record(run_dir)
    assert rec["run_id"].startswith("ml-100k-loo-full-itemknn-k50-s0-")
    assert rec["eval"]["rows"] == 50 and 0.0 < rec["metrics"]["test/hr@10"] <= 1.0
    checked = _llm4rec(["validate", str(run_dir)], pythonpath=None)
    assert checked.returncode == 0 and "ACCEPTED" in checked.stdout, checked.stdout + checked.stderr


def test_plugin_module_not_on_the_path_is_a_one_line_error(tmp_path):
    done = _llm4rec(_run_args(tmp_path), pythonpath=None)  # the YAML is found, its module is not
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "itemknn_plugin.ItemKNN" in lines[0] and "No module named 'itemknn_plugin'" in lines[0]
    assert not (tmp_path / "res" / "runs").exists() or not any((tmp_path / "res" / "runs").iterdir())
