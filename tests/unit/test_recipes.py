"""Dataset recipes and the generic preparer, on small synthetic files in every raw format.

Every fixture is written here into ``tmp_path``; no real data is read or committed.
"""

from __future__ import annotations

import gzip
import json
import math
import urllib.error
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from benchmark.config import DataConfig, to_object
from benchmark.data.atomic import read_atomic, read_header
from benchmark.data.recipes import cache as recipe_cache
from benchmark.data.recipes import dataset_stats, load_recipe, prepare, recipes_root
from benchmark.data.recipes import fetch as recipe_fetch
from benchmark.data.recipes import schema as recipe_schema
from benchmark.errors import DataError
from benchmark.util import sha256_file

NAMES = (
    "ml-1m", "amazon-beauty", "amazon-sports", "amazon-toys",
    "yelp", "lastfm", "steam", "bookcrossing",
)  # fmt: skip
AMAZON = {
    "amazon-beauty": "Beauty",
    "amazon-sports": "Sports_and_Outdoors",
    "amazon-toys": "Toys_and_Games",
}
REPO = Path(__file__).resolve().parents[2]
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


# ----------------------------------------------------------------------------- helpers


def sums(raw: Path) -> dict[str, str]:
    """sha256 of every fixture file, passed as the checksum override."""
    return {p.name: sha256_file(p) for p in raw.iterdir() if p.is_file()}


def run(name: str, raw: Path, cache: Path, preprocess: str | None = None) -> Path:
    return prepare(name, raw, cache, preprocess=preprocess, download=False, checksums=sums(raw))


def rows(out: Path, name: str, ext: str = "inter") -> list[list[str]]:
    lines = (out / f"{name}.{ext}").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[1:]]


def by_id(out: Path, name: str, ext: str) -> dict[str, list[str]]:
    return {r[0]: r[1:] for r in rows(out, name, ext)}


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8", gz: bool = False) -> None:
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)


# ----------------------------------------------------------------------------- fixtures


def write_ml1m(raw: Path) -> None:
    ratings = ["1::10::5::978300760", "1::20::3::978302109", "2::10::4::978301968"]
    movies = [
        "10::Café Society (1995)::Comedy|Drama",
        "20::2001: A Space Odyssey (1968)::Drama|Mystery|Sci-Fi",
        "30::Unrated (1990)::Horror",
    ]
    users = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::0::1"]
    write_lines(raw / "ratings.dat", ratings, "latin-1")
    write_lines(raw / "movies.dat", movies, "latin-1")
    write_lines(raw / "users.dat", users, "latin-1")


def kcore_reviews() -> list[tuple[str, str, float, int]]:
    """33 reviews: U1-U5 x I1-I5 (a 5-core), U6 on I1-I4 + I6, U7-U9 on I6 only.

    I6 has 4 reviews -> dropped in round 1; only then does U6 fall to 4 reviews
    and drop in round 2. Timestamps repeat (11 distinct values) to test stable sorting.
    """
    pairs = [(f"U{u}", f"I{i}") for u in range(1, 6) for i in range(1, 6)]
    pairs += [("U6", f"I{i}") for i in (1, 2, 3, 4, 6)] + [(f"U{u}", "I6") for u in (7, 8, 9)]
    return [
        (u, i, float(1 + k % 5), 1_000_000_000 + ((k * 7) % 11) * 86400)
        for k, (u, i) in enumerate(pairs)
    ]


