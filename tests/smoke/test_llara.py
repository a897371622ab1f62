"""model=llara end to end on a tiny dataset: a first stage saves its item embeddings, the
LLaRA-style model reads them as hybrid soft tokens and answers eval=candidates; the runs validate;
eval=full and a first stage without embeddings exit 2 with one line and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.models.components.cf_features import EMBEDDINGS, FACTS
from benchmark.results.submission import validate
from tests.smoke.test_cli import runs, tiny_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from tests.conftest import random_rows, write_atomic
    from tests.unit.test_llara import prompts
    from tests.unit.test_tallrec import make_tiny_lm

    tmp = tmp_path_factory.mktemp("llara")
    titles = {f"i{i}": f"Title {i}" for i in range(60)}
    d = write_atomic(tmp / "tiny", "tiny", random_rows(), titles)
    lm = make_tiny_lm(tmp / "lm", [*prompts().corpus(), *titles.values(), "Answer"])
    first = tmp / "first"
    main(["run", "model=bpr", "model.train.max_epochs=2", "save_item_embeddings=true", *tiny_args(d, first)])
    (bpr,) = runs(first)
    return {"data": d, "lm": lm, "bpr": bpr, "tmp": tmp}


def llara_args(s: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    return [
        "run",
        "model=llara",
        f"model.backbone={s['lm']}",
        "model.module.dtype=float32",
        "model.module.sample_windows=8",
        "model.module.negatives=4",
        "model.module.decode_batch_size=8",
        "model.train.max_epochs=1",
        "model.train.batch_size=4",
        "eval=candidates",
        "eval.test_users=12",
        "+trainer.limit_val_batches=1",
        "eval.chunk_users=8",
        *tiny_args(s["data"], tmp),
        *extra,
    ]


def test_first_stage_saves_its_embeddings_and_still_validates(setup):
    bpr = setup["bpr"]
    facts = json.loads((bpr / FACTS).read_text())
    arr = np.load(bpr / EMBEDDINGS, allow_pickle=False)
    assert arr.shape == (60, facts["dim"]) and facts["run_id"] == bpr.name
    report = validate(bpr, data_path=setup["data"])
    assert report.ok, report.summary()


def test_hybrid_llara_answers_candidate_lists_and_validates(setup, tmp_path):
    main(llara_args(setup, tmp_path, "adapter=cf_proj", f"adapter.encoder.run={setup['bpr']}", "adapter.encoder.label=bpr"))
    (d,) = runs(tmp_path)
    rec = json.loads((d / "record.json").read_text())
    assert rec["model"]["label"] == "llara-hybrid+cf_proj-cf-bpr-k1"
    assert rec["eval"]["protocol"] == "candidates" and rec["metrics"]["test/valid_ratio"] == 1.0
    assert rec["model"]["llara"]["mode"] == "hybrid"
    features = rec["model"]["adapter"]["features"]["cf"]
    assert features["run_id"] == setup["bpr"].name and features["split_fingerprint"] == rec["split"]["fingerprint"]
    report = validate(d, data_path=setup["data"])
    assert report.ok, report.summary()


@pytest.mark.parametrize(
    "extra, start",
    [
        (["eval=full"], "model llara: missing support for eval=full"),
        (["model.module.mode=hybrid"], "model.module.mode=hybrid needs item soft tokens"),
    ],
)
def test_refusals_exit_2_with_one_line_and_write_nothing(setup, tmp_path, capsys, extra, start):
    with pytest.raises(SystemExit) as e:
        main(llara_args(setup, tmp_path, *extra))
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"llm4rec: error: {start}"), err
    assert runs(tmp_path) == []


def test_a_first_stage_without_saved_embeddings_is_one_line(setup, tmp_path, capsys):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(setup["bpr"], plain)
    (plain / EMBEDDINGS).unlink()
    with pytest.raises(SystemExit) as e:
        main(llara_args(setup, tmp_path, "adapter=cf_proj", f"adapter.encoder.run={plain}"))
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "rerun that run with save_item_embeddings=true" in err[0], err
    assert runs(tmp_path) == []
