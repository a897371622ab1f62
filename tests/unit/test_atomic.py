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
