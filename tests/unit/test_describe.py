"""Generated item descriptions: the metadata check by hand, greedy generation cached by
generator/prompt/content, the side-table column every item text reads, bad settings."""

from __future__ import annotations

import pytest

from benchmark.config import to_object
from benchmark.errors import ConfigError
from benchmark.models.components.describe import (
    DescribeConfig,
    add_descriptions,
    describe_items,
    item_metadata,
    unsupported_facts,
)
from benchmark.models.components.text_encoder import item_descriptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unsupported_facts_by_hand():
    meta = [
        {"title": "A", "year": "1995", "genres": "Comedy Drama"},
        {"title": "B", "year": "1977", "genres": "Sci-Fi War"},
        {"title": "C", "year": "1990", "genres": "Thriller"},
    ]
    texts = [
        "A warm comedy from 1995 about a family.",  # fine: own genre, own year
        "A sci-fi war epic, later re-released in 1997.",  # year 1997 is not 1977
        "A tense drama with comedy moments.",  # drama and comedy are not C's genres
    ]
    out = unsupported_facts(texts, meta)
    assert (out["unsupported_genre"], out["unsupported_year"], out["unsupported_any"]) == (1, 1, 2)
    assert out["unsupported_share"] == pytest.approx(2 / 3, abs=1e-6)
    # "war" inside another word or "sci-fi" as a whole hyphenated genre are not separate mentions
    assert unsupported_facts(["A warrior's tale."], [{"title": "x", "year": "", "genres": "Thriller War"}])["unsupported_any"] == 0


def test_descriptions_are_greedy_cached_and_keyed_by_prompt(yesno_data, yesno_lm, tmp_path):
    ids = [str(i) for i in yesno_data.items.index[:5]]
    meta = item_metadata(yesno_data.items, yesno_data.item_fields, ids)
    cfg = DescribeConfig(name="tiny", generator=str(yesno_lm), max_new_tokens=6, batch_size=2)
    texts, facts = describe_items(cfg, ids, meta, tmp_path)
    assert facts["cache"] == "created" and len(texts) == 5 and facts["check"]["items"] == 5
    again, facts2 = describe_items(cfg, ids, meta, tmp_path)
    assert again == texts and facts2["cache"] == "hit" and facts2["key"] == facts["key"]
    other = DescribeConfig(name="tiny", generator=str(yesno_lm), prompt="Movie {title}:", max_new_tokens=6)
    _, facts3 = describe_items(other, ids, meta, tmp_path)
    assert facts3["key"] != facts["key"] and facts3["cache"] == "created"
    # a batch of one gives the same greedy text as the batch of two (left padding, real positions)
    single, _ = describe_items(DescribeConfig(name="t1", generator=str(yesno_lm), max_new_tokens=6, batch_size=1), ids, meta, tmp_path / "b1")
    assert single == texts


def test_description_key_follows_generator_weights_and_item_content(yesno_data, yesno_lm, tmp_path):
    from tests.unit.test_tallrec import make_tiny_lm, template_words

    ids = [str(i) for i in yesno_data.items.index[:4]]
    meta = item_metadata(yesno_data.items, yesno_data.item_fields, ids)
    cfg = DescribeConfig(name="tiny", generator=str(yesno_lm), max_new_tokens=4)
    _, base = describe_items(cfg, ids, meta, tmp_path)
    # another generator: same vocabulary, other weights (another seed), so only the weights differ in kind
    other_lm = make_tiny_lm(tmp_path / "other", template_words("tallrec") + [f"Title {i}" for i in range(30)], seed=4)
    _, by_weights = describe_items(DescribeConfig(name="tiny", generator=str(other_lm), max_new_tokens=4), ids, meta, tmp_path)
    assert by_weights["weights_sha256"] != base["weights_sha256"] and by_weights["key"] != base["key"]
    assert by_weights["cache"] == "created"
    # one item's title changes: a new key, nothing read from the old entry
    edited = [dict(m) for m in meta]
    edited[2]["title"] = edited[2]["title"] + " II"
    _, by_content = describe_items(cfg, ids, edited, tmp_path)
    assert by_content["key"] != base["key"] and by_content["cache"] == "created"
    # its genres or year alone change the key too; the unchanged metadata hits the first entry
    edited = [dict(m) for m in meta]
    edited[0]["year"] = "1901"
    assert describe_items(cfg, ids, edited, tmp_path)[1]["key"] != base["key"]
    assert describe_items(cfg, ids, meta, tmp_path)[1]["cache"] == "hit"


def test_descriptions_join_every_item_text_and_leave_the_dataset_fingerprint(yesno_data, yesno_lm, yesno_split, tmp_path):
    node = {"name": "tiny", "generator": str(yesno_lm), "max_new_tokens": 5}
    ids = [str(i) for i in yesno_split.item_ids]
    described, facts = add_descriptions(node, yesno_data, ids, tmp_path)
    assert described.fingerprint == yesno_data.fingerprint and "description" not in yesno_data.items.columns
    before = item_descriptions(yesno_data.items, yesno_data.item_fields, ids)
    after = item_descriptions(described.items, described.item_fields, ids)
    texts = described.items["description"].reindex(ids).tolist()
    assert all(a == (b + ". " + t if t else b) for a, b, t in zip(after, before, texts, strict=True))
    assert facts["generator"] == str(yesno_lm) and facts["decoding"].startswith("greedy")
    same, none = add_descriptions({"name": "none"}, yesno_data, ids, tmp_path)
    assert same is yesno_data and none is None


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="describe.prompt"):
        to_object({"name": "x", "prompt": "Describe {plot}"}, DescribeConfig, "describe")
    with pytest.raises(ConfigError, match="describe.max_new_tokens"):
        to_object({"name": "x", "max_new_tokens": 0}, DescribeConfig, "describe")


def test_description_bench_times_a_miss_then_a_hit_and_refuses_a_filled_store(yesno_data, yesno_lm, tmp_path, monkeypatch):
    from benchmark.bench import descriptions as bench

    monkeypatch.setattr(bench, "_config", lambda: DescribeConfig(name="tiny", generator=str(yesno_lm), max_new_tokens=4, batch_size=2))
    ids = [str(i) for i in yesno_data.items.index[:6]]
    texts, gen = bench.measure_generation(yesno_data, ids, tmp_path)
    assert gen["caches"] == ["created", "hit"] and gen["items"] == len(texts) == 6
    assert gen["miss_seconds"] > 0 and gen["hit_seconds"] > 0
    with pytest.raises(ConfigError, match="already holds these descriptions"):
        bench.measure_generation(yesno_data, ids, tmp_path)
