"""Text metrics and grounding checks of explanations, against hand-computed values."""

from __future__ import annotations

import pytest

from benchmark.eval.grounding import Catalogue, agreement, check_explanation, grounding_metrics, title_aliases
from benchmark.eval.text_metrics import (
    bleu4,
    distinct_n,
    reference_free,
    rouge_means,
    rouge_rows,
    row_text_stats,
    seq_rep,
    words,
)

# ----------------------------------------------------------------------------- reference-free


def test_words_lower_case_letters_digits_and_inner_apostrophes():
    assert words("Because you LIKED Toy-Story (1995), don't you?") == [
        "because",
        "you",
        "liked",
        "toy",
        "story",
        "1995",
        "don't",
        "you",
    ]


def test_distinct_by_hand():
    texts = ["a b a", "b c"]  # unigrams a b a b c: 3 distinct of 5; bigrams ab ba bc: 3 of 3
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)
    assert distinct_n(texts, 2) == pytest.approx(1.0)
    assert distinct_n(["a", "b"], 2) is None  # no bigram at all: absent, not zero
    assert distinct_n([], 1) is None


def test_repetition_and_length_by_hand():
    assert seq_rep("a b a b") == pytest.approx(1 - 2 / 3)  # bigrams ab ba ab: 2 distinct of 3
    assert seq_rep("a b c") == 0.0
    assert seq_rep("a") is None
    assert row_text_stats("Because you liked Heat.") == {"length": 4, "rep2": 0.0}
    stats = reference_free(["a b a b", "a", ""])
    assert stats["length"] == pytest.approx((4 + 1 + 0) / 3)
    assert stats["rep2"] == pytest.approx(1 / 3)  # only the first text has bigrams
    assert stats["empty"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- reference-based


def test_bleu4_equals_sacrebleu_and_the_hand_computed_value():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog barked at the moon tonight"]
    refs = ["the cat sat on a mat", "the dog barked at the moon"]
    score, signature = bleu4(hyps, refs)
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert "nrefs:1" in signature and "tok:13a" in signature and "smooth:exp" in signature
    # one pair by hand: precisions 5/6, 3/5, 2/4, 1/3, equal lengths (brevity penalty 1)
    one, _ = bleu4(hyps[:1], refs[:1])
    assert one == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    same, _ = bleu4(["because you liked the same film"], ["because you liked the same film"])
    assert same == pytest.approx(100.0)


def test_rouge_by_hand():
    rows = rouge_rows(["the cat sat", "a b c d"], ["the cat ran", "a c"])
    # 1: unigrams the cat of 3/3 -> F 2/3; bigram "the cat" of 2/2 -> 1/2; LCS "the cat" -> 2/3
    assert rows[0] == pytest.approx({"rouge1": 2 / 3, "rouge2": 1 / 2, "rougeL": 2 / 3})
    # 2: P 2/4, R 2/2 -> F 2/3; no shared bigram -> 0; LCS "a c" -> 2/3
    assert rows[1] == pytest.approx({"rouge1": 2 / 3, "rouge2": 0.0, "rougeL": 2 / 3})
    assert rouge_means(rows) == pytest.approx({"rouge1": 2 / 3, "rouge2": 1 / 4, "rougeL": 2 / 3})


def test_reference_metrics_are_absent_without_references_not_zero():
    hyps = ["because you liked heat", "fargo is great"]
    assert bleu4(hyps, [None, None]) == (None, None)
    assert rouge_rows(hyps, [None, None]) == [None, None]
    assert rouge_means([None, None]) == {"rouge1": None, "rouge2": None, "rougeL": None}
    # a reference for one row: metrics over that row only
    score, _ = bleu4(hyps, ["because you liked heat", None])
    assert score == pytest.approx(100.0)
    assert rouge_rows(hyps, [None, "fargo is great"])[0] is None


def _tiny_bert(directory):
    """A random 2-layer BERT with a word-level vocabulary (slow and fast tokenizers), saved to ``directory``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "dog",
        "ran",
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(directory / "vocab.txt"), model_max_length=64).save_pretrained(directory)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(cfg).eval().save_pretrained(directory)
    return directory


def test_bertscore_equals_greedy_cosine_matching_by_hand(tmp_path, one_torch_thread):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from benchmark.eval.text_metrics import bertscore_rows

    enc = _tiny_bert(tmp_path / "bert")
    hyps, refs = ["the cat sat on the mat", "a dog ran"], ["the cat sat on a mat", None]
    scores, facts = bertscore_rows(hyps, refs, enc, layer=1)
    assert scores[1] is None and facts["encoder"] == str(enc) and facts["layer"] == 1
    assert (
        facts["idf"] is False
        and facts["rescale_with_baseline"] is False
        and facts["package"].startswith("bert-score==")
    )
    tok, model = AutoTokenizer.from_pretrained(enc), AutoModel.from_pretrained(enc).eval()

    def emb(text):  # layer-1 token embeddings without [CLS]/[SEP], L2-normalised
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = model(**ids, output_hidden_states=True).hidden_states[1][0, 1:-1]
        return torch.nn.functional.normalize(h, dim=-1)

    sim = emb(hyps[0]) @ emb(refs[0]).T  # [hyp tokens, ref tokens]
    p, r = sim.max(dim=1).values.mean(), sim.max(dim=0).values.mean()
    assert scores[0] == pytest.approx(float(2 * p * r / (p + r)), abs=1e-5)
    assert bertscore_rows(hyps, [None, None], enc, layer=1) == ([None, None], None)


# ----------------------------------------------------------------------------- grounding

TOY, GODFATHER, HEAT, STARWARS, TRIAD, FARGO = range(6)


@pytest.fixture(scope="module")
def cat():
    return Catalogue(
        titles=[
            "Toy Story",
            "Godfather, The",
            "Heat",
            "Star Wars",
            "Shanghai Triad (Yao a yao yao dao waipo qiao)",
            "Fargo",
        ],
        years=[1995, 1972, 1995, 1977, 1995, 1996],
        genres=[
            ("Animation", "Children's", "Comedy"),
            ("Action", "Crime", "Drama"),
            ("Action", "Crime", "Thriller"),
            ("Action", "Adventure", "Romance", "Sci-Fi", "War"),
            ("Drama",),
            ("Crime", "Drama", "Thriller"),
        ],
    )


def test_title_aliases():
    assert title_aliases("Godfather, The") == ["Godfather, The", "The Godfather"]
    assert title_aliases("Shanghai Triad (Yao a yao yao dao waipo qiao)")[1] == "Shanghai Triad"
    assert title_aliases("Toy Story") == ["Toy Story"]


def test_cited_history_title_with_a_true_genre_is_grounded(cat):
    r = check_explanation(
        cat, "Because you liked The Godfather (Crime), you may enjoy Fargo.", FARGO, {TOY, GODFATHER}
    )
    assert [(t["title"], t["kind"], t["ok"]) for t in r["titles"]] == [
        ("The Godfather", "history", True),
        ("Fargo", "item", True),
    ]
    assert r["titles"][0]["genres"] == [["Crime", True]]
    assert (r["claims"], r["unsupported"], r["grounded"], r["cites_history"]) == (
        2,
        0,
        True,
        True,
    )  # the item: no claim


def test_a_title_outside_the_history_and_an_unknown_quoted_title_are_unsupported(cat):
    r = check_explanation(cat, "Because you liked Star Wars, try Fargo.", FARGO, {TOY})
    assert r["titles"][0]["kind"] == "other" and not r["grounded"] and r["unsupported"] == 1
    r = check_explanation(cat, 'Fans of "Space Cowboys" will love Fargo.', FARGO, {TOY})
    assert r["titles"][0] == {"title": "Space Cowboys", "kind": "unknown", "ok": False}
    assert not r["grounded"] and not r["cites_history"]
    r = check_explanation(cat, 'You liked "Toy Story (1995)", so try Fargo.', FARGO, {TOY})
    assert r["titles"][0]["kind"] == "history" and r["grounded"]


def test_naming_the_item_is_no_claim_unless_the_user_is_said_to_have_liked_it(cat):
    r = check_explanation(cat, "We recommend Fargo to you.", FARGO, {TOY})
    assert r["titles"] == [{"title": "Fargo", "kind": "item", "ok": True}] and r["claims"] == 0
    r = check_explanation(cat, "Because you liked the movie Fargo, watch it again.", FARGO, {TOY})
    assert r["titles"][0]["kind"] == "item_as_history" and (r["claims"], r["unsupported"]) == (1, 1)


def test_attributes_belong_to_the_item_or_to_a_cited_history_title(cat):
    r = check_explanation(cat, "Try Fargo, a 1996 comedy with thrills.", FARGO, {TOY})
    assert r["years"] == [[1996, True]] and r["genres"] == [["Comedy", False]]
    assert (r["claims"], r["unsupported"], r["grounded"]) == (2, 1, False)  # year + genre
    r = check_explanation(cat, "You liked the comedy Toy Story, and Fargo is a thriller.", FARGO, {TOY})
    assert sorted(r["genres"]) == [["Comedy", True], ["Thriller", True]] and r["grounded"]
    r = check_explanation(cat, "Because you liked Toy Story (1994).", FARGO, {TOY})
    assert r["titles"][0]["years"] == [[1994, False]] and not r["grounded"]
    r = check_explanation(cat, "Watch it in 2020s style.", FARGO, set())  # a decade is no year claim
    assert r["years"] == [] and r["claims"] == 0 and r["grounded"]


def test_title_spans_are_not_read_as_genres_and_one_word_titles_need_context(cat):
    r = check_explanation(cat, "We recommend Star Wars (1977).", STARWARS, {TOY})
    assert r["genres"] == [] and r["titles"][0]["years"] == [[1977, True]]  # "Wars" is no "War" claim
    r = check_explanation(
        cat, "Heat is a thriller.", FARGO, {HEAT}
    )  # sentence-initial one-word title: a word
    assert r["titles"] == [] and r["genres"] == [["Thriller", True]]
    r = check_explanation(cat, "Because you liked Heat, try this.", FARGO, {HEAT})
    assert r["titles"][0]["kind"] == "history"
    r = check_explanation(cat, "A thriller starring Captain Heat Sparrow.", FARGO, set())  # part of a name
    assert r["titles"] == [] and r["grounded"]
    r = check_explanation(cat, 'You liked Heat in "Crime, Drama" (1995).', FARGO, {HEAT})  # quoted genres
    assert [t["title"] for t in r["titles"]] == ["Heat"] and r["genres"] == [["Crime", True], ["Drama", True]]
    assert r["years"] == [[1995, True]] and r["grounded"]  # 1995: the year of the cited Heat
    # an alias without the parenthesis
    r = check_explanation(cat, "Because you liked Shanghai Triad.", FARGO, {TRIAD})
    assert r["titles"][0]["kind"] == "history" and r["grounded"]


def test_grounding_metrics_and_judge_agreement_by_hand(cat):
    rows = [
        check_explanation(cat, "Because you liked Heat (Crime).", FARGO, {HEAT}),  # 2 claims, grounded
        check_explanation(cat, "Because you liked Star Wars.", FARGO, {HEAT}),  # 1 claim, unsupported
        check_explanation(cat, "A great pick.", FARGO, {HEAT}),  # no claim
    ]
    m = grounding_metrics(rows)
    assert m == pytest.approx(
        {
            "grounded": 2 / 3,
            "hallucination": 1 / 3,
            "hallucinated_rows": 1 / 3,
            "cites_history": 1 / 3,
            "claims": 1.0,
        }
    )
    assert set(grounding_metrics([]).values()) == {None}
    a = agreement([True, True, False, False], [True, False, False, False])
    assert a["accuracy"] == 0.75 and a["kappa"] == pytest.approx(0.5) and a["n"] == 4  # pe = .5*.25 + .5*.75
    assert agreement([True, True], [True, True])["kappa"] is None  # chance agreement 1: kappa undefined
    assert agreement([], []) == {"accuracy": None, "kappa": None, "n": 0}
