"""The atomic-file reader and its one-line errors for bad input."""

from pathlib import Path

import pytest

from benchmark.data.atomic import read_atomic
from benchmark.errors import DataError
from tests.conftest import write_atomic


def test_reads_interactions_items_and_hashes(tiny_dir):
    d = read_atomic(tiny_dir, "tiny")
    assert list(d.inter.columns) == ["user", "item", "rating", "timestamp"]
    assert len(d.inter) == 40 * 12
    assert d.items.loc["i3", "title"] == "Title 3"
    assert set(d.files) == {"tiny.inter", "tiny.item"} and len(d.fingerprint) == 64


def test_bundled_movielens_is_read_in_place():
    from benchmark.config import DataConfig
    from benchmark.data.loading import dataset_dir, load_dataset

    cfg = DataConfig(name="ml-100k", source="bundled", item_fields={"title": "movie_title"})
    assert "recbole" in str(dataset_dir(cfg))
    d = load_dataset(cfg)
    assert d.stats()["interactions"] == 100_000 and d.stats()["users"] == 943 and d.stats()["items"] == 1682
    assert d.items.loc["1", "movie_title"] == "Toy Story"


@pytest.mark.parametrize(
    "header,body,match",
    [
        (
            "user_id:token\titem_id\trating:float\ttimestamp:float",
            "a\tb\t1\t1",
            "malformed header field 'item_id'",
        ),
        ("user_id:token\titem_id:token\ttimestamp:float", "a\tb\t1", "missing field 'rating'"),
        (
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "a\tb\tfive\t1",
            "line 2: field 'rating' value 'five'",
        ),
        ("user_id:token\titem_id:token\trating:float\ttimestamp:float", "", "no interactions"),
        (
            "user_id:token\titem_id:token\trating:token\ttimestamp:float",
            "a\tb\t1\t1",
            "must be of type float",
        ),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, header, body, match):
    (tmp_path / "d.inter").write_text(header + "\n" + (body + "\n" if body else ""))
    with pytest.raises(DataError, match=match) as e:
        read_atomic(tmp_path, "d")
    assert "\n" not in str(e.value) and "d.inter" in str(e.value)


def test_missing_file_names_it(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.inter: file not found"):
        read_atomic(tmp_path, "nope")


def test_missing_item_field_names_it(tmp_path: Path):
    write_atomic(tmp_path / "d", "d", [("a", "x", 1, 1)], {"x": "X"})
    with pytest.raises(DataError, match="missing item field 'movie_title'"):
        read_atomic(tmp_path / "d", "d", item_fields={"title": "movie_title"})


def test_benchmark_results_are_written_whole_or_not_at_all(tmp_path):
    import json
    import stat

    from benchmark.bench import write_result

    path = write_result(tmp_path / "perf" / "x.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(TypeError):
        write_result(path, {"a": object()})  # not JSON: the earlier result stays, no temp file left
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


# --------------------------------------------------------------------------- untrusted atomic files

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _one_line_error(directory: Path, name: str = "d", **kwargs) -> str:
    with pytest.raises(DataError) as e:
        read_atomic(directory, name, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


# Rows of a file with repeated pairs; line numbers in comments (the header is line 1).
DUP_ROWS = [
    ("a", "x", 3, 20),  # line 2
    ("b", "y", 4, 5),  # line 3
    ("a", "x", 5, 30),  # line 4
    ("a", "x", 5, 25),  # line 5
    ("a", "x", 1, 10),  # line 6
    ("c", "z", 2, 7),  # line 7
    ("c", "z", 4, 7),  # line 8: same time as line 7
]


def test_duplicate_pairs_are_an_error_by_default(tmp_path: Path):
    write_atomic(tmp_path, "d", DUP_ROWS)
    msg = _one_line_error(tmp_path)
    assert "d.inter: line 4:" in msg and "('a', 'x')" in msg and "also on line 2" in msg
    assert "data.duplicates" in msg


@pytest.mark.parametrize(
    "rule,kept",
    [
        # earliest timestamp; a tie goes to the earlier line
        ("first", [("b", "y", 4.0, 5.0), ("a", "x", 1.0, 10.0), ("c", "z", 2.0, 7.0)]),
        # latest timestamp; a tie goes to the later line
        ("last", [("b", "y", 4.0, 5.0), ("a", "x", 5.0, 30.0), ("c", "z", 4.0, 7.0)]),
        # highest rating; a tie goes to the earliest timestamp (25 before 30)
        ("max_rating", [("b", "y", 4.0, 5.0), ("a", "x", 5.0, 25.0), ("c", "z", 4.0, 7.0)]),
    ],
)
def test_duplicate_rules_keep_one_row_per_pair_in_file_order(tmp_path: Path, rule, kept):
    write_atomic(tmp_path, "d", DUP_ROWS)
    d = read_atomic(tmp_path, "d", duplicates=rule)
    assert list(d.inter.itertuples(index=False, name=None)) == kept
    assert d.duplicates_removed == 4  # three extra (a, x) rows, one extra (c, z) row
    assert d.stats()["duplicates_removed"] == 4 and d.stats()["interactions"] == 3


def test_max_rating_without_ratings_is_refused(tmp_path: Path):
    write_atomic(tmp_path, "d", DUP_ROWS)
    assert "needs a rating field" in _one_line_error(tmp_path, rating_field=None, duplicates="max_rating")
    assert "unknown rule 'mean'" in _one_line_error(tmp_path, duplicates="mean")


def test_without_timestamps_first_and_last_follow_the_file(tmp_path: Path):
    write_atomic(tmp_path, "d", DUP_ROWS)
    first = read_atomic(tmp_path, "d", timestamp_field=None, duplicates="first")
    last = read_atomic(tmp_path, "d", timestamp_field=None, duplicates="last")
    assert first.inter["rating"].tolist() == [3.0, 4.0, 2.0]  # lines 2, 3, 7
    assert last.inter["rating"].tolist() == [4.0, 1.0, 4.0]  # lines 3, 6, 8


def test_duplicates_option_is_checked_and_reaches_the_reader(tmp_path: Path):
    from benchmark.config import DataConfig
    from benchmark.data.loading import load_dataset
    from benchmark.errors import ConfigError

    write_atomic(tmp_path, "d", DUP_ROWS)
    with pytest.raises(ConfigError, match="data.duplicates: unknown rule 'keep'"):
        DataConfig(name="d", source="atomic", path=str(tmp_path), duplicates="keep")
    with pytest.raises(ConfigError, match="data.duplicates=max_rating needs data.rating_field"):
        DataConfig(name="d", source="atomic", path=str(tmp_path), rating_field=None, duplicates="max_rating")
    assert DataConfig().duplicates == "error"
    with pytest.raises(DataError, match="line 4"):
        load_dataset(DataConfig(name="d", source="atomic", path=str(tmp_path)))
    d = load_dataset(DataConfig(name="d", source="atomic", path=str(tmp_path), duplicates="last"))
    assert d.stats()["duplicates_removed"] == 4 and len(d.inter) == 3


@pytest.mark.slow  # a whole (tiny) run: tens of seconds on a busy 2-core machine
def test_duplicate_count_goes_into_the_run_record(tmp_path: Path, one_torch_thread):
    import json

    from benchmark.cli import main
    from tests.conftest import random_rows

    rows = random_rows(n_users=12, n_items=20, per_user=6)
    rows += [(u, i, 1, t + 0.5) for u, i, _, t in rows[:5]]  # 5 repeated pairs, half a second later
    write_atomic(tmp_path / "dup", "dup", rows)
    args = [
        "run",
        "model=pop",
        "data=atomic",
        f"data.path={tmp_path / 'dup'}",
        "data.name=dup",
        "logger=none",
    ]
    args += [
        f"paths.results={tmp_path / 'res'}",
        f"paths.outputs={tmp_path / 'out'}",
        "data.duplicates=first",
    ]
    main(args)
    (record,) = (tmp_path / "res" / "runs").glob("*/record.json")
    rec = json.loads(record.read_text())
    assert rec["dataset"]["stats"]["duplicates_removed"] == 5
    assert rec["dataset"]["stats"]["interactions"] == 12 * 6
    assert rec["config"]["data"]["duplicates"] == "first"


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("column", [2, 3])
def test_non_finite_numbers_name_file_line_and_field(tmp_path: Path, value, column):
    row = ["b", "y", "4", "9"]
    row[column] = value
    _write(tmp_path / "d.inter", f"{HEADER}\na\tx\t3\t1\n" + "\t".join(row) + "\n")
    field = "rating" if column == 2 else "timestamp"
    assert f"d.inter: line 3: field '{field}' value '{value}' is not a finite number" in _one_line_error(
        tmp_path
    )


def test_nan_is_not_a_number(tmp_path: Path):
    _write(tmp_path / "d.inter", f"{HEADER}\na\tx\t3\tnan\n")
    assert "line 2: field 'timestamp' value 'nan' is not a number" in _one_line_error(tmp_path)


@pytest.mark.parametrize(
    "body,match",
    [
        ("a\tx\t3\t1\n\ty\t3\t2\n", "line 3: field 'user_id' is empty"),
        ("a\tx\t3\t1\nb\t  \t3\t2\n", "line 3: field 'item_id' is empty"),
    ],
)
def test_empty_ids_are_refused(tmp_path: Path, body, match):
    _write(tmp_path / "d.inter", HEADER + "\n" + body)
    assert match in _one_line_error(tmp_path)


def test_empty_id_in_a_side_table_is_refused(tmp_path: Path):
    write_atomic(tmp_path, "d", [("a", "x", 1, 1)])
    _write(tmp_path / "d.item", "item_id:token\ttitle:token_seq\nx\tX\n\tnameless\n")
    assert "d.item: line 3: field 'item_id' is empty" in _one_line_error(tmp_path)
    _write(tmp_path / "d.item", "item_id:token\ttitle:token_seq\nx\tX\nx\tagain\n")
    assert "d.item: line 3: duplicate item id 'x'" in _one_line_error(tmp_path)


def test_a_byte_order_mark_is_stripped(tmp_path: Path):
    rows = [("a", "x", 3, 1), ("b", "y", 4, 2)]
    plain = read_atomic(write_atomic(tmp_path / "plain", "d", rows), "d")
    bom = tmp_path / "bom"
    bom.mkdir()
    (bom / "d.inter").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain" / "d.inter").read_bytes())
    got = read_atomic(bom, "d")
    assert got.inter.equals(plain.inter) and list(got.inter["user"]) == ["a", "b"]


def test_crlf_line_ends_read_like_lf(tmp_path: Path):
    rows = [("a", "x", 3, 1), ("b", "y", 4, 2)]
    plain = read_atomic(write_atomic(tmp_path / "plain", "d", rows), "d")
    crlf = tmp_path / "crlf" / "d.inter"
    _write(crlf, (tmp_path / "plain" / "d.inter").read_bytes().replace(b"\n", b"\r\n"))
    assert read_atomic(crlf.parent, "d").inter.equals(plain.inter)


@pytest.mark.parametrize(
    "header,match",
    [
        (
            "user_id:int\titem_id:token\trating:float\ttimestamp:float",
            "line 1: malformed header field 'user_id:int'",
        ),
        (":token\titem_id:token\trating:float\ttimestamp:float", "line 1: malformed header field ':token'"),
        ("user_id:token\tuser_id:token\trating:float\ttimestamp:float", "field name 'user_id' appears twice"),
        (
            "user_id:float\titem_id:token\trating:float\ttimestamp:float",
            "field 'user_id' must be of type token",
        ),
        ("user_id:token\trating:float\ttimestamp:float", "missing field 'item_id'"),
    ],
)
def test_bad_headers_give_one_line_errors(tmp_path: Path, header, match):
    n = header.count("\t") + 1
    _write(tmp_path / "d.inter", header + "\n" + "\t".join(["1"] * n) + "\n")
    msg = _one_line_error(tmp_path)
    assert match in msg and "d.inter" in msg


@pytest.mark.parametrize(
    "body,match",
    [
        (b"a\tx\t3\t1\nb\ty\t3\n", "line 3: 3 tab-separated field(s), the header has 4"),
        (b"a\tx\t3\t1\nb\ty\t3\t2\t9\n", "line 3: 5 tab-separated field(s), the header has 4"),
        (b"a\tx\t3\t1\n\nb\ty\t3\t2\n", "line 3: empty line"),
        (b"a\tx\t3\t1\nb\ty\t3\t2\n\n", "line 4: empty line"),
        (b"a\tx\t3\t1\nb\ty\x00z\t3\t2\n", "line 3: NUL byte"),
        (b"a\tx\t3\t1\nb\ty\rz\t3\t2\n", "line 3: carriage return inside a line"),
        (b"a\tx\t3\t1\nb\t\xff\t3\t2\n", "line 3: not UTF-8 text"),
        (b"a\tx\t3\t1\nb\ty\t3\t2", None),  # no line end after the last line: fine
    ],
)
def test_malformed_lines_give_one_line_errors(tmp_path: Path, body, match):
    _write(tmp_path / "d.inter", HEADER.encode() + b"\n" + body)
    if match is None:
        assert read_atomic(tmp_path, "d").inter["user"].tolist() == ["a", "b"]
    else:
        msg = _one_line_error(tmp_path)
        assert match in msg and "d.inter" in msg, msg


def test_a_huge_line_is_refused_without_reading_it_whole(tmp_path: Path):
    from benchmark.data.atomic import MAX_LINE_BYTES

    _write(tmp_path / "d.inter", f"{HEADER}\na\tx\t3\t1\nb\t{'y' * MAX_LINE_BYTES}\t3\t2\n")
    assert f"line 3: longer than {MAX_LINE_BYTES} bytes" in _one_line_error(tmp_path)
    _write(tmp_path / "d.inter", "u" * (3 * MAX_LINE_BYTES))  # no line end at all
    assert f"line 1: longer than {MAX_LINE_BYTES} bytes" in _one_line_error(tmp_path)


def test_line_numbers_hold_across_read_blocks(tmp_path: Path, monkeypatch):
    import benchmark.data.atomic as atomic

    monkeypatch.setattr(atomic, "_BLOCK", 7)  # lines straddle many blocks
    rows = [(f"u{k}", f"i{k}", 3, k) for k in range(40)]
    write_atomic(tmp_path, "d", rows)
    assert read_atomic(tmp_path, "d").inter["user"].tolist() == [f"u{k}" for k in range(40)]
    text = (tmp_path / "d.inter").read_text().splitlines()
    text[30] += "\textra"  # line 31
    _write(tmp_path / "d.inter", "\n".join(text) + "\n")
    assert "line 31: 5 tab-separated field(s)" in _one_line_error(tmp_path)
    monkeypatch.setattr(atomic, "MAX_LINE_BYTES", 12)
    assert "line 1: longer than 12 bytes" in _one_line_error(tmp_path)


def test_a_directory_where_the_file_should_be(tmp_path: Path):
    (tmp_path / "d.inter").mkdir()
    assert "d.inter: is a directory" in _one_line_error(tmp_path)


def test_ml100k_has_no_duplicates_and_keeps_its_fingerprints():
    """The committed ml-100k runs: same dataset and split fingerprints with the duplicate check."""
    import json

    from benchmark.config import DataConfig, SplitConfig
    from benchmark.data.loading import load_dataset
    from benchmark.data.splits import build_split

    root = Path(__file__).resolve().parents[2] / "results" / "runs"
    (run,) = sorted(root.glob("ml-100k-loo-full-bpr-s1-*/record.json"))[:1]
    rec = json.loads(run.read_text())
    data = load_dataset(DataConfig(item_fields=dict(rec["config"]["data"]["item_fields"])))
    assert data.duplicates_removed == 0 and len(data.inter) == 100_000
    assert not data.inter.duplicated(["user", "item"]).any()
    assert data.fingerprint == rec["dataset"]["fingerprint"]
    split_cfg = {k: v for k, v in rec["config"]["split"].items()}
    assert build_split(data, SplitConfig(**split_cfg)).fingerprint == rec["split"]["fingerprint"]
    assert {k: data.stats()[k] for k in rec["dataset"]["stats"]} == rec["dataset"]["stats"]


def test_default_duplicates_rule_leaves_config_hashes_unchanged():
    """A committed record's config hashes the same with ``data.duplicates`` at its default."""
    import json

    from omegaconf import OmegaConf

    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes, result_config
    from benchmark.results.submission import recorded_config_hashes

    root = Path(__file__).resolve().parents[2] / "results" / "runs"
    records = sorted(root.glob("ml-100k-loo-full-bpr-s1-*/record.json"))
    assert records
    for path in records:
        rec = json.loads(path.read_text())
        recorded = OmegaConf.create(rec["config"])
        assert "duplicates" not in recorded.data  # written before the option existed
        now = OmegaConf.create(rec["config"])
        now.data.duplicates = "error"
        assert result_config(now) == result_config(recorded)
        assert config_hashes(now) == config_hashes(recorded)
        # and the hash the record carries (written under the rule of its day) is still accepted
        with_default = OmegaConf.to_container(now)
        assert rec["config_hash"] in [h for h, _ in recorded_config_hashes(with_default)]
        now.data.duplicates = "first"  # another rule changes the data, so the hash
        assert config_hashes(now)[0] != config_hashes(recorded)[0]
    composed = compose(["model=bpr", "seed=1"])
    assert composed.data.duplicates == "error"
    assert result_config(composed)["data"] == result_config(recorded)["data"]


@pytest.mark.parametrize(
    "pattern, overrides",
    [
        ("ml-100k-loo-full-p5-collaborative-s2-91cb05eb", ["experiment=p5_tiny_ml100k", "model.indexing=collaborative", "seed=2"]),
        ("ml-100k-tallrec_movie-labeled-tallrec-64shot-s1-*", ["experiment=tallrec_movie_64", "seed=1"]),
        ("ml-100k-loo-full-sasrec-recbole-s1-5b4ecd46", ["model=sasrec", "seed=1", "model.train.max_epochs=5", "model.train.patience=5"]),
    ],
)
def test_committed_experiments_compose_to_their_recorded_config_hashes(pattern, overrides):
    """Options added since (``eval.test_users`` at its default, all users) leave a committed
    experiment's config hash unchanged: composing it today hashes like its recorded config, and
    that config's hash under the rule of its day is the one the record carries."""
    import json

    from omegaconf import OmegaConf

    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes
    from benchmark.results.submission import recorded_config_hashes

    root = Path(__file__).resolve().parents[2] / "results" / "runs"
    (path,) = sorted(root.glob(f"{pattern}/record.json"))
    rec = json.loads(path.read_text())
    assert rec["config"]["eval"].get("test_users") is None  # absent (written before the option) or its default
    cfg = compose(overrides)
    assert cfg.eval.test_users is None
    assert config_hashes(cfg) == config_hashes(OmegaConf.create(rec["config"]))
    assert (rec["config_hash"], rec["group_key"]) in recorded_config_hashes(rec["config"])
    cfg.eval.test_users = 60  # a subset of users changes the result, so the hash
    assert config_hashes(cfg)[0] != config_hashes(OmegaConf.create(rec["config"]))[0]


@pytest.mark.parametrize("overrides", [["experiment=llara_ml100k", "seed=1"], ["experiment=tallrec_movie_64", "seed=1"]])
def test_gradient_checkpointing_off_hashes_as_before_and_on_is_named(overrides):
    """``model.module.gradient_checkpointing=false`` (the default) leaves the result config as it
    was before the option; ``true`` is part of the config hash and the training key, so the
    records of such runs say so."""
    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes, result_config, training_key

    off = compose(overrides)
    assert off.model.module.gradient_checkpointing is False
    assert "gradient_checkpointing" not in result_config(off)["model"]["module"]
    on = compose([*overrides, "model.module.gradient_checkpointing=true"])
    assert result_config(on)["model"]["module"]["gradient_checkpointing"] is True
    assert config_hashes(on)[0] != config_hashes(off)[0] and training_key(on) != training_key(off)


def test_score_cache_is_not_part_of_the_config_hash():
    """Reading P("Yes") from the score cache does not change a result (to float rounding), so a
    committed zero-shot record's config hash is the same with ``+model.module.score_cache=true``."""
    import json

    from omegaconf import OmegaConf

    from benchmark.compose import compose
    from benchmark.results.identity import config_hashes

    root = Path(__file__).resolve().parents[2] / "results" / "runs"
    plain = compose(["experiment=tallrec_movie_zeroshot"])
    # the zero-shot reference among the scorer's committed runs (its prompt ablations share the label)
    found = [json.loads(p.read_text()) for p in sorted(root.glob("ml-100k-tallrec_movie-labeled-tallrec-icl0-s1-*/record.json"))]
    (rec,) = [r for r in found if config_hashes(OmegaConf.create(r["config"])) == config_hashes(plain)]
    cached = compose(["experiment=tallrec_movie_zeroshot", "+model.module.score_cache=true"])
    assert cached.model.module.score_cache is True
    assert config_hashes(cached) == config_hashes(plain) == config_hashes(OmegaConf.create(rec["config"]))
