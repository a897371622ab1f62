"""``llm4rec converse`` end to end on a small atomic dataset with titles, years and genres.

A ranker run and an LLM run (tiny random Llama) write a record and dialogues that ``--check``
recomputes; bad input (turns, k, users out of range, a dataset without the fields the simulator
answers from) is one line, exit 2, and no record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.conversation.runner import check_run, compose_conversation, conversation_run
from tests.conftest import random_rows, write_atomic

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def movies_dir(tmp_path: Path, genres: bool = True) -> Path:
    """40 users x 60 items; item i has a title, a year in 1950..1999 and one or two genres."""
    d = write_atomic(tmp_path / "movies", "movies", random_rows())
    rng = np.random.default_rng(0)
    head = "item_id:token\ttitle:token_seq\tyear:token" + ("\tgenre:token_seq" if genres else "")
    lines = [head]
    for i in range(60):
        g = " ".join(sorted(set(rng.choice(GENRES, size=int(rng.integers(1, 3))).tolist())))
        lines.append(
            f"i{i}\tMovie number {i}\t{1950 + int(rng.integers(0, 50))}" + (f"\t{g}" if genres else "")
        )
    (d / "movies.item").write_text("\n".join(lines) + "\n")
    return d


def data_args(d: Path, tmp_path: Path, genres: bool = True) -> list[str]:
    fields = ["+data.item_fields.title=title", "+data.item_fields.year=year"]
    fields += ["+data.item_fields.genres=genre"] if genres else []
    return [
        "data=atomic",
        f"data.path={d}",
        "data.name=movies",
        *fields,
        f"paths.outputs={tmp_path / 'outputs'}",
        f"out={tmp_path / 'conv'}",
    ]


def runs(tmp_path: Path) -> list[Path]:
    d = tmp_path / "conv"
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def test_ranker_run_writes_dialogues_that_recompute(tmp_path, capsys):
    d = movies_dir(tmp_path)
    main(["converse", "recommender.model=pop", "turns=3", "k=5", *data_args(d, tmp_path)])
    (run,) = runs(tmp_path)
    assert "conv/success@3" in capsys.readouterr().out
    record = json.loads((run / "record.json").read_text())
    assert record["sessions"]["count"] == 40 and record["protocol"]["turns"] == 3
    assert record["leakage"]["utterances_naming_target"] == 0
    assert run.name.startswith("movies-loo-conv-ranker-pop-rule-all-s1-")
    rows = check_run(run)
    assert all(ok for *_, ok in rows), [r for r in rows if not r[3]]
    main(["converse", "--check", str(run)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS:")
    # the same config gives the same dialogues, byte for byte
    again, path = conversation_run(
        compose_conversation(["recommender.model=pop", "turns=3", "k=5", *data_args(d, tmp_path)])
    )
    assert path == run and again["dialogues"] == record["dialogues"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["turns=0"], "conversation.turns"),
        (["k=1000"], "conversation.k"),
        (["users=41"], "conversation.users"),
        (["attributes=[genre,plot]"], "conversation.attributes"),
        (["recommender.schedule=[ask]"], "schedule"),
    ],
)
def test_bad_settings_are_one_line_exit_2_and_no_record(tmp_path, capsys, args, message):
    d = movies_dir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["converse", "recommender.model=pop", *args, *data_args(d, tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm4rec: error:") and message in err[0]
    assert not runs(tmp_path)


def test_a_dataset_without_genres_is_refused(tmp_path, capsys):
    d = movies_dir(tmp_path, genres=False)
    with pytest.raises(SystemExit) as e:
        main(["converse", "recommender.model=pop", *data_args(d, tmp_path, genres=False)])
    assert e.value.code == 2 and "has no item genres" in capsys.readouterr().err
    assert not runs(tmp_path)
    main(
        [
            "converse",
            "recommender.model=pop",
            "attributes=[decade]",
            "recommender.schedule=[decade,recommend]",
            *data_args(d, tmp_path, genres=False),
        ]
    )  # without genre questions it needs no genres
    assert len(runs(tmp_path)) == 1


def test_llm_recommender_with_llm_simulator_on_a_subset(tmp_path, one_torch_thread):
    from tests.unit.test_tallrec import make_tiny_lm

    d = movies_dir(tmp_path)
    words = (
        [f"Movie number {i} ( {1950 + i % 50} )" for i in range(60)]
        + GENRES
        + ["ASK RECOMMEND genre decade similar"]
    )
    lm = make_tiny_lm(tmp_path / "lm", words)
    overrides = [
        "recommender=llm",
        f"recommender.backbone={lm}",
        "recommender.dtype=float32",
        "simulator=llm",
        f"simulator.backbone={lm}",
        "simulator.dtype=float32",
        "simulator.max_new_tokens=6",
        "users=3",
        "users_seed=5",
        "turns=2",
        "k=3",
        *data_args(d, tmp_path),
    ]
    record, run = conversation_run(compose_conversation(overrides))
    assert record["sessions"]["count"] == 3 and record["sessions"]["users_seed"] == 5
    assert record["simulator"]["sampling"]["seed"] == 1 and record["simulator"]["llm"]["backbone"] == str(lm)
    assert record["recommender"]["prompt"]["example"] and record["metrics"]["conv/prompt_tokens"] > 0
    assert record["metrics"]["conv/hallucination"] == 0.0  # constrained to catalogue titles
    assert "-llm-lm-llmsim-lm-u3-s1-" in run.name
    assert all(ok for *_, ok in check_run(run))


def test_a_stopped_run_resumes_from_its_session_log_with_the_same_dialogues(tmp_path, monkeypatch):
    """A run killed after two batches leaves a session log; the rerun reads those batches back,
    runs only the rest and writes dialogues equal, byte for byte, to an uninterrupted run's; a
    log cut short, written for another config, or naming other rows is handled as documented."""
    import benchmark.conversation.runner as runner
    from benchmark.errors import ConfigError

    d = movies_dir(tmp_path)
    args = ["recommender.model=pop", "turns=3", "k=5", "batch_size=8"]
    whole, _ = conversation_run(compose_conversation([*args, *data_args(d, tmp_path / "whole")]))

    real, calls = runner.converse, []

    def stop_after_two(*a, **kw):
        calls.append(len(a[4]))
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(runner, "converse", stop_after_two)
    cfg = compose_conversation([*args, *data_args(d, tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        conversation_run(cfg)
    (log,) = (tmp_path / "outputs" / "conversation" / "partial").iterdir()
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["config_hash"] == whole["config_hash"]
    assert [json.loads(ln)["start"] for ln in lines[1:]] == [0, 8] and runs(tmp_path) == []
    with log.open("a") as f:  # a batch line cut short by the kill
        f.write('{"start":16,"sessions":[{"row"')

    calls.clear()
    monkeypatch.setattr(runner, "converse", lambda *a, **kw: calls.append(len(a[4])) or real(*a, **kw))
    record, run = conversation_run(cfg)
    assert calls == [8, 8, 8]  # 40 sessions: two batches read back, three run
    assert record["dialogues"] == whole["dialogues"] and record["metrics"] == whole["metrics"]
    assert record["config_hash"] == whole["config_hash"]  # paths.outputs and out are not hashed
    assert record["timings"]["resumed_sessions"] == 16 and record["timings"]["earlier_processes"] == 1
    assert not log.exists() and all(ok for *_, ok in check_run(run))

    # a log of another config, or with a batch of other rows, is refused with one line
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(lines[0].replace(whole["config_hash"], "0" * 64) + "\n")
    with pytest.raises(ConfigError, match=r"partial/.*\.jsonl: written for another config"):
        conversation_run(cfg)
    forged = json.loads(lines[2])
    forged["start"] = 0
    log.write_text(lines[0] + "\n" + json.dumps(forged) + "\n")
    with pytest.raises(ConfigError, match=r"line 2: not the batch of rows 0\.\.7"):
        conversation_run(cfg)
    bad = json.loads(lines[1])
    bad["sessions"][0]["success_turn"] = 2  # disagrees with its dialogue
    log.write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ConfigError, match="success_turn"):
        conversation_run(cfg)
    log.write_text(lines[0] + "\n" + lines[1].replace('"seconds":', '"seconds":NaN,"x":', 1) + "\n")
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):  # NaN is not JSON
        conversation_run(cfg)
    import benchmark.conversation.storage as storage

    log.write_text(lines[0] + "\n")
    monkeypatch.setattr(storage, "PARTIAL_LIMIT", 10)
    with pytest.raises(ConfigError, match="over the session-log limit of 10"):
        conversation_run(cfg)
    monkeypatch.undo()
    log.unlink()
    log.symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(ConfigError, match="must be a regular file"):
        conversation_run(cfg)
