"""eval=candidates end to end on a tiny dataset: runs validate, a full run's candidates view equals
an eval=candidates run on the same weights, tampering is a verdict, bad values exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.submission import validate
from tests.smoke.test_cli import runs, tiny_args
from tests.smoke.test_submission import _copy, _lines, _rewrite_predictions


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """pop and bpr under eval=candidates, and bpr under eval=full with the candidates view."""
    from tests.conftest import random_rows, write_atomic

    tmp = tmp_path_factory.mktemp("cand")
    d = write_atomic(tmp / "tiny", "tiny", random_rows())
    args = tiny_args(d, tmp)
    main(["run", "model=pop", "eval=candidates", *args])
    main(["run", "model=bpr", "model.train.max_epochs=2", "eval.also_candidates=true", *args])
    main(["run", "model=bpr", "model.train.max_epochs=2", "eval=candidates", *args])
    out = {"data": d, "tmp": tmp}
    for r in runs(tmp):
        out[r.name.split("-s0-")[0].removeprefix("tiny-loo-")] = r
    return out


def _record(d: Path) -> dict:
    return json.loads((d / "record.json").read_text())


def test_candidate_runs_and_the_view_validate_and_agree(tiny):
    for key in ("candidates-pop", "candidates-bpr", "full-bpr"):
        report = validate(tiny[key], data_path=tiny["data"])
        assert report.ok, report.summary()
    cand, full = _record(tiny["candidates-bpr"]), _record(tiny["full-bpr"])
    assert cand["eval"]["protocol"] == "candidates" and "-candidates-" in cand["run_id"]
    assert sorted(cand["metrics"]) == sorted(
        ["test/hit@1", "test/hit@5", "test/hit@10", "test/ndcg@5", "test/ndcg@10", "test/valid_ratio"]
        + [f"test/{s}/{m}" for s in ("cold_item", "cold_user") for m in ("hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10")]
    )
    # One run, two views: the full run's candidates view is the candidates run (same weights, same negatives).
    assert full["metrics_candidates"] == cand["metrics"]
    assert full["eval"]["candidates"]["negatives_fingerprint"] == cand["eval"]["negatives_fingerprint"]
    assert "test/ndcg@10" in full["metrics"] and "test/hit@1" not in full["metrics"]
    lines = _lines(tiny["full-bpr"])
    assert all(len(ln["ranked_candidates"]) == 20 for ln in lines)


def test_a_non_candidate_is_a_verdict_never_a_crash(tiny, tmp_path):
    for key, field in (("candidates-pop", "ranked"), ("full-bpr", "ranked_candidates")):
        d = _copy(tiny[key], tmp_path / key)

        def edit(lines, field=field):
            lines[0][field][0] = next(f"i{j}" for j in range(60) if f"i{j}" not in lines[0][field] and f"i{j}" not in lines[0]["targets"])
            return lines

        _rewrite_predictions(d, edit)
        report = validate(d, data_path=tiny["data"])
        assert not report.ok and "candidates" in report.verdict(), report.verdict()


def test_other_negatives_are_rejected(tiny, tmp_path):
    d = _copy(tiny["candidates-pop"], tmp_path / "neg")
    rec = _record(d)
    rec["config"]["eval"]["negatives_seed"] = 1
    from omegaconf import OmegaConf

    from benchmark.results.identity import config_hashes

    rec["config_hash"], rec["group_key"] = config_hashes(OmegaConf.create(rec["config"]))
    (d / "record.json").write_text(json.dumps(rec))
    report = validate(d, data_path=tiny["data"])
    assert not report.ok and "negatives_fingerprint" in report.verdict()


@pytest.mark.parametrize(
    "override, start",
    [
        (["eval=candidates", "eval.num_negatives=0"], "eval.num_negatives: must be > 0"),
        (["eval=candidates", "eval.num_negatives=60"], "eval.num_negatives=60: exceeds"),
        (["eval=candidates", "eval.ks=[1,5,21]"], "eval.ks: 21 exceeds the 20 candidates"),
        (["eval=sampled", "eval.also_candidates=true"], "eval.also_candidates: only eval=full"),
        (["model=p5", "eval.also_candidates=true"], "eval.also_candidates: model p5 generates ranked lists"),
    ],
)
def test_bad_values_exit_2_and_write_nothing(tiny, tmp_path, capsys, override, start):
    from tests.conftest import random_rows, write_atomic

    d = write_atomic(tmp_path / "tiny", "tiny", random_rows())
    with pytest.raises(SystemExit) as e:
        main(["run", "model=pop", *tiny_args(d, tmp_path), *override])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"llm4rec: error: {start}"), err
    assert runs(tmp_path) == []


def test_p5_ranks_its_candidate_lists_by_constrained_beams(tiny, tmp_path):
    from tests.smoke.test_p5 import TINY as P5_ARGS

    args = tiny_args(tiny["data"], tmp_path)
    main(["run", *P5_ARGS, "eval=candidates", "model.module.num_beams=20", *args])
    (d,) = runs(tmp_path)
    report = validate(d, data_path=tiny["data"])
    assert report.ok, report.summary()
    rec = _record(d)
    assert rec["eval"]["protocol"] == "candidates" and rec["metrics"]["test/valid_ratio"] == 1.0
    assert all(len([x for x in ln["ranked"] if x]) == 20 for ln in _lines(d))  # every candidate ranked


def test_reproduce_compares_the_candidates_view_too(tiny, capsys):
    main(["reproduce", str(tiny["full-bpr"]), f"data.path={tiny['data']}"])
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert "candidates view test/hit@1" in out
