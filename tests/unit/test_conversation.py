"""Conversational recommendation: the rule simulator, leakage, filtering, metrics and stored dialogues.

Everything runs on a hand-built catalogue; the LLM parts on a tiny randomly initialised Llama
(:func:`tests.unit.test_tallrec.make_tiny_lm`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from benchmark.conversation.catalogue import Catalogue, Revealed, catalogue_of, leaks, understand
from benchmark.conversation.metrics import session_metrics
from benchmark.conversation.protocol import Action, Context, ProtocolConfig, converse
from benchmark.conversation.recommenders import RankerInLoop, check_schedule, parse_titles, top_allowed
from benchmark.conversation.simulators import ACCEPT, NEUTRAL, REJECT, RuleSimulator
from benchmark.conversation.storage import (
    DIALOGUES,
    check_sessions,
    config_digest,
    read_conversation,
    recompute,
    write_conversation,
)
from benchmark.errors import ConfigError, DataError

ITEMS = [  # title, year, genres
    ("Toy Story", 1995, {"Animation", "Children's", "Comedy"}),
    ("GoldenEye", 1995, {"Action", "Adventure", "Thriller"}),
    ("Usual Suspects, The", 1995, {"Crime", "Thriller"}),
    ("Alien", 1979, {"Action", "Horror", "Sci-Fi", "Thriller"}),
    ("Alien 3", 1992, {"Action", "Horror", "Sci-Fi", "Thriller"}),
    ("Aliens", 1986, {"Action", "Sci-Fi", "Thriller", "War"}),
    ("M", 1931, {"Crime", "Film-Noir", "Thriller"}),
    ("Seven (Se7en)", 1995, {"Crime", "Thriller"}),
    ("Mystery Film", -1, set()),
    ("Drama", 1990, {"Drama"}),
]


def catalogue(pop: list[int] | None = None) -> Catalogue:
    titles = [t for t, _, _ in ITEMS]
    years = np.array([y for _, y, _ in ITEMS])
    texts = [f"{t} ({y})" if y > 0 else t for t, y, _ in ITEMS]
    return Catalogue(
        np.array([f"i{j}" for j in range(len(ITEMS))]),
        titles,
        texts,
        years,
        [frozenset(g) for _, _, g in ITEMS],
        np.array(pop or [0] * len(ITEMS)),
        frozenset({"title", "year", "genres"}),
    )


def context(k: int = 3, turns: int = 5, excluded: tuple[int, ...] = ()) -> Context:
    return Context(row=0, user=0, turns=turns, k=k, excluded=np.array(excluded, dtype=np.int64))


# ----------------------------------------------------------------------------- the rule simulator


def test_rule_simulator_answers_from_the_item_table():
    sim = RuleSimulator(catalogue(), ("genre", "decade", "similar"))
    assert sim.answer("genre", 0) == "I'd like something Animation, Children's and Comedy."
    assert sim.answer("genre", 9) != "I'd like something Drama."  # would name the target "Drama"
    assert sim.answer("decade", 3) == "Something from the 1970s."
    assert sim.answer("genre", 8) == "Any genre is fine."
    assert sim.answer("decade", 8) == "I don't mind how old it is."
    # Alien 3 shares every genre of Alien but names it: the next most similar item is named instead.
    assert sim.answer("similar", 3) == 'Something like "Aliens (1986)".'
    assert sim.answer("similar", 2) == 'Something like "Seven (Se7en) (1995)".'  # same genres, same year


def test_rule_simulator_accepts_exactly_lists_with_the_target_and_hints_in_order():
    cat = catalogue()
    sim = RuleSimulator(cat, ("genre", "decade", "similar"), hint=True)
    ctx = context()
    assert sim.rule_reply(Action.recommend([1, 3]), 3, ctx) == sim.rule_reply(Action.recommend([3]), 3, ctx)
    assert sim.rule_reply(Action.recommend([3]), 3, ctx).text == ACCEPT
    rej = sim.rule_reply(Action.recommend([0, 1]), 3, ctx)
    assert (
        not rej.accepted and rej.text == REJECT + " I'd like something Action, Horror, Sci-Fi and Thriller."
    )
    assert rej.reveals == "genre"
    ctx.told.append("genre")
    ctx.asked.append("decade")
    assert sim.rule_reply(Action.recommend([0]), 3, ctx).reveals == "similar"
    plain = RuleSimulator(cat, ("genre",), hint=False).rule_reply(Action.recommend([0]), 3, context())
    assert plain.text == REJECT and plain.reveals is None


# ----------------------------------------------------------------------------- leakage


@pytest.mark.parametrize(
    ("text", "title", "named"),
    [
        ("I loved The Usual Suspects.", "Usual Suspects, The", True),
        ("something like usual suspects", "Usual Suspects, The", True),
        ("I'm in the mood for a thriller.", "M", False),
        ('Watch "M" tonight', "M", True),
        ("Aliens was great", "Alien", False),
        ("Alien 3 was great", "Alien", True),
        ("Se7en!", "Seven (Se7en)", True),
        ("Something from the 1990s.", "Toy Story (1995)", False),
    ],
)
def test_leaks_finds_a_title_and_its_variants_as_whole_words(text, title, named):
    assert leaks(text, title) is named


def test_rule_simulator_never_names_the_target():
    cat = catalogue()
    sim = RuleSimulator(cat, ("genre", "decade", "similar"), hint=True)
    for target in range(len(cat)):
        for attribute in ("genre", "decade", "similar"):
            assert not leaks(sim.answer(attribute, target), cat.titles[target])
        for items in ([target], [t for t in range(len(cat)) if t != target][:3]):
            (reply,) = sim.reply([Action.recommend(items)], [target], [context()])
            assert not leaks(reply.text, cat.titles[target])
    assert sim.guard("I'd like something Drama.", 9) == NEUTRAL


# ----------------------------------------------------------------------------- understanding and filtering


def test_understand_reads_genres_decades_and_quoted_titles():
    cat = catalogue()
    r = understand("I'd like something Action and Sci-Fi from the 1980s.", cat)
    assert r == Revealed(frozenset({"Action", "Sci-Fi"}), frozenset({1980}))
    r = understand(
        'Something like "Alien (1979)".', cat
    )  # the named movie's year and genres are not the target's
    assert r.mentioned == {3} and not r.decades and not r.genres
    r = understand("maybe science fiction, from the '90s or 1975", cat)
    assert r.genres == {"Sci-Fi"} and r.decades == {1990, 1970}


def test_filtering_by_revealed_attributes_and_filling_the_list():
    cat = catalogue()
    allowed = cat.allowed(Revealed(frozenset({"Action", "Sci-Fi"}), frozenset({1980})))
    assert np.flatnonzero(allowed).tolist() == [5]
    assert np.flatnonzero(cat.allowed(Revealed(frozenset({"Thriller"})))).tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert not cat.allowed(Revealed(frozenset({"Western"}))).any()
    scores = np.arange(len(cat), dtype=float)[::-1]  # item 0 best
    items, n = top_allowed(scores, allowed, np.array([0]), 3)
    assert items == [5, 1, 2] and n == 1  # the allowed item first, then the best others; 0 blocked
    ctx = context(k=3)
    ctx.turn, ctx.revealed, ctx.rejected = 1, Revealed(frozenset({"Thriller"}), mentioned=frozenset({2})), {1}
    ranker = RankerInLoop(lambda u: scores, cat, ("recommend",), {"model": "test"})
    assert ranker.act([ctx])[0].items == (3, 4, 5)  # Thriller, not rejected (1) nor named (2)


def test_a_session_follows_the_schedule_and_stops_at_the_accepted_list():
    cat = catalogue()
    proto = ProtocolConfig(turns=4, k=2)
    scores = np.zeros(len(cat))
    scores[[0, 1]] = 2.0  # the unfiltered list misses the target (Alien)
    ranker = RankerInLoop(
        lambda u: scores, cat, check_schedule(["recommend", "genre", "recommend"], proto.attributes), {}
    )
    (s,) = converse(
        ranker, RuleSimulator(cat, proto.attributes), cat, proto, [context(k=2, turns=4)], [3], ["u0"]
    )
    assert [t["speaker"] for t in s["turns"]] == ["recommender", "user"] * 3
    assert s["turns"][0]["items"] == ["i0", "i1"] and s["turns"][2]["attribute"] == "genre"
    assert s["turns"][4]["items"] == ["i3", "i4"] and s["success_turn"] == 3 and s["turns"][5]["accepted"]


def test_a_question_on_the_last_turn_breaks_the_protocol():
    cat = catalogue()
    proto = ProtocolConfig(turns=1, k=2)
    asker = SimpleNamespace(act=lambda ctxs: [Action.ask("genre") for _ in ctxs], facts=dict)
    with pytest.raises(RuntimeError, match="breaks the protocol"):
        converse(asker, RuleSimulator(cat, proto.attributes), cat, proto, [context(turns=1)], [3], ["u0"])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"turns": 0}, "turns"),
        ({"turns": 21}, "turns"),
        ({"k": 0}, "k"),
        ({"k": 101}, "k"),
        ({"attributes": ("genre", "plot")}, "attributes"),
        ({"attributes": ("genre", "genre")}, "attributes"),
    ],
)
def test_protocol_settings_out_of_range_are_one_line_errors(kwargs, match):
    with pytest.raises(ConfigError, match=f"conversation.{match}"):
        ProtocolConfig(**kwargs)


def test_schedule_and_catalogue_checks():
    with pytest.raises(ConfigError, match="schedule"):
        check_schedule(["recommend", "plot"], ("genre",))
    with pytest.raises(ConfigError, match="catalogue has only 10"):
        ProtocolConfig(k=11).check_catalogue(10)
    items = pd.DataFrame({"title": ["A", "B"]}, index=pd.Index(["1", "2"], name="item"))
    data = SimpleNamespace(name="toy", items=items, item_fields={"title": "title"})
    split = SimpleNamespace(item_ids=np.array(["1", "2"]), n_items=2)
    with pytest.raises(DataError, match="dataset toy has no item genres"):
        catalogue_of(data, split, {"title", "genres"})


# ----------------------------------------------------------------------------- metrics and stored dialogues


def rec(turn: int, items: list, attribute: str | None = None) -> dict:
    if attribute:
        return {
            "turn": turn,
            "speaker": "recommender",
            "action": "ask",
            "attribute": attribute,
            "text": "?",
            "prompt_tokens": 5,
        }
    return {
        "turn": turn,
        "speaker": "recommender",
        "action": "recommend",
        "items": items,
        "generated": [],
        "text": "?",
        "prompt_tokens": 10,
    }


def user(turn: int, accepted: bool = False) -> dict:
    return {
        "turn": turn,
        "speaker": "user",
        "text": "..",
        "accepted": accepted,
        "reveals": None,
        "replaced": False,
        "prompt_tokens": 0,
    }


def constructed() -> list[dict]:
    return [
        {
            "row": 0,
            "user": "u0",
            "target": "a",
            "success_turn": 3,
            "turns": [
                rec(1, ["b", "c"]),
                user(1),
                rec(2, [], "genre"),
                user(2),
                rec(3, ["a"]),
                user(3, True),
            ],
        },
        {
            "row": 1,
            "user": "u1",
            "target": "x",
            "success_turn": 1,
            "turns": [rec(1, ["x", None]), user(1, True)],
        },
        {
            "row": 2,
            "user": "u2",
            "target": "z",
            "success_turn": None,
            "turns": [
                rec(1, [], "genre"),
                user(1),
                rec(2, [], "genre"),
                user(2),
                rec(3, [None, "q"]),
                user(3),
            ],
        },
    ]


def test_success_at_t_and_the_other_metrics_on_constructed_dialogues():
    m, support = session_metrics(constructed(), turns=3, k=2)
    assert m["conv/success@1"] == pytest.approx(1 / 3)
    assert m["conv/success@2"] == pytest.approx(1 / 3)
    assert m["conv/success@3"] == pytest.approx(2 / 3)
    assert m["conv/turns_to_success"] == pytest.approx(2.0)
    assert m["conv/recall@2/turn1"] == pytest.approx(0.5)  # sessions 0 (miss) and 1 (hit) recommended
    assert m["conv/recall@2/turn2"] is None  # nobody recommended at turn 2
    assert m["conv/recall@2/turn3"] == pytest.approx(0.5)
    assert m["conv/hallucination"] == pytest.approx(2 / 7)
    assert session_metrics(constructed(), 3, 2, ["a", "b", "c", "x", "z"])[0][
        "conv/hallucination"
    ] == pytest.approx(3 / 7)
    assert m["conv/repeat_questions"] == pytest.approx(1 / 3) and m["conv/questions"] == pytest.approx(1.0)
    assert m["conv/prompt_tokens"] == pytest.approx((25 + 10 + 20) / 3)  # lists 10 tokens, questions 5
    assert support["successes"] == 2 and support["recommendations/turn3"] == 2
    check_sessions(constructed(), 3, 2)


def write_run(tmp_path: Path, sessions: list[dict]) -> Path:
    metrics, support = session_metrics(sessions, 3, 2)
    config = {"conversation": {"turns": 3, "k": 2}}
    record = {
        "run_id": "r",
        "config": config,
        "config_hash": config_digest(config),
        "protocol": {"turns": 3, "k": 2},
        "metrics": metrics,
        "sessions": {"count": len(sessions)},
    }
    return write_conversation(tmp_path, "r", record, sessions)[1]


def test_dialogues_round_trip_through_the_file_and_recomputation(tmp_path):
    run = write_run(tmp_path, constructed())
    first = (run / DIALOGUES).read_bytes()
    assert write_run(tmp_path, constructed()) == run and (run / DIALOGUES).read_bytes() == first  # same bytes
    record, sessions = read_conversation(run)
    assert sessions == constructed()
    rows = recompute(record, sessions)
    assert rows and all(ok for *_, ok in rows)
    record["metrics"]["conv/success@3"] = 0.9
    assert [k for k, *_, ok in recompute(record, sessions) if not ok] == ["conv/success@3"]
    record["config"]["conversation"]["k"] = 5  # a config edited after the run
    assert [k for k, *_, ok in recompute(record, sessions) if not ok] == ["conv/success@3", "config_hash"]


def rewrite(run: Path, sessions: list[dict], fix_sha: bool) -> None:
    data = gzip.compress("".join(json.dumps(s) + "\n" for s in sessions).encode(), mtime=0)
    (run / DIALOGUES).write_bytes(data)
    if fix_sha:
        import hashlib

        record = json.loads((run / "record.json").read_text())
        record["dialogues"]["sha256"] = hashlib.sha256(data).hexdigest()
        (run / "record.json").write_text(json.dumps(record))


def test_tampered_dialogues_are_refused(tmp_path):
    run = write_run(tmp_path, constructed())
    changed = constructed()
    changed[1]["target"] = "y"  # the accepted list no longer holds the target
    rewrite(run, changed, fix_sha=False)
    with pytest.raises(ConfigError, match="sha256"):
        read_conversation(run)
    rewrite(run, changed, fix_sha=True)
    with pytest.raises(ConfigError, match="success_turn"):
        read_conversation(run)
    long = constructed()
    long[0]["turns"][0]["items"] = ["b", "c", "d"]  # more than k
    rewrite(run, long, fix_sha=True)
    with pytest.raises(ConfigError, match="items must be 1..2"):
        read_conversation(run)


def test_generated_lists_are_parsed_into_titles():
    assert parse_titles('"Toy Story (1995)", "Alien (1979)", "Toy Story (1995)"') == [
        "Toy Story (1995)",
        "Alien (1979)",
    ]
    assert parse_titles("1. Heat\n2) Alien\n- Fargo") == ["Heat", "Alien", "Fargo"]
    cat = catalogue()
    assert [cat.ground(t) for t in ("toy story (1995)", "Alien", "Usual Suspects, The", "Nope")] == [
        0,
        3,
        2,
        None,
    ]


def table_run(
    root: Path, run_id: str, sessions: list[dict], users: int | None, name: str, seed: int = 1, top_n: int = 20
) -> Path:
    """A conversation run folder as the table reads it (the config: what differs between runs)."""
    metrics, _ = session_metrics(sessions, 3, 2)
    record = {
        "run_id": run_id,
        "seed": seed,
        "config": {
            "conversation": {"recommender": {"name": name, "top_n": top_n}, "users": users, "seed": seed},
            "main": {"data": {"name": "ml-100k"}, "seed": seed},
        },
        "protocol": {"turns": 3, "k": 2},
        "metrics": metrics,
        "sessions": {"count": len(sessions), "users": users, "users_seed": 0 if users else None},
        "recommender": {"name": name, "first_stage": {"model": "pop"}, "decoding": "constrained", "top_n": top_n},
        "simulator": {"name": "rule"},
        "timings": {"seconds_per_session": 0.5 * seed},
        "dataset": {"name": "ml-100k"},
        "split": {"protocol": "loo"},
    }
    write_conversation(root, run_id, record, sessions)
    return root / run_id


def test_the_summary_table_compares_runs_on_the_same_sessions(tmp_path):
    from benchmark.conversation.table import paper_values, summary
    from benchmark.paper import conversation_tex

    table_run(tmp_path, "full", constructed(), None, "ranker")
    part_dir = table_run(tmp_path, "part", constructed()[1:], 2, "llm")
    text = summary(tmp_path)
    assert "### ml-100k loo, 3 sessions: all test rows" in text
    assert "### ml-100k loo, 2 sessions: a seeded subset of 2 test users" in text
    part = text.split("### ml-100k loo, 2 sessions")[1]
    assert (
        "| ranker in the loop (pop) | rule | 2 * | 1 | 0.500 |" in part
    )  # the full run's 2 sessions, recomputed
    assert "| LLM (constrained) | rule | 2 | 1 | 0.500 |" in part
    # The paper's tables and values: the same cells; values of each run on its own sessions only.
    tex, _ = conversation_tex(tmp_path)
    assert r"\label{tab:conversation-ml-100k-loo-all}" in tex and r"\label{tab:conversation-ml-100k-loo-u2}" in tex
    assert r"ranker in the loop (pop) & rule & 2* & 1 & 0.500 &" in tex and "users\\_seed=0" in tex
    values = paper_values(tmp_path)
    assert values["conversation/ml-100k/loo/u2/llm-constrained/rule/success1"] == "0.500"
    assert values["conversation/ml-100k/loo/all/ranker-pop/rule/sessions"] == "3"
    assert not any(k.startswith("conversation/ml-100k/loo/u2/ranker") for k in values)  # recomputed: no values
    # A record from anyone: a field of the wrong type is one line naming the folder and the field.
    record = json.loads((part_dir / "record.json").read_text())
    record["recommender"]["name"] = {"_target_": "os.system"}
    (part_dir / "record.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"part: record field recommender.name is missing or of the wrong type"):
        summary(tmp_path)
    from benchmark.conversation.table import SUMMARY, main

    with pytest.raises(SystemExit) as e:  # the command: one line, exit 2, no summary written
        main([str(tmp_path)])
    assert e.value.code == 2 and not (tmp_path / SUMMARY).exists()


def succeeds_everywhere() -> list[dict]:
    """:func:`constructed` with its third session accepting the turn-3 list (success@3 = 1)."""
    out = constructed()
    out[2]["turns"][4] = rec(3, ["z", "q"])
    out[2]["turns"][5] = user(3, True)
    out[2]["success_turn"] = 3
    return out


def test_runs_differing_only_by_seed_form_one_row_with_mean_and_std(tmp_path):
    from benchmark.conversation.table import paper_values, summary
    from benchmark.paper import conversation_tex

    table_run(tmp_path, "s1", constructed(), None, "hybrid", seed=1)
    table_run(tmp_path, "s2", succeeds_everywhere(), None, "hybrid", seed=2)
    table_run(tmp_path, "other", constructed(), None, "hybrid", seed=1, top_n=10)  # another config
    text = summary(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| hybrid")]
    assert len(rows) == 2
    (two,) = [r for r in rows if "top-20" in r]
    # success@1: 1/3 in both; success@3: 2/3 and 1 -> mean 5/6, sample std (1/3)/sqrt(2) = 0.2357;
    # turns to success: 2 and 7/3 -> 2.1667 +- 0.2357; seconds per session 0.5 and 1.0 -> 0.75.
    cells = [c.strip() for c in two.strip("|").split("|")]
    assert cells[2:9] == ["3", "2", "0.333 ± 0.000", "0.333 ± 0.000", "0.833 ± 0.236", "2.17 ± 0.24", "0.500 ± 0.000"]
    assert cells[-2:] == ["0.75", "`s1`, `s2`"]
    (one,) = [r for r in rows if "top-10" in r]
    assert "| 3 | 1 | 0.333 | 0.333 | 0.667 | 2.00 |" in one
    tex, _ = conversation_tex(tmp_path)
    assert r"hybrid (pop top-20 + LLM) & rule & 3 & 2 & 0.333\,{\tiny(0.000)} & 0.333\,{\tiny(0.000)} & 0.833\,{\tiny(0.236)} &" in tex
    # Two rows share the paper key (the top_n is not part of it): neither is named.
    assert not any("/hybrid-pop/" in k for k in paper_values(tmp_path))
    import shutil

    shutil.rmtree(tmp_path / "other")
    values = paper_values(tmp_path)
    assert values["conversation/ml-100k/loo/all/hybrid-pop/rule/success3"] == "0.833"
    assert values["conversation/ml-100k/loo/all/hybrid-pop/rule/turns"] == "2.17"
    assert values["conversation/ml-100k/loo/all/hybrid-pop/rule/seeds"] == "2"
    # Two runs of one config and seed: which one counts is not for the table to choose.
    table_run(tmp_path, "again", succeeds_everywhere(), None, "hybrid", seed=2)
    with pytest.raises(ConfigError, match="runs s2, again share one config and seed|runs again, s2 share one config"):
        summary(tmp_path)


def test_command_line_overrides_reach_the_main_config_and_the_first_stage():
    from benchmark.conversation.runner import compose_conversation

    cfg = compose_conversation(
        ["data=atomic", "data.path=/x", "model.train.max_epochs=5", "recommender.model=sasrec", "k=5"]
    )
    assert list(cfg.run_overrides) == ["data=ml-100k", "split=loo", "data=atomic", "data.path=/x"]
    assert list(cfg.recommender.model_overrides) == ["model.train.max_epochs=5"] and cfg.k == 5
    with pytest.raises(ConfigError, match="has no first-stage model"):
        compose_conversation(["recommender=llm", "model.train.max_epochs=5"])
    with pytest.raises(ConfigError, match="turnz"):
        compose_conversation(["turnz=3"])


COMMITTED = Path(__file__).resolve().parents[2] / "results" / "conversation"


def test_committed_runs_recompute_from_their_dialogues_and_match_the_summary():
    from benchmark.conversation.table import SUMMARY, summary

    runs = sorted(p.parent for p in COMMITTED.glob("*/record.json"))
    assert runs, "no committed conversation runs"
    for run in runs:
        record, sessions = read_conversation(run)
        bad = [row for row in recompute(record, sessions) if not row[3]]
        assert not bad, (run.name, bad)
        assert record["leakage"]["utterances_naming_target"] == 0
    assert summary(COMMITTED) == (COMMITTED / SUMMARY).read_text()


def test_the_readme_shows_the_committed_conversation_tables():
    from benchmark.conversation.table import END, START, readme_block

    readme = (COMMITTED.parents[1] / "README.md").read_text()
    assert readme[readme.index(START) + len(START) + 1 : readme.index(END)] == readme_block(COMMITTED)


def test_years_from_the_item_table():
    from benchmark.conversation.catalogue import _year

    assert [_year(v) for v in ("1995", "1995.0", 1987.0, "", None, float("nan"), "V", "12")] == [
        1995,
        1995,
        1987,
        -1,
        -1,
        -1,
        -1,
        -1,
    ]