def write_amazon(raw: Path, category: str) -> None:
    extra = {"reviewerName": "x", "helpful": [0, 0], "reviewText": "ok", "summary": "s"}
    reviews = [
        json.dumps({"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t, **extra})
        for u, i, r, t in kcore_reviews()
    ]
    write_lines(raw / f"reviews_{category}_5.json.gz", reviews, gz=True)
    meta = [
        {"asin": "I99", "title": "Not reviewed"},
        {
            "asin": "I1",
            "title": 'Lip "Balm"\tNo. 1',
            "price": 3.5,
            "imUrl": "http://img/1.jpg",
            "categories": [["Beauty", "Skin Care"], ["Beauty", "Lips"]],
            "brand": "Acme",
            "related": {"also_bought": ["I2"]},
        },
        {"asin": "I2", "title": "Cream", "categories": [["Beauty"]], "salesRank": {"Beauty": 5}},
        {"asin": "I3", "title": "Soap"},
        {"asin": "I4", "title": "Gel"},
        {"asin": "I5", "categories": [["Beauty", "Nails"]]},  # no title
        {"asin": "I6", "title": "Dropped by the k-core"},
    ]
    # Metadata lines are Python literals (single quotes), as in the real files.
    write_lines(raw / f"meta_{category}.json.gz", [repr(m) for m in meta], gz=True)


def write_yelp(raw: Path) -> None:
    reviews = [
        (f"u{u}", f"b{b}", f"2019-03-0{1 + (u + b) % 9} 12:00:00")
        for u in range(5)
        for b in range(5)
    ]
    reviews += [
        ("u0", "b0", "2018-12-31 23:59:59"),
        ("u9", "b9", "2020-01-01 00:00:00"),
        ("u1", "b1", "2019-12-31 10:00:00"),
        ("u2", "b3", "2019-01-01 00:00:00"),
    ]
    extra = {"useful": 0, "funny": 0, "cool": 0, "text": "Great\nplace"}
    lines = [
        json.dumps(
            {"review_id": f"r{k}", "user_id": u, "business_id": b, "stars": 1 + k % 5, "date": d}
            | extra
        )
        for k, (u, b, d) in enumerate(reviews)
    ]
    write_lines(raw / "yelp_academic_dataset_review.json", lines)
    business = [
        {
            "business_id": f"b{b}",
            "name": f"Shop {b}",
            "city": "Las Vegas",
            "state": "NV",
            "stars": 4.5,
            "categories": "Pizza, Restaurants" if b else None,
        }
        for b in (0, 1, 2, 3, 4, 9)
    ]
    write_lines(raw / "yelp_academic_dataset_business.json", [json.dumps(b) for b in business])


def write_lastfm(raw: Path) -> None:
    tagged = [
        "userID\tartistID\ttagID\ttimestamp",
        "2\t52\t13\t1238536800000",
        "2\t51\t7\t1241128800000",
        "2\t52\t14\t1238536800000",
        "3\t51\t7\t1230764400000",
        "4\t99\t1\t1230764400000",
    ]
    listens = ["userID\tartistID\tweight", "2\t51\t13883", "2\t52\t11690", "3\t51\t7", "5\t51\t1"]
    artists = [
        "id\tname\turl\tpictureURL",
        "51\tDuran Duran\thttp://www.last.fm/music/Duran+Duran\thttp://p/51.jpg",
        "52\tMorcheeba\thttp://www.last.fm/music/Morcheeba\thttp://p/52.jpg",
        "53\tAir\thttp://www.last.fm/music/Air\t",
    ]
    write_lines(raw / "user_taggedartists-timestamps.dat", tagged)
    write_lines(raw / "user_artists.dat", listens)
    write_lines(raw / "artists.dat", artists)


def write_steam(raw: Path) -> None:
    reviews = [
        {"username": "Chaos Syren", "hours": 0.1, "products": 41, "product_id": "725280",
         "page_order": 0, "date": "2017-12-17", "text": "Not acceptable", "early_access": False},
        {"username": "O'Neil \"x\"", "products": 3, "product_id": "328100", "page_order": 1,
         "date": "2018-01-04", "text": "no hours", "early_access": True, "found_funny": 1},
        {"username": "Chaos Syren", "hours": 12.5, "product_id": "328100", "date": "2017-12-18"},
    ]  # fmt: skip
    write_lines(raw / "steam_reviews.json.gz", [repr(r) for r in reviews], gz=True)
    games = [
        {"publisher": "Kotoshiro", "genres": ["Action", "Indie"], "app_name": "Lost Summoner Kitty",
         "title": "Lost Summoner Kitty", "url": "http://store.steampowered.com/app/725280/",
         "release_date": "2018-01-04", "tags": ["Strategy", "Action"], "price": 4.99,
         "early_access": False, "id": "725280", "developer": "Kotoshiro"},
        {"genres": ["Free to Play"], "title": "Title only", "release_date": "Jan 2014",
         "price": "Free To Play", "id": "328100", "tags": []},
        {"app_name": "no id"},
    ]  # fmt: skip
    write_lines(raw / "steam_games.json.gz", [repr(g) for g in games], gz=True)


BX_RATINGS = [
    (10, "A1", 8), (10, "A2", 3), (10, "A3", 6), (10, "A4", 10),  # 4 explicit: kept
    (11, "A1", 7), (11, "A2", 0), (11, "A3", 9), (11, "A4", 5),  # 3 explicit: dropped
    (12, "A1", 7), (12, "ZZ", 9), (12, "A3", 9), (12, "A4", 5),  # ZZ has no book: dropped
    (13, "A4", 1), (13, "A3", 0), (13, "A2", 2), (13, "A1", 6), (13, "A5", 7),  # 4 explicit
]  # fmt: skip


def quoted(*fields: str) -> str:
    """One Book-Crossing CSV line: every field double-quoted, ';'-separated."""
    return ";".join(f'"{f}"' for f in fields)


def write_bookcrossing(raw: Path) -> None:
    ratings = [quoted("User-ID", "ISBN", "Book-Rating")]
    ratings += [quoted(str(u), i, str(r)) for u, i, r in BX_RATINGS]
    write_lines(raw / "BX-Book-Ratings.csv", ratings, "latin-1")
    urls = ("Image-URL-S", "Image-URL-M", "Image-URL-L")
    books = [
        quoted("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher", *urls),
        quoted("A1", "Classical Mythology", "Mark P. O. Morford", "2002", "Oxford", "s", "m",
               "http://l/A1.jpg"),
        quoted("A2", 'The \\"Real\\" Book; Vol. 1', "Müller", "0", "Pub", "s", "m", "http://l/A2.jpg"),
        quoted("BAD", "too", "many", "fields", "x", "x", "x", "x", "x", "x"),
        quoted("A3", "Decision in Normandy", "Carlo D'Este", "1991", "Harper", "s", "m",
               "http://l/A3.jpg"),
        quoted("A4", "Flu", "Gina Kolata", "1999", "Farrar", "s", "m", "http://l/A4.jpg"),
        quoted("A5", "Five", "Anon", "2005", "P", "s", "m", "http://l/A5.jpg"),
    ]  # fmt: skip
    write_lines(raw / "BX-Books.csv", books, "latin-1")
    users = [
        quoted("User-ID", "Location", "Age"),
        '"10";"nyc, new york, usa";NULL',
        quoted("13", "köln, nrw, germany", "34"),
        quoted("99", "x", "1"),
    ]
    write_lines(raw / "BX-Users.csv", users, "latin-1")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    d = tmp_path / "raw"
    d.mkdir()
    return d


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- recipes and configs


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads_and_config_matches(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.files and recipe.items is not None
    cfg = OmegaConf.load(REPO / "configs" / "data" / f"{name}.yaml")
    assert list(cfg.pop("defaults")) == ["data_schema"]
    data = to_object(cfg, DataConfig)
    assert (data.name, data.source) == (name, "recipe")
    assert data.item_fields["title"] == "title"
    for role, column in data.item_fields.items():
        assert column in recipe.items["fields"], (role, column)
    assert (REPO / "datasets" / name / "README.md").is_file()


def test_datasets_folder_is_not_a_package() -> None:
    assert recipes_root() == REPO / "datasets"
    assert not (recipes_root() / "__init__.py").exists()


def test_unknown_recipe_and_missing_key_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no-such-set/recipe.yaml: no recipe"):
        load_recipe("no-such-set")
    text = (
        (recipes_root() / "ml-1m" / "recipe.yaml").read_text().replace("  item_id: MovieID\n", "")
    )
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "recipe.yaml").write_text(text)
    with pytest.raises(DataError, match=r"ml-1m/recipe.yaml: missing key 'interactions.item_id'"):
        load_recipe("ml-1m", root=tmp_path)


def test_unknown_preprocess_names_the_key(raw: Path, cache: Path) -> None:
    write_ml1m(raw)
    with pytest.raises(DataError, match=r"recipe.yaml: no key 'preprocess.nope'"):
        run("ml-1m", raw, cache, preprocess="nope")


# ----------------------------------------------------------------------------- parsing per dataset


def test_ml1m_parsing_ids_text_and_users(raw: Path, cache: Path) -> None:
    write_ml1m(raw)
    out = run("ml-1m", raw, cache)
    assert (out / "ml-1m.inter").read_text().splitlines()[0] == HEADER
    assert rows(out, "ml-1m") == [["1", "10", "5", "978300760"], ["1", "20", "3", "978302109"],
                                  ["2", "10", "4", "978301968"]]  # fmt: skip
    assert [f"{n}:{t}" for n, t in read_header(out / "ml-1m.item")] == [
        "item_id:token", "title:token_seq", "genres:token_seq", "year:float"]  # fmt: skip
    assert by_id(out, "ml-1m", "item") == {
        "10": ["Café Society (1995)", "Comedy, Drama", "1995"],
        "20": ["2001: A Space Odyssey (1968)", "Drama, Mystery, Sci-Fi", "1968"],
    }  # movie 30 has no rating, so it is not in the item file
    assert by_id(out, "ml-1m", "user") == {
        "1": ["F", "1", "10", "48067"],
        "2": ["M", "56", "16", "70072"],
    }
    data = read_atomic(
        out, "ml-1m", item_fields={"title": "title", "genres": "genres", "year": "year"}
    )
    assert data.items.loc["20", "year"] == 1968.0
    assert dataset_stats(out, "ml-1m") == {
        "users": 2,
        "items": 2,
        "interactions": 3,
        "density": 0.75,
    }


def test_ml1m_from_the_zip_archive_gives_the_same_files(
    raw: Path, cache: Path, tmp_path: Path
) -> None:
    write_ml1m(raw)
    plain = run("ml-1m", raw, cache)
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "ml-1m.zip", "w") as zf:
        for f in ("ratings.dat", "movies.dat", "users.dat"):
            zf.write(raw / f, f"ml-1m/{f}")
    out = prepare(
        "ml-1m", zipped, tmp_path / "cache2", download=False, checksums=sums(raw) | sums(zipped)
    )
    for ext in ("inter", "item", "user"):
        assert (out / f"ml-1m.{ext}").read_bytes() == (plain / f"ml-1m.{ext}").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["files"]["ml-1m.zip"]["verified"] is True


@pytest.mark.parametrize("name", sorted(AMAZON))
def test_amazon_parsing_and_item_text(name: str, raw: Path, cache: Path) -> None:
    write_amazon(raw, AMAZON[name])
    out = run(name, raw, cache)
    got = rows(out, name)
    assert len(got) == 33
    assert got[0] == ["U1", "I1", "1", "1000000000"]
    assert got[6] == ["U2", "I2", "2", str(1_000_000_000 + 42 % 11 * 86400)]
    items = by_id(out, name, "item")
    assert sorted(items) == [f"I{i}" for i in range(1, 7)]  # I99 was never reviewed
    assert items["I1"] == [
        'Lip "Balm" No. 1',
        "Beauty, Skin Care, Lips",
        "Acme",
        "3.5",
        "http://img/1.jpg",
    ]
    assert items["I5"] == ["", "Beauty, Nails", "", "", ""]
    assert read_atomic(out, name, item_fields={"title": "title"}).items.loc["I1", "price"] == 3.5


def test_p5_kcore_is_iterated_and_rows_are_time_ordered(raw: Path, cache: Path) -> None:
    write_amazon(raw, "Beauty")
    raw_out = run("amazon-beauty", raw, cache)
    assert dataset_stats(raw_out, "amazon-beauty") == {
        "users": 9, "items": 6, "interactions": 33, "density": 33 / 54}  # fmt: skip
    assert sum(r[0] == "U6" for r in rows(raw_out, "amazon-beauty")) == 5  # U6 starts at 5

    out = run("amazon-beauty", raw, cache, preprocess="p5")
    assert out != raw_out
    got = rows(out, "amazon-beauty")
    users = {r[0] for r in got}
    assert users == {f"U{u}" for u in range(1, 6)}  # U6 dropped only after I6 was
    assert {r[1] for r in got} == {f"I{i}" for i in range(1, 6)}
    expected = sorted(
        (r for r in kcore_reviews() if r[0] in users and r[1] != "I6"), key=lambda r: r[3]
    )
    assert [(u, i) for u, i, *_ in got] == [
        (u, i) for u, i, *_ in expected
    ]  # stable: ties keep raw order
    assert dataset_stats(out, "amazon-beauty") == {
        "users": 5,
        "items": 5,
        "interactions": 25,
        "density": 1.0,
    }
    assert sorted(by_id(out, "amazon-beauty", "item")) == [f"I{i}" for i in range(1, 6)]


def test_yelp_dates_and_p5_time_window(raw: Path, cache: Path) -> None:
    write_yelp(raw)
    out = run("yelp", raw, cache)
    got = rows(out, "yelp")
    assert len(got) == 29
    assert got[-1] == ["u2", "b3", "4", "1546300800"]  # 2019-01-01 00:00:00 UTC
    assert got[25] == ["u0", "b0", "1", "1546300799"]
    assert by_id(out, "yelp", "item")["b1"] == ["Shop 1", "Pizza, Restaurants", "Las Vegas", "NV"]
    assert by_id(out, "yelp", "item")["b0"] == ["Shop 0", "", "Las Vegas", "NV"]
    p5 = run("yelp", raw, cache, preprocess="p5")
    kept = rows(p5, "yelp")
    # 2018 / 2020 rows and the one after 2019-12-31 00:00:00 are out; u9/b9 go with them.
    assert len(kept) == 26 and {r[0] for r in kept} == {f"u{u}" for u in range(5)}
    assert [float(r[3]) for r in kept] == sorted(float(r[3]) for r in kept)
    assert dataset_stats(p5, "yelp") == {
        "users": 5,
        "items": 5,
        "interactions": 26,
        "density": 26 / 25,
    }


def test_lastfm_dedup_listen_counts_and_ms_timestamps(raw: Path, cache: Path) -> None:
    write_lastfm(raw)
    out = run("lastfm", raw, cache)
    assert rows(out, "lastfm") == [
        ["2", "52", "11690", "1238536800"],
        ["2", "51", "13883", "1241128800"],
        ["3", "51", "7", "1230764400"],
        ["4", "99", "", "1230764400"],  # tagged but never listened: no count
    ]
    assert by_id(out, "lastfm", "item") == {
        "52": ["Morcheeba", "http://www.last.fm/music/Morcheeba", "http://p/52.jpg"],
        "51": ["Duran Duran", "http://www.last.fm/music/Duran+Duran", "http://p/51.jpg"],
    }
    data = read_atomic(out, "lastfm")
    assert math.isnan(data.inter["rating"].iloc[3])
    assert dataset_stats(out, "lastfm") == {
        "users": 3,
        "items": 3,
        "interactions": 4,
        "density": 4 / 9,
    }


def test_steam_python_literals(raw: Path, cache: Path) -> None:
    write_steam(raw)
    out = run("steam", raw, cache)
    assert rows(out, "steam") == [
        ["Chaos Syren", "725280", "0.1", "1513468800"],
        ['O\'Neil "x"', "328100", "", "1515024000"],
        ["Chaos Syren", "328100", "12.5", "1513555200"],
    ]
    items = by_id(out, "steam", "item")
    kitty = ["Lost Summoner Kitty", "Action, Indie", "Strategy, Action", "Kotoshiro", "Kotoshiro"]
    assert items["725280"] == [*kitty, "4.99", "2018", "http://store.steampowered.com/app/725280/"]
    assert items["328100"] == ["Title only", "Free to Play", "", "", "", "0", "2014", ""]
    assert read_atomic(out, "steam").inter["user"].tolist()[1] == 'O\'Neil "x"'


def test_bookcrossing_csv_and_tallrec_user_filter(raw: Path, cache: Path) -> None:
    write_bookcrossing(raw)
    with pytest.warns(UserWarning, match=r"BX-Books.csv: skipped 1 malformed line"):
        out = run("bookcrossing", raw, cache)
    got = rows(out, "bookcrossing")
    assert len(got) == 17 and got[5] == ["11", "A2", "0", "5"]  # timestamp = raw row number
    books = by_id(out, "bookcrossing", "item")
    assert books["A2"] == ['The "Real" Book; Vol. 1', "Müller", "", "Pub", "http://l/A2.jpg"]
    assert books["A3"][:2] == ["Decision in Normandy", "Carlo D'Este"] and books["A1"][2] == "2002"
    assert "ZZ" not in books and "BAD" not in books
    assert by_id(out, "bookcrossing", "user") == {
        "10": ["nyc, new york, usa", ""],
        "13": ["köln, nrw, germany", "34"],
    }

    with pytest.warns(UserWarning):
        tallrec = run("bookcrossing", raw, cache, preprocess="tallrec")
    assert rows(tallrec, "bookcrossing") == [
        ["10", "A1", "8", "0"], ["10", "A2", "3", "1"], ["10", "A3", "6", "2"],
        ["10", "A4", "10", "3"], ["13", "A4", "1", "12"], ["13", "A2", "2", "14"],
        ["13", "A1", "6", "15"], ["13", "A5", "7", "16"],
    ]  # fmt: skip
    assert dataset_stats(tallrec, "bookcrossing") == {
        "users": 2,
        "items": 5,
        "interactions": 8,
        "density": 0.8,
    }


# ------------------------------------------------------------------------- checks, cache, errors


def test_checksum_mismatch_names_file_and_expected(raw: Path, cache: Path) -> None:
    write_ml1m(raw)
    wrong = "0" * 64
    with pytest.raises(
        DataError, match=rf"ratings.dat: sha256 mismatch \(expected {wrong}, got [0-9a-f]{{64}}\)"
    ):
        prepare("ml-1m", raw, cache, download=False, checksums=sums(raw) | {"ratings.dat": wrong})


def test_missing_raw_file_names_it_and_its_checksum(raw: Path, cache: Path) -> None:
    write_steam(raw)
    expected = sums(raw)["steam_games.json.gz"]
    (raw / "steam_games.json.gz").unlink()
    with pytest.raises(
        DataError,
        match=rf"steam_games.json.gz: raw file of 'steam' not found \(expected sha256 {expected}\)",
    ):
        prepare("steam", raw, cache, download=False, checksums={"steam_games.json.gz": expected})


def test_unpublished_checksum_warns_and_is_recorded(raw: Path, cache: Path) -> None:
    write_lastfm(raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = prepare("lastfm", raw, cache, download=False)
    unverified = sorted(
        str(w.message).split("'")[1] for w in caught if "no published sha256" in str(w.message)
    )
    assert unverified == ["artists.dat", "user_artists.dat", "user_taggedartists-timestamps.dat"]
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files["artists.dat"] == {
        "sha256": sha256_file(raw / "artists.dat"),
        "expected": None,
        "verified": False,
    }


def test_prepared_directory_is_reused(
    raw: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ml1m(raw)
    first = run("ml-1m", raw, cache)

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a prepared dataset")

    monkeypatch.setattr(recipe_cache, "_build", no_rebuild)
    assert run("ml-1m", raw, cache) == first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    write_lines(raw / "ratings.dat", ["1::10::5::978300760"], "latin-1")  # new raw bytes -> new key
    with pytest.raises(AssertionError, match="rebuilt"):
        run("ml-1m", raw, cache)


def test_failed_build_leaves_no_directory(raw: Path, cache: Path) -> None:
    write_lines(
        raw / "yelp_academic_dataset_review.json", ['{"user_id": "u", "business_id": "b"', "x"]
    )
    write_lines(raw / "yelp_academic_dataset_business.json", ["{}"])
    with pytest.raises(
        DataError, match=r"yelp_academic_dataset_review.json: line 1: not valid JSON"
    ):
        run("yelp", raw, cache)
    assert not any((cache / "prepared" / "yelp").iterdir())


def test_unreachable_network_says_to_pass_raw_dir(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(recipe_fetch.urllib.request, "urlopen", offline)
    with pytest.raises(
        DataError, match=r"reviews_Beauty_5.json.gz: download failed .*data.raw_dir=PATH"
    ):
        prepare("amazon-beauty", None, cache)
    with pytest.raises(
        DataError, match=r"yelp_academic_dataset_review.json: raw file .*yelp.com/dataset"
    ):
        prepare("yelp", None, cache)


def test_download_fetches_verifies_and_extracts_into_the_cache(
    raw: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ml1m(raw)
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "ml-1m.zip", "w") as zf:
        for f in ("ratings.dat", "movies.dat", "users.dat"):
            zf.write(raw / f, f"ml-1m/{f}")
    real = recipe_schema.load_recipe

    def local(name: str) -> recipe_schema.Recipe:
        recipe = real(name)
        url = (site / "ml-1m.zip").as_uri()  # file:// URL: urllib without a network
        archive = replace(recipe.archives["ml-1m.zip"], url=url)
        return replace(recipe, archives={"ml-1m.zip": archive})

    monkeypatch.setattr(recipe_cache, "load_recipe", local)  # the name prepare() calls
    out = prepare("ml-1m", None, cache, checksums=sums(raw) | sums(site))
    assert (cache / "raw" / "ml-1m" / "ml-1m.zip").is_file()
    assert rows(out, "ml-1m")[0] == ["1", "10", "5", "978300760"]
    with pytest.raises(DataError, match=r"ml-1m.zip: sha256 mismatch \(expected f{64}"):
        prepare("ml-1m", None, cache, checksums={"ml-1m.zip": "f" * 64})
