"""describe=<generator> end to end: the descriptions reach the record and the item texts of the
models that read text; the run validates; bad settings exit 2 before anything is generated."""

from __future__ import annotations

import json

import pytest

from benchmark.cli import main
from tests.smoke.test_cli import llm4rec, runs, tiny_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def titled(tmp_path_factory):
    from tests.conftest import random_rows, write_atomic
    from tests.unit.test_tallrec import make_tiny_lm

    tmp = tmp_path_factory.mktemp("desc")
    titles = {f"i{i}": f"Title {i}" for i in range(60)}
    d = write_atomic(tmp / "tiny", "tiny", random_rows(), titles)
    lm = make_tiny_lm(tmp / "lm", ["Describe the movie", "genres", "in one sentence", "Description", *titles.values()])
    return d, lm


def _args(titled, tmp_path, *extra):
    d, lm = titled
    return [
        "describe=smollm2",
        f"describe.generator={lm}",
        "describe.max_new_tokens=6",
        f"describe.cache_dir={tmp_path / 'cache'}",
        *tiny_args(d, tmp_path),
        *extra,
    ]


def test_described_run_records_its_generator_and_validates(titled, tmp_path):
    llm4rec("run", "model=pop", *_args(titled, tmp_path))
    (run_dir,) = runs(tmp_path)
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["model"]["label"] == "pop+desc-smollm2" and "+desc-smollm2-" in run_dir.name
    facts = rec["model"]["item_descriptions"]
    assert facts["generator"] == str(titled[1]) and facts["check"]["items"] == 60 and facts["cache"] == "created"
    llm4rec("validate", str(run_dir), "--data", str(titled[0]))


def test_bad_describe_settings_exit_2_and_write_nothing(titled, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "model=pop", *_args(titled, tmp_path, "describe.max_new_tokens=0")])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("llm4rec: error: describe.max_new_tokens"), err
    assert runs(tmp_path) == []


@pytest.mark.slow  # MiniLM item texts and two epochs of the text tower
def test_text_tower_reads_the_descriptions(titled, tmp_path):
    llm4rec("run", "model=text_tower", "split=strict_cold_item", "split.holdout_items=0.3", "model.train.max_epochs=2", *_args(titled, tmp_path))
    (run_dir,) = runs(tmp_path)
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["model"]["label"] == "text_tower+desc-smollm2" and rec["model"]["item_descriptions"]["check"]["items"] == 60
    llm4rec("validate", str(run_dir), "--data", str(titled[0]))
