"""Split export: any raw id survives the trip through the exported files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.config import EvalConfig, SliceConfig, SplitConfig
from benchmark.data.export import escape_id, read_split_tsv, unescape_id, write_split_files
from benchmark.data.interactions import Interactions
from benchmark.data.splits import PARTS, build_split
from benchmark.data.views import ranking_rows, sample_negatives

HOSTILE = [
    "plain",
    "with space",
    "tab\there",
    'quote"d',
    '"leading quote',
    "line\nbreak",
    "cr\rlf\r\n",
    "comma,separated",
    "back\\slash",
    "\\s",  # looks like an escape already
    "\\u0041",
    "trailing\\",
    "  ",  # blank (the atomic reader refuses it; the export must still carry it)
    "unicode é 漢字",
    "sep\u2028\u2029\x85",
    "ctl\x01\x1f\x7f",
]


def test_escape_round_trips_and_leaves_plain_ids_alone():
    rng = random.Random(0)
    alphabet = "ab \t\n\r\"',\\su0\x00\x1f\x85\u2028é"
    ids = HOSTILE + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(500)]
    for raw in ids:
        text = escape_id(raw)
        assert unescape_id(text) == raw, (raw, text)
        # nothing in an escaped id can split a line, a field or a list, or start CSV quoting
        assert not any(c in text for c in ' \t\n\r"') and len(("x" + text + "x").splitlines()) == 1
    for plain in ("196", "B00012345", "item-7", "ñandú", "a,b", "x'y"):
        assert escape_id(plain) == plain
    assert escape_id("a b\tc") == "a\\sb\\tc" and escape_id('q"\\') == "q\\u0022\\\\"


@pytest.mark.parametrize("text", ["a\\", "a\\q", "a\\u12", "\\x41", 'a\\"'])
def test_unescape_refuses_what_escape_never_writes(text):
    with pytest.raises(ValueError, match="escape|backslash"):
        unescape_id(text)


def _hostile_data() -> Interactions:
    """Six users with eight rated items each; ids from HOSTILE; distinct timestamps."""
    users = HOSTILE[:6]
    items = HOSTILE[4:16]  # overlaps the user ids on purpose
    rows = []
    for u, user in enumerate(users):
        for k in range(8):
            item = items[(u + k) % len(items)]
            rows.append((user, item, float(1 + (u * 3 + k) % 5), float(100 * u + k)))
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return Interactions(name="hostile", inter=inter, items=pd.DataFrame(), users=pd.DataFrame())


def _check_lines(path: Path, n_rows: int) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == n_rows + 2  # header + rows + the final line end
    n_tabs = lines[0].count("\t")
    assert all(line.count("\t") == n_tabs for line in lines[:-1])
    assert len(text.splitlines()) == n_rows + 1  # safe for str.splitlines() as well


def test_split_files_round_trip_hostile_ids(tmp_path: Path):
    split = build_split(_hostile_data(), SplitConfig(protocol="loo"))
    ev = EvalConfig(protocol="sampled", num_negatives=3)
    write_split_files(split, tmp_path, ev, SliceConfig(), meta={})
    for part in PARTS:
        df = split.parts[part]
        got = read_split_tsv(tmp_path / f"{part}.tsv")
        want = list(zip(split.user_ids[df["user"]], split.item_ids[df["item"]], strict=True))
        assert [(r["user"], r["item"]) for r in got] == want and len(want) > 0
        assert [float(r["timestamp"]) for r in got] == df["timestamp"].tolist()
        assert [float(r["rating"]) for r in got] == df["rating"].tolist()
        _check_lines(tmp_path / f"{part}.tsv", len(df))
    slices = read_split_tsv(tmp_path / "test_slices.tsv")
    test = split.test
    assert [(r["user"], r["item"]) for r in slices] == list(
        zip(split.user_ids[test["user"]], split.item_ids[test["item"]], strict=True)
    )
    rows = ranking_rows(split, "test")
    neg = sample_negatives(split, rows, 3, 0)
    got = read_split_tsv(tmp_path / "test_negatives.tsv")
    assert [r["user"] for r in got] == split.user_ids[rows.users].tolist()
    assert [r["negatives"] for r in got] == [split.item_ids[n].tolist() for n in neg]
    assert all(len(r["negatives"]) == 3 for r in got)
    _check_lines(tmp_path / "test_negatives.tsv", len(got))


def test_sequence_histories_round_trip_hostile_ids(tmp_path: Path):
    cfg = SplitConfig(protocol="tallrec_movie", history=2, keep_last=1000, ratios=[0.5, 0.25, 0.25])
    split = build_split(_hostile_data(), cfg)
    write_split_files(split, tmp_path, EvalConfig(protocol="labeled", valid_metric="auc"), SliceConfig(), {})
    for part in PARTS:
        df = split.parts[part]
        got = read_split_tsv(tmp_path / f"{part}.tsv")
        assert [r["history"] for r in got] == [split.item_ids[list(h)].tolist() for h in df["history"]]
        assert [r["history_likes"] for r in got] == [[str(x) for x in h] for h in df["history_likes"]]
        assert [int(r["label"]) for r in got] == df["label"].tolist()
        assert all(len(r["history"]) == 2 for r in got) and len(got) > 0
        _check_lines(tmp_path / f"{part}.tsv", len(df))


def test_export_split_from_an_atomic_file_with_spaces_quotes_and_commas(tmp_path: Path):
    from benchmark.compose import compose
    from benchmark.data.export import export_split

    ids = ["the item", 'say "hi"', "a,b", "back\\slash", "\\t", "x  y", "plain", "é ü"]
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    pairs = set()
    for u in range(5):
        user = f"user {u}" if u % 2 else f'"u{u}'
        for k in range(6):
            item = ids[(u + k) % len(ids)]
            lines.append(f"{user}\t{item}\t{1 + k % 5}\t{10 * u + k}")
            pairs.add((user, item))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "sp.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "export"
    overrides = [
        "data=atomic",
        f"data.path={data_dir}",
        "data.name=sp",
        "eval=sampled",
        "eval.num_negatives=2",
    ]
    export_split(compose(overrides), out)
    got = [(r["user"], r["item"]) for part in PARTS for r in read_split_tsv(out / f"{part}.tsv")]
    assert sorted(got) == sorted(pairs)
    negatives = read_split_tsv(out / "test_negatives.tsv")
    assert len(negatives) == 5 and all(len(r["negatives"]) == 2 for r in negatives)
    seen = {u: {i for uu, i in pairs if uu == u} for u, _ in pairs}
    for r in negatives:  # catalogue ids the user never rated
        assert set(r["negatives"]) <= set(ids) and not set(r["negatives"]) & seen[r["user"]]


def test_read_split_tsv_names_a_short_row(tmp_path: Path):
    (tmp_path / "t.tsv").write_text("user\titem\nu1\n")
    with pytest.raises(ValueError, match="line 2: 1 fields, the header has 2"):
        read_split_tsv(tmp_path / "t.tsv")


def test_plain_ids_are_written_unchanged(tmp_path: Path):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", 3.0, float(t)) for t, (u, i) in enumerate(rng.integers(0, 9, size=(60, 2)))]
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).drop_duplicates(
        ["user", "item"]
    )
    data = Interactions(
        name="p", inter=inter.reset_index(drop=True), items=pd.DataFrame(), users=pd.DataFrame()
    )
    split = build_split(data, SplitConfig(protocol="loo"))
    write_split_files(split, tmp_path, EvalConfig(), SliceConfig(), {})
    body = (tmp_path / "train.tsv").read_text().split("\n")[1:-1]
    df = split.train
    assert [line.split("\t")[:2] for line in body] == [
        [split.user_ids[u], split.item_ids[i]] for u, i in zip(df["user"], df["item"], strict=True)
    ]
