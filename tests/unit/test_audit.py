"""``llm4rec audit``'s checks on constructed splits whose answers are known by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmark.audit.external import read_files, read_index_file
from benchmark.audit.findings import Thresholds, default_thresholds
from benchmark.audit.identifiers import (
    AuditIndex,
    consecutive,
    id_codes,
    index_checks,
    p5_original_sequential,
    sequential_numbers,
)
from benchmark.audit.overlap import duplicates, labels, overlap, sampling
from benchmark.audit.report import audit_options, render, run_audit
from benchmark.audit.semantic import code_quality
from benchmark.audit.table import AuditData, Part, from_split
from benchmark.audit.timeline import timeline
from benchmark.errors import ConfigError, DataError

LIMITS = default_thresholds()


def make(parts: dict[str, list[tuple]], negatives=None, labels_of=None) -> AuditData:
    """AuditData from rows ``(user, item, time[, rating])`` with raw ids ``u<k>`` / ``i<k>``."""
    users = sorted({r[0] for rs in parts.values() for r in rs}, key=lambda s: int(s[1:]))
    items = sorted({r[1] for rs in parts.values() for r in rs}, key=lambda s: int(s[1:]))
    if negatives is not None:
        items = sorted(set(items) | {i for row in negatives[1] for i in row}, key=lambda s: int(s[1:]))
    u_of, i_of = {u: k for k, u in enumerate(users)}, {i: k for k, i in enumerate(items)}
    out = {}
    for name in ("train", "valid", "test"):
        rs = parts.get(name, [])
        out[name] = Part(
            np.array([u_of[r[0]] for r in rs], dtype=np.int64),
            np.array([i_of[r[1]] for r in rs], dtype=np.int64),
            np.array([r[2] for r in rs], dtype=float),
            np.array([r[3] if len(r) > 3 else 5.0 for r in rs], dtype=float),
            None if labels_of is None else np.array(labels_of[name], dtype=np.int8),
        )
    data = AuditData("constructed", "hand", np.array(users), np.array(items), out)
    if negatives is not None:
        data.negatives = (
            np.array([u_of[u] for u in negatives[0]]),
            np.array([[i_of[i] for i in row] for row in negatives[1]]),
        )
    return data


def finding(findings, check: str) -> dict:
    (f,) = [f for f in findings if f.check == check]
    return f


# ----------------------------------------------------------------------------- timeline


def test_a_planted_future_interaction_is_counted_for_every_test_row_it_follows():
    rows = {
        "train": [
            ("u0", "i0", 1),
            ("u0", "i1", 2),
            ("u1", "i2", 3),
            ("u1", "i3", 100),
        ],  # i3 at t=100: planted
        "test": [("u0", "i4", 10), ("u1", "i5", 11)],
    }
    figures, found = timeline(make(rows), LIMITS)
    assert figures["test"]["mean_over_rows"] == 0.25  # 1 of 4 train rows is later than each target
    assert figures["test"]["rows_with_later_train"] == 1.0
    assert figures["test"]["per_user"]["worst"] == [["u0", 0.25], ["u1", 0.25]]
    assert finding(found, "train_after_test").severity == "warning"
    # i4 first appears at t=10, after u0's history ends (t=2); i5 (t=11) does not follow u1's (t=100)
    assert figures["future_test_items"]["share"] == 0.5
    rows["train"][3] = ("u1", "i3", 4)  # no longer in the future
    figures, found = timeline(make(rows), LIMITS)
    assert figures["test"]["mean_over_rows"] == 0.0 and finding(found, "train_after_test").severity == "info"
    assert figures["future_test_items"]["share"] == 1.0  # both targets are items new after the histories


def test_without_timestamps_the_timeline_checks_do_not_apply():
    data = make({"train": [("u0", "i0", np.nan)], "test": [("u0", "i1", np.nan)]})
    figures, found = timeline(data, LIMITS)
    assert figures["applicable"] is False
    assert all(f.value is None and f.severity == "info" for f in found)


# ----------------------------------------------------------------------------- identifiers


def consecutive_case() -> tuple[AuditData, dict[str, str]]:
    data = make(
        {
            "train": [
                ("u0", "i0", 1),
                ("u0", "i1", 2),
                ("u1", "i2", 1),
                ("u1", "i3", 2),
                ("u2", "i4", 1),
                ("u2", "i0", 2),
            ],
            "test": [("u0", "i5", 3), ("u1", "i6", 3), ("u2", "i7", 3)],
        }
    )
    ids = {"i0": "10", "i1": "20", "i2": "30", "i3": "40", "i4": "50", "i5": "21", "i6": "60", "i7": "70"}
    return data, ids  # i5 = id(i1) + 1: u0's test target follows its last train item (planted)


def test_a_planted_consecutive_id_is_caught():
    data, ids = consecutive_case()
    index = AuditIndex("planted", [ids[i] for i in data.item_ids])
    figures, found = index_checks(data, index, LIMITS)
    assert figures["consecutive_test_ids"] == pytest.approx(1 / 3, abs=1e-6)
    assert figures["next_after_user_max"] == pytest.approx(1 / 3, abs=1e-6)
    assert figures["chance"] == 0.125
    assert finding(found, "consecutive_test_ids").severity == "error"
    ids["i5"] = "22"
    figures, found = index_checks(data, AuditIndex("clean", [ids[i] for i in data.item_ids]), LIMITS)
    assert (
        figures["consecutive_test_ids"] == 0.0 and finding(found, "consecutive_test_ids").severity == "info"
    )


def test_structured_ids_are_consecutive_with_the_same_prefix_and_the_next_last_code():
    kind, codes = id_codes(["<c0_1><c1_4>", "<c0_1><c1_5>", "<c0_2><c1_5>", "<c0_1><c1_5><c2_0>"])
    assert kind == "structured" and codes.shape == (4, 3)
    prev, target = np.array([0, 0, 0, -1]), np.array([1, 2, 3, 1])
    assert consecutive(codes, prev, target).tolist() == [True, False, False, False]
    assert id_codes(["Toy Story (1995)", "12"])[0] == "text"


def test_the_original_p5_sequential_index_is_caught_by_the_refit_and_the_order_checks():
    # Every user's items are new when the user's line is numbered: P5 gives the test item the
    # number right after the valid item's.
    rows = {"train": [], "valid": [], "test": []}
    for u in range(6):
        items = [f"i{4 * u + k}" for k in range(4)]
        rows["train"] += [(f"u{u}", items[0], 1), (f"u{u}", items[1], 2)]
        rows["valid"].append((f"u{u}", items[2], 3))
        rows["test"].append((f"u{u}", items[3], 4))
    rows["train"].append(("u5", "i0", 0))  # one item seen twice
    data = make(rows)
    leaky = AuditIndex("p5", p5_original_sequential(data))
    figures, found = index_checks(data, leaky, LIMITS)
    assert figures["refit"]["follows_sequential_all_parts"] == 1.0
    assert figures["refit"]["share"] > 0 and finding(found, "index_refit_changes").severity == "error"
    assert (
        figures["consecutive_test_ids"] == 1.0 and finding(found, "consecutive_test_ids").severity == "error"
    )
    clean = [str(x) if x else str(100 - k) for k, x in enumerate(sequential_numbers(data, ("train",)))]
    figures, found = index_checks(data, AuditIndex("train-only", clean), LIMITS)
    assert figures["refit"]["share"] == 0.0 and figures["consecutive_test_ids"] == 0.0


def test_the_train_only_numbering_is_the_frameworks_sequential_index(tmp_path):
    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split
    from benchmark.models.components.indexing import IndexConfig, build_index
    from tests.conftest import random_rows, write_atomic

    write_atomic(tmp_path / "tiny", "tiny", random_rows())
    data = load_dataset(DataConfig(name="tiny", source="atomic", path=str(tmp_path / "tiny")))
    split = build_split(data, SplitConfig(protocol="loo"))
    ours = np.array([int(t) for t in build_index(IndexConfig(scheme="sequential"), split, data, 0).texts])
    audited = from_split(split)
    numbers = sequential_numbers(audited, ("train",))
    trained = numbers > 0
    assert (numbers[trained] == ours[trained]).all()
    figures, found = index_checks(
        audited, AuditIndex("sequential", [str(x) for x in ours], scheme="sequential"), LIMITS
    )
    assert figures["refit"]["follows_sequential_train_only"] == 1.0 and figures["refit"]["share"] == 0.0


def test_built_indexes_are_refit_on_the_train_part_alone_without_a_change(tmp_path):
    from omegaconf import OmegaConf

    from benchmark.audit.report import built_indexes
    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split
    from tests.conftest import random_rows, write_atomic

    titles = {f"i{i}": f"Title {i % 50}" for i in range(60)}  # repeated titles: suffixes
    write_atomic(tmp_path / "tiny", "tiny", random_rows(), titles)
    data = load_dataset(
        DataConfig(name="tiny", source="atomic", path=str(tmp_path / "tiny"), item_fields={"title": "title"})
    )
    split = build_split(data, SplitConfig(protocol="loo", holdout_items=0.1))
    cfg = OmegaConf.create({"seed": 3, "model": {"module": {"indexing": {"n_clusters": 3, "max_leaf": 10}}}})
    indexes = built_indexes(cfg, split, data, ["random", "sequential", "collaborative", "title"])
    report = run_audit(from_split(split), indexes, LIMITS)
    for index in indexes:
        figures = report["sections"]["indexes"][index.name]
        assert figures["refit"]["share"] == 0.0, index.name
    assert "codes" not in report["sections"]["indexes"]["collaborative"]  # cluster paths, not codes


# ----------------------------------------------------------------------------- overlap, duplicates


def test_a_planted_duplicate_is_an_error_and_repeated_pairs_are_counted():
    rows = {
        "train": [("u0", "i0", 1, 4.0), ("u0", "i1", 2, 3.0), ("u0", "i1", 2, 3.0), ("u1", "i2", 1, 5.0)],
        "test": [("u0", "i0", 1, 4.0), ("u1", "i3", 2, 1.0)],  # (u0, i0, 1, 4.0) is a train row too
    }
    data = make(rows)
    figures, found = duplicates(data, LIMITS)
    assert figures["train"] == {"duplicate_rows": 1, "repeated_pairs": 1}
    assert figures["duplicate_rows"] == pytest.approx(1 / 6, abs=1e-6)
    assert figures["test_rows_in_train"] == 0.5 and finding(found, "test_rows_in_train").severity == "error"
    figures, found = overlap(data, LIMITS)
    assert figures["test_pairs_in_train"] == 0.5 and figures["test_targets_in_history"] == 0.5
    assert finding(found, "test_pairs_in_train").severity == "warning"
    rows["test"][0] = ("u0", "i0", 9, 4.0)  # the same pair later: a repeat, not a copied row
    figures, found = duplicates(make(rows), LIMITS)
    assert figures["test_rows_in_train"] == 0.0 and finding(found, "test_rows_in_train").severity == "info"


def test_held_out_items_in_train_are_an_error():
    data = make({"train": [("u0", "i0", 1), ("u0", "i1", 2)], "test": [("u0", "i2", 3)]})
    data.holdout_items = np.array([1])
    figures, found = overlap(data, LIMITS)
    assert (
        figures["holdout_items_in_train"] == 1
        and finding(found, "holdout_items_in_train").severity == "error"
    )


def test_negatives_the_user_interacted_with_are_caught():
    rows = {
        "train": [("u0", "i0", 1), ("u1", "i1", 1)],
        "valid": [("u0", "i2", 2)],
        "test": [("u0", "i3", 3), ("u1", "i4", 3)],
    }
    good = (["u0", "u1"], [["i5", "i6"], ["i0", "i5"]])  # i0 is u0's, not u1's
    figures, found = sampling(make(rows, negatives=good), LIMITS)
    assert (
        figures["negatives_interacted"] == 0.0 and finding(found, "negatives_interacted").severity == "info"
    )
    bad = (["u0", "u1"], [["i2", "i6"], ["i5", "i6"]])  # i2: u0's valid item
    figures, found = sampling(make(rows, negatives=bad), LIMITS)
    assert (
        figures["negatives_interacted"] == 0.25 and finding(found, "negatives_interacted").severity == "error"
    )


def test_label_balance_per_part_and_single_class_parts():
    rows = {
        "train": [("u0", "i0", 1), ("u0", "i1", 2), ("u1", "i0", 1), ("u1", "i2", 2)],
        "valid": [("u0", "i3", 3)],
        "test": [("u0", "i4", 4), ("u1", "i3", 4)],
    }
    data = make(rows, labels_of={"train": [1, 1, 1, 0], "valid": [1], "test": [1, 1]})
    figures, found = labels(data, LIMITS)
    assert [figures[p]["positive_share"] for p in ("train", "valid", "test")] == [0.75, 1.0, 1.0]
    assert figures["label_gap"] == 0.25 and figures["single_class_parts"] == ["valid", "test"]
    assert finding(found, "single_class_parts").severity == "error"
    assert finding(found, "label_gap").severity == "warning"
    ratings = make({k: [(*r, 4.0 if j % 2 else 2.0) for j, r in enumerate(v)] for k, v in rows.items()})
    ratings.label_threshold = 4.0  # label = rating >= 4
    figures, _ = labels(ratings, LIMITS)
    assert figures["train"]["positive_share"] == 0.5 and figures["test"]["positives"] == 1


# ----------------------------------------------------------------------------- semantic ids


def test_a_planted_collision_and_codebook_usage():
    ids = [
        "<s0_1><s1_2><s2_0>",
        "<s0_1><s1_2><s2_1>",
        "<s0_3><s1_0>",
        "<s0_0><s1_1>",
    ]  # items 0 and 1 collide
    index = AuditIndex(
        "sem", ids, refit=list(ids), scheme="semantic", facts={"options": {"levels": 2, "codebook": 4}}
    )
    figures, found = code_quality(index, id_codes(ids)[1], LIMITS)
    assert figures["collision_rate"] == 0.5 and figures["items_per_code"] == {"mean": 1.33333, "max": 2}
    level0 = figures["per_level"][0]
    assert (level0["used"], level0["dead"], level0["usage"]) == (3, 1, 0.75)
    assert level0["perplexity"] == pytest.approx(
        math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))), abs=1e-5
    )
    assert figures["dead_codes"] == 0.25 and figures["quantizer_saw_non_train"] == 0
    assert finding(found, "collision_rate").severity == "warning"
    index.refit = ids[:3] + ["<s0_2><s1_1>"]  # codes change when refit on train alone
    figures, found = code_quality(index, id_codes(ids)[1], LIMITS)
    assert (
        figures["quantizer_saw_non_train"] == 1
        and finding(found, "quantizer_saw_non_train").severity == "error"
    )


# ----------------------------------------------------------------------------- thresholds, report


def test_thresholds_are_validated_and_decide_the_verdict():
    with pytest.raises(ConfigError, match="audit.warn.train_after_test: a number >= 0"):
        Thresholds.from_mapping({"warn": {"train_after_test": -1}, "fail": {"train_after_test": None}})
    with pytest.raises(ConfigError, match="unknown key"):
        audit_options({"warn": {}, "fail": {}, "colour": 1})
    with pytest.raises(ConfigError, match="audit.indexes: unknown scheme"):
        audit_options({"indexes": ["sequentail"], "warn": {}, "fail": {}})
    data = make({"train": [("u0", "i0", 1), ("u1", "i1", 5)], "test": [("u0", "i2", 3)]})
    report = run_audit(data, [], LIMITS)
    assert report["passed"] and report["counts"]["error"] == 0
    strict = default_thresholds()
    strict.fail["train_after_test"] = 0.0
    report = run_audit(data, [], strict)
    assert not report["passed"] and render(report).splitlines()[1].startswith("ERROR   split")
    json.dumps(report)  # a plain JSON document


# ----------------------------------------------------------------------------- external files


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_p5_sequential_data_with_its_remapped_ids_is_caught(tmp_path):
    # P5's file: ids numbered over the whole sequences, so test = valid + 1 for new items.
    write(tmp_path / "p5" / "sequential_data.txt", "1 1 2 3 4\n2 5 6 7 8\n3 2 9 10 11\n")
    write(tmp_path / "p5" / "item_random_indexing.txt", "1 7\n2 3\n3 11\n4 1\n5 9\n")
    data, indexes = read_files(tmp_path / "p5")
    assert data.protocol == "p5" and data.stats()["train_rows"] == 6 and data.stats()["test_rows"] == 3
    assert [i.name for i in indexes] == ["file item ids", "item_random_indexing.txt"]
    report = run_audit(data, indexes, LIMITS)
    own = report["sections"]["indexes"]["file item ids"]
    assert own["consecutive_test_ids"] == 1.0 and own["refit"]["follows_sequential_all_parts"] == 1.0
    assert not report["passed"]
    assert report["sections"]["indexes"]["item_random_indexing.txt"]["missing_ids"] == pytest.approx(
        6 / 11, abs=1e-5
    )
    assert report["sections"]["timeline"]["applicable"] is False


TALLREC = (
    'User Preference: "A (1995)", "B (1996)"\nUser Unpreference: "C (1997)"\n'
    'Whether the user will like the target movie "{target}"?'
)


def tallrec_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    doc = [{"instruction": "Given ...", "input": TALLREC.format(target=t), "output": o} for t, o in rows]
    return write(path, json.dumps(doc))


def test_tallrec_json_labels_and_targets_in_history(tmp_path):
    tallrec_file(
        tmp_path / "t" / "train.json", [("D (1990)", "Yes."), ("E (1991)", "No."), ("F (1992)", "Yes.")]
    )
    tallrec_file(
        tmp_path / "t" / "test.json", [("B (1996)", "No."), ("G (1993)", "No.")]
    )  # B is in the history
    data, _ = read_files(tmp_path / "t")
    report = run_audit(data, [], LIMITS)
    sec = report["sections"]
    assert sec["overlap"]["test_targets_in_history"] == 0.5
    assert [sec["labels"][p]["positive_share"] for p in ("train", "test")] == [0.666667, 0.0]
    assert sec["labels"]["single_class_parts"] == ["test"] and not report["passed"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no known layout"),
        (
            {"train.tsv": "user\titem\n1\t2\n", "test.tsv": "user\titem\n1\n"},
            r"test.tsv: line 2: 1 fields, the header has 2",
        ),
        (
            {"train.tsv": "user\titem\ttimestamp\n1\t2\tx\n", "test.tsv": "user\titem\n1\t3\n"},
            "line 2: timestamp 'x' is not a number",
        ),
        (
            {"train.tsv": "usr\titem\n1\t2\n", "test.tsv": "user\titem\n1\t3\n"},
            r"missing column\(s\) \['user'\]",
        ),
        ({"train.tsv": "", "test.tsv": "user\titem\n"}, "empty file"),
        ({"sequential_data.txt": "1 2 3\n4\n"}, "line 2: expected 'user item1 item2 ...'"),
        ({"sequential_data.txt": "1 2 3\n1 4 5\n"}, "user '1' has more than one line"),
        ({"sequential_data.txt": "1 2 3\n", "negative_samples.txt": "9 1 2\n"}, "user '9' has no sequence"),
        (
            {"sequential_data.txt": "1 2 3\n", "item_x_indexing.txt": "2 5\n2 6\n"},
            "item '2' already has an id",
        ),
        ({"sequential_data.txt": "1 2 3\n", "item_x_indexing.txt": "2\n"}, "line 1: expected 'ITEM ID'"),
        ({"train.json": "{}", "test.json": "[]"}, "expected a JSON list"),
        ({"train.json": "[1, 2", "test.json": "[]"}, "not JSON"),
        (
            {"train.json": '[{"input": "x \\"A\\"", "output": "Maybe"}]', "test.json": "[]"},
            "neither 'Yes.' nor 'No.'",
        ),
        (
            {"train.json": '[{"input": "no title", "output": "Yes."}]', "test.json": "[]"},
            "no quoted target title",
        ),
    ],
)
def test_bad_layouts_are_one_line_errors(tmp_path, files, message):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, text in files.items():
        write(folder / name, text)
    with pytest.raises(DataError, match=message) as e:
        read_files(folder)
    assert "\n" not in str(e.value)


def test_missing_folder_file_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        read_files(tmp_path / "nope")
    write(tmp_path / "p" / "sequential_data.txt", "1 2 3\n")
    with pytest.raises(DataError, match="unknown layout 'p6'"):
        read_files(tmp_path / "p", "p6")
    with pytest.raises(DataError, match="train.tsv: missing"):
        read_files(tmp_path / "p", "export")
    with pytest.raises(DataError, match="no such file"):
        read_index_file(tmp_path / "none.txt", np.array(["1"]))


def test_an_exported_split_audits_like_the_split_itself(tmp_path):
    from benchmark.config import DataConfig, EvalConfig, SliceConfig, SplitConfig
    from benchmark.data.export import write_split_files
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split
    from benchmark.data.views import ranking_rows, sample_negatives
    from tests.conftest import random_rows, write_atomic

    write_atomic(tmp_path / "tiny", "tiny", random_rows())
    data = load_dataset(DataConfig(name="tiny", source="atomic", path=str(tmp_path / "tiny")))
    for protocol in ("loo", "temporal"):
        split = build_split(data, SplitConfig(protocol=protocol))
        out = tmp_path / protocol
        out.mkdir()
        ev = EvalConfig(protocol="sampled", num_negatives=5)
        write_split_files(split, out, ev, SliceConfig(), {"protocol": protocol})
        direct = from_split(split)
        rows = ranking_rows(split, "test")
        direct.negatives = (rows.users, sample_negatives(split, rows, 5, ev.negatives_seed))
        a = run_audit(direct, [], LIMITS)
        b = run_audit(read_files(out)[0], [], LIMITS)
        assert a["sections"] == b["sections"] and a["findings"] == b["findings"], protocol


# ----------------------------------------------------------------------------- record summary


def test_the_record_summary_is_recomputed_from_the_split_and_a_rebuilt_index(tmp_path):
    from benchmark.audit.summary import rebuilt_index, record_summary, summary_differences
    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split
    from benchmark.models.components.indexing import IndexConfig, build_index
    from tests.conftest import random_rows, write_atomic

    write_atomic(tmp_path / "tiny", "tiny", random_rows())
    data = load_dataset(DataConfig(name="tiny", source="atomic", path=str(tmp_path / "tiny")))
    split = build_split(data, SplitConfig(protocol="loo"))
    index = build_index(IndexConfig(scheme="sequential"), split, data, 4)
    summary = record_summary(split, index)
    assert summary["index"]["scheme"] == "sequential" and set(summary["split"]) >= {
        "train_after_test",
        "test_rows_in_train",
    }
    config = {"seed": 4, "model": {"module": {"indexing": {"scheme": "sequential"}}}}
    again = rebuilt_index(config, split)
    assert again == index.texts
    assert summary_differences(json.loads(json.dumps(summary)), split, again) == []
    tampered = json.loads(json.dumps(summary))
    tampered["split"]["future_test_items"] = 0.5
    assert summary_differences(tampered, split, again)[0].startswith("split.future_test_items: recorded 0.5")
    assert summary_differences({"version": 9}, split, None) == ["version: 9 is not 1"]
    assert (
        rebuilt_index({"seed": 4, "model": {"module": {"indexing": {"scheme": "semantic"}}}}, split) is None
    )
    assert rebuilt_index({"seed": 4, "model": "pop"}, split) is None
    with pytest.raises(ConfigError, match="model.module.indexing"):
        rebuilt_index({"seed": 1, "model": {"module": {"indexing": {"scheme": "random", "evil": 1}}}}, split)


def test_the_committed_audit_tables_are_generated_from_the_committed_reports():
    from benchmark.audit.committed import AUDITS, END, LEAKY, OUT, START, table

    root = Path(__file__).resolve().parents[2]
    reports = {n: json.loads((root / OUT / f"{n}.json").read_text()) for n in [*AUDITS, LEAKY]}
    text = table(reports)
    assert (root / OUT / "table.md").read_text() == text
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert readme.split(START, 1)[1].split(END, 1)[0] == "\n" + text
    leaky = reports[LEAKY]
    assert not leaky["passed"] and all(r["passed"] for n, r in reports.items() if n != LEAKY)
