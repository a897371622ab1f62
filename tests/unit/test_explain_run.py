"""Explanation generators, the LLM judge, first-stage pairs, and a whole explanation run whose
metrics are recomputed from its stored file.

Language models are tiny random-init Llamas / T5s built here (``make_tiny_lm``), loaded by path;
the references come from a small synthetic review dataset the tests write (labelled synthetic).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.config import SplitConfig
from benchmark.data.atomic import read_atomic
from benchmark.data.splits import build_split
from benchmark.errors import ConfigError
from benchmark.eval.grounding import Catalogue
from benchmark.models.explainers import (
    DEFAULT_PROMPT,
    P5_EXPLANATION_PROMPT,
    ExplainRequest,
    LMExplainer,
    TemplateExplainer,
)
from benchmark.models.judge import RUBRIC, LMJudge
from benchmark.util import sha256_text
from tests.conftest import random_rows, write_atomic
from tests.unit.test_tallrec import make_tiny_lm

GENRES = ["Comedy", "Drama", "Horror", "Action"]
N_ITEMS = 30


def item_genres(i: int) -> list[str]:
    return [GENRES[i % 3]] + (["Action"] if i % 2 == 0 else [])


def write_review_dataset(directory: Path) -> tuple[Path, Path]:
    """An atomic dataset ``rev`` (12 users, 30 items with title, year, genres) and a JSON lines
    review file with one synthetic review per interaction."""
    rows = random_rows(n_users=12, n_items=N_ITEMS, per_user=10, seed=3)
    write_atomic(directory, "rev", rows)
    lines = ["item_id:token\ttitle:token_seq\tyear:float\tgenres:token_seq"]
    lines += [f"i{i}\tTitle {i}\t{1990 + i % 10}\t{' '.join(item_genres(i))}" for i in range(N_ITEMS)]
    (directory / "rev.item").write_text("\n".join(lines) + "\n")
    reviews = directory / "reviews.jsonl"
    with reviews.open("w") as f:
        for u, i, _, _ in rows:
            n = int(i[1:])
            f.write(
                json.dumps(
                    {
                        "reviewer": u,
                        "asin": i,
                        "body": f"Title {n} is a fun {GENRES[n % 3].lower()} movie. More text.",
                    }
                )
                + "\n"
            )
    return directory, reviews


@pytest.fixture(scope="module")
def review_data(tmp_path_factory):
    return write_review_dataset(tmp_path_factory.mktemp("rev"))


@pytest.fixture(scope="module")
def split_and_cat(review_data):
    data = read_atomic(review_data[0], "rev")
    split = build_split(data, SplitConfig(protocol="loo"))
    fields = {"title": "title", "year": "year", "genres": "genres"}
    return data, split, Catalogue.from_items(data.items, fields, split.item_ids)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    texts = [
        *DEFAULT_PROMPT.values(),
        RUBRIC,
        P5_EXPLANATION_PROMPT,
        "Explanation : Score : 0 1 2 3 4 5 6 7 8 9",
    ]
    texts += (
        [f"Title {i}" for i in range(N_ITEMS)]
        + GENRES
        + ["fun", "movie", "is", "a", "comedy", "drama", "horror"]
    )
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), texts)


@pytest.fixture(scope="module")
def cat():
    """Ten items: ``Title i``, year 1990 + i, genres :func:`item_genres`."""
    return Catalogue(
        [f"Title {i}" for i in range(10)],
        [1990 + i for i in range(10)],
        [tuple(item_genres(i)) for i in range(10)],
    )


def run_overrides(review_dir: Path) -> str:
    fields = ",".join(f'"+data.item_fields.{r}={r}"' for r in ("title", "year", "genres"))
    return f'run_overrides=["data=atomic","data.path={review_dir}","data.name=rev",{fields}]'


# ----------------------------------------------------------------------------- generators


def test_template_explainer_cites_a_liked_history_item_sharing_a_genre(cat):
    gen = TemplateExplainer(cat)
    # item 4: Drama + Action; history: 1 (Drama, liked), 3 (Comedy, liked), 6 (Comedy + Action, not liked)
    req = ExplainRequest("u0", 4, (1, 3, 6), (1, 1, 0))
    assert gen.pick(req) == (1, "Drama")
    assert gen.explain([req]) == ["Because you liked Title 1 (Drama)."]
    assert gen.explain([ExplainRequest("u0", 4, (3,), (1,))]) == [
        "Because you liked Title 3."
    ]  # no shared genre
    assert gen.explain([ExplainRequest("u0", 4, (), ())]) == ["Title 4 is popular with viewers like you."]
    assert gen.facts()["kind"] == "template"


def test_lm_explainer_zero_shot_prompt_decoding_and_facts(cat, tiny_lm, one_torch_thread):
    gen = LMExplainer(cat, backbone=str(tiny_lm), max_new_tokens=4, batch_size=2)
    reqs = [
        ExplainRequest("u0", 4, (1, 3), (1, 1)),
        ExplainRequest("u1", 5, (2,), (0,)),
        ExplainRequest("u2", 6, (), ()),
    ]
    out = gen.explain(reqs)
    assert len(out) == 3 and all(t.startswith("Because you liked") for t in out)
    assert gen.explain(reqs) == out  # greedy: the same text every time
    prompt = gen.prompt(reqs[0])  # no chat template: the plain layout, history newest first
    assert "Movies the user liked: Title 3 (1993), Title 1 (1991)." in prompt
    assert "Recommended movie: Title 4 (1994; Drama, Action)." in prompt and prompt.endswith(
        "Explanation: Because you liked"
    )
    facts = gen.facts()
    assert facts["name"] == f"{tiny_lm.name}-zeroshot" and facts["tuning"] is None
    assert facts["decoding"] == {
        "method": "greedy",
        "max_new_tokens": 4,
        "batch_size": 2,
        "postprocess": "first sentence",
    }
    assert facts["prompt"]["style"] == "chat" and facts["prompt"]["example"] == prompt
    assert facts["backbone"]["source"] == "local"


def test_generation_stops_a_row_once_its_first_sentence_is_complete(tiny_lm):
    import torch
    from transformers import AutoTokenizer

    from benchmark.models.explainers import _SentenceDone, first_sentence

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    rows = ["Title 3 is fun . Title", "Title 3 is fun .", "Title 3", "Score : 4"]
    ids = [tok(r)["input_ids"] for r in rows]
    width = max(map(len, ids))
    batch = torch.as_tensor([[0] * (width - len(i)) + i for i in ids])  # left-padded, no prompt
    assert _SentenceDone(tok, 0)(batch, None).tolist() == [True, False, False, False]
    assert first_sentence("Because you liked Heat. It is great") == "Because you liked Heat."
    assert first_sentence("  Because you liked\nHeat") == "Because you liked"


def test_lora_tuning_on_references_and_p5_t5_from_scratch(cat, tiny_lm, one_torch_thread):
    reqs = [ExplainRequest("u0", 4, (1, 3), (1, 1)), ExplainRequest("u1", 5, (2,), (0,))]
    examples = [
        (ExplainRequest("u3", 7, (2, 8), (1, 1)), "Title 7 is a fun drama movie."),
        (ExplainRequest("u4", 9, (1,), (1,)), "Title 9 is a fun comedy movie."),
    ]
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    gen = LMExplainer(
        cat,
        backbone=str(tiny_lm),
        max_new_tokens=3,
        prompt={"answer_prefix": ""},
        tune={"steps": 3, "lr": 1e-3, "batch_size": 2, "lora": lora},
    )
    gen.setup(reqs, examples)
    t = gen.tuning
    assert t["method"] == "lora" and t["steps"] == 3 and t["examples"] == 2 and t["lora"]["r"] == 2
    assert np.isfinite(t["loss_first"]) and 0 < t["trainable_params"] < sum(
        p.numel() for p in gen.model.parameters()
    )
    assert len(gen.explain(reqs)) == 2 and gen.label() == f"{tiny_lm.name}-tuned"
    with pytest.raises(ConfigError, match="reference texts"):
        LMExplainer(cat, backbone=str(tiny_lm), tune={"steps": 1}).setup(reqs, [])
    p5 = LMExplainer(
        cat, backbone="t5-tiny-scratch", max_new_tokens=6, tune={"steps": 3, "lr": 1e-3}, name="p5-t5"
    )
    p5.setup(reqs, examples)
    assert p5.kind == "seq2seq" and p5.tuning["method"] == "full (from scratch)"
    assert p5.prompt(reqs[0]) == "Generate an explanation for user_u0 about this product : Title 4"
    facts = p5.facts()
    assert facts["kind"] == "lm-seq2seq" and facts["prompt"]["template"] == P5_EXPLANATION_PROMPT
    assert all(isinstance(x, str) for x in p5.explain(reqs))


def test_judge_scores_with_a_recorded_rubric_and_model(cat, tiny_lm, one_torch_thread):
    judge = LMJudge(cat, model=str(tiny_lm), threshold=3.0, batch_size=2)
    reqs = [
        ExplainRequest("u0", 4, (1, 3), (1, 1)),
        ExplainRequest("u1", 5, (2,), (0,)),
        ExplainRequest("u2", 6, (), ()),
    ]
    out = judge.score(reqs, ["Because you liked Title 3 (Comedy).", "Because you liked Title 9.", "Fine."])
    for s in out:
        assert 1.0 <= s["score"] <= 5.0 and sum(s["probs"]) == pytest.approx(1.0, abs=1e-5)
        assert s["grounded"] == (s["score"] >= 3.0)
    assert judge.score(reqs[:1], ["Because you liked Title 3 (Comedy)."])[0] == out[0]  # no sampling
    facts = judge.facts()
    assert facts["rubric"] == RUBRIC and facts["rubric_sha256"] == sha256_text(RUBRIC)
    assert facts["model"]["backbone"] == str(tiny_lm) and facts["threshold"] == 3.0
    assert "Explanation: Because you liked Title 3 (Comedy)." in facts["example"]
    with pytest.raises(ConfigError, match="judge.rubric"):
        LMJudge(cat, model=str(tiny_lm), rubric="no fields")


# ----------------------------------------------------------------------------- pairs


def fake_first_stage(directory: Path, split, top: dict[str, str], fingerprint: str | None = None) -> Path:
    """A minimal full-ranking run folder whose ranked lists start with ``top[user]``."""
    directory.mkdir(parents=True)
    rec = {
        "run_id": "tiny-loo-full-pop-s0-00000000",
        "split": {"fingerprint": fingerprint or split.fingerprint},
        "eval": {"protocol": "full"},
        "model": {"name": "pop", "label": "pop"},
        "metrics": {},
    }
    (directory / "record.json").write_text(json.dumps(rec))
    lines = [{"user": u, "ranked": [i, "i0"]} for u, i in top.items()]
    (directory / "predictions.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())
    )
    return directory


def test_first_stage_top1_is_read_bounded_and_checked_against_the_split(split_and_cat, tmp_path):
    from benchmark.explain.pairs import first_stage_top1, pick_users

    _, split, _ = split_and_cat
    run = fake_first_stage(tmp_path / "fs", split, {"u1": "i7", "u2": "i9"})
    top, facts = first_stage_top1(run, split)
    user, item = list(split.user_ids), list(split.item_ids)
    assert top[user.index("u1")] == item.index("i7") and top[user.index("u2")] == item.index("i9")
    assert (top >= 0).sum() == 2 and facts["model"] == "pop" and facts["run_id"].startswith("tiny-")
    assert pick_users(top, split, None, 0).tolist() == sorted([user.index("u1"), user.index("u2")])
    assert (
        len(pick_users(top, split, 1, 0)) == 1
        and pick_users(top, split, 1, 0).tolist() == pick_users(top, split, 1, 0).tolist()
    )
    other = fake_first_stage(tmp_path / "other", split, {"u1": "i7"}, fingerprint="0" * 64)
    with pytest.raises(ConfigError, match="was made on split 000000000000"):
        first_stage_top1(other, split)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "record.json").write_text('{"predictions": {"file": "../../etc/passwd"}}')
    with pytest.raises(ConfigError, match="not a plain file name"):
        first_stage_top1(tmp_path / "bad", split)


# ----------------------------------------------------------------------------- a whole run


def test_run_with_references_stores_what_recomputes_its_metrics(
    review_data, tiny_lm, tmp_path, one_torch_thread
):
    from benchmark.explain.record import REFERENCE_METRICS, check_run, read_run
    from benchmark.explain.runner import compose_explain, explain
    from tests.unit.test_explain_metrics import _tiny_bert

    review_dir, reviews = review_data
    bert = _tiny_bert(tmp_path / "bert")
    cfg = compose_explain(
        [
            run_overrides(review_dir),
            "pairs.source=test_item",
            "users=6",
            "generator=template",
            f"judge.model={tiny_lm}",
            f'references={{file:"{reviews}",user:reviewer,item:asin,text:body}}',
            f"metrics.bertscore.model={bert}",
            "metrics.bertscore.layer=1",
            f"out={tmp_path / 'explain'}",
            "synthetic=true",
        ]
    )
    record, run_dir = explain(cfg)
    assert run_dir.name == record["run_id"] and record["run_id"].startswith(
        "rev-loo-explain-template-testitem-u6-s0-"
    )
    assert record["labels"] == {"synthetic": True, "leaderboard": False}
    m = record["metrics"]
    assert all(m[f"explain/{k}"] is not None for k in REFERENCE_METRICS)  # every pair has its review
    assert m["explain/grounded"] == 1.0 and m["explain/hallucination"] == 0.0  # the template is grounded
    assert (
        record["references"]["pairs_with_text"] == 120 and record["metric_facts"]["rows_with_reference"] == 6
    )
    assert record["metric_facts"]["bertscore"]["layer"] == 1 and record["metric_facts"]["bleu_signature"]
    assert record["judge"]["rubric_sha256"] == sha256_text(RUBRIC) and record["judge"]["model"][
        "backbone"
    ] == str(tiny_lm)
    assert record["timings"]["device"] == "cpu" and record["pairs"]["users"] == 6
    _, rows = read_run(run_dir)
    assert len(rows) == 6 and rows[0]["reference"].endswith("movie.") and rows[0]["judge"]["score"] >= 1
    diffs = check_run(run_dir, list(cfg.run_overrides))
    assert diffs and all(ok for *_, ok in diffs), [d for d in diffs if not d[3]]
    assert [d for d in diffs if d[0] == "checks"] == [("checks", 6, 6, True)]

    # a changed metric or a changed file is found
    rec_path = run_dir / "record.json"
    rec = json.loads(rec_path.read_text())
    rec["metrics"]["explain/distinct1"] += 0.01
    rec_path.write_text(json.dumps(rec))
    assert [k for k, *_, ok in check_run(run_dir, None) if not ok] == ["explain/distinct1"]
    lines = (run_dir / "explanations.jsonl").read_text().replace("Because", "Since", 1)
    (run_dir / "explanations.jsonl").write_text(lines)
    with pytest.raises(ConfigError, match="does not match the sha256"):
        read_run(run_dir)


def test_run_on_a_first_stage_without_references_has_null_reference_metrics(
    review_data, split_and_cat, tmp_path
):
    from benchmark.explain.record import REFERENCE_METRICS, check_run
    from benchmark.explain.runner import compose_explain, explain

    _, split, _ = split_and_cat
    fs = fake_first_stage(tmp_path / "fs", split, {u: "i3" for u in split.user_ids.tolist()})
    cfg = compose_explain(
        [
            run_overrides(review_data[0]),
            f"pairs.first_stage={fs}",
            "users=4",
            "judge=none",
            f"out={tmp_path / 'explain'}",
        ]
    )
    record, run_dir = explain(cfg)
    assert "-template-pop-u4-s0-" in record["run_id"] and record["pairs"]["first_stage"]["run_id"].startswith(
        "tiny-"
    )
    m = record["metrics"]
    assert all(m[f"explain/{k}"] is None for k in REFERENCE_METRICS)  # absent, not zero
    assert m["explain/judge"] is None and m["explain/judge_agreement"] is None and record["judge"] is None
    assert record["references"] is None and record["metric_facts"]["bertscore"] is None
    assert all(ok for *_, ok in check_run(run_dir, None))


def test_bad_explain_config_is_one_config_error(review_data):
    from benchmark.explain.runner import compose_explain

    with pytest.raises(ConfigError):
        compose_explain(["generator=nope"])
    with pytest.raises(ConfigError):
        compose_explain(["no_such_key=1"])


def test_committed_explanation_runs_recompute_and_match_the_readme_table():
    from benchmark.explain.record import check_run

    root = Path(__file__).resolve().parents[2]
    runs = sorted(p for p in (root / "results" / "explain").iterdir() if p.is_dir())
    assert {r.name.split("-explain-")[1].split("-")[0] for r in runs} >= {"template", "smollm2"}
    readme = (root / "README.md").read_text(encoding="utf-8")
    for run_dir in runs:
        diffs = check_run(run_dir)  # bundled ML-100K: the grounding of every line is re-run too
        assert all(ok for *_, ok in diffs), [d for d in diffs if not d[3]]
        assert {d[0] for d in diffs} >= {"split", "checks", "explain/grounded"}
        rec = json.loads((run_dir / "record.json").read_text())
        assert (
            rec["labels"] == {"synthetic": False, "leaderboard": False} and rec["timings"]["device"] == "cpu"
        )
        assert (
            rec["judge"]["rubric_sha256"] == sha256_text(RUBRIC) and rec["metrics"]["explain/bleu4"] is None
        )
        m = rec["metrics"]
        row = f"| {m['explain/grounded']:.3f} | {m['explain/hallucination']:.3f} | {m['explain/hallucinated_rows']:.2f} |"
        assert row in readme, row
