"""The static leaderboard page in a real headless Chromium: loads, sorts, filters, same numbers as the CSV."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (installed by .ci/run)"),
]


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Path:
    from tests.conftest import random_rows, write_atomic

    tmp = tmp_path_factory.mktemp("board")
    d = write_atomic(tmp / "tiny", "tiny", random_rows())
    common = [
        "data=atomic", f"data.path={d}", "data.name=tiny", "logger=none", "trainer.enable_progress_bar=false",
        f"paths.results={tmp / 'res'}", f"paths.outputs={tmp / 'out'}",
    ]
    main(["run", "-m", "model=pop", "eval=full,sampled", "eval.num_negatives=20", "seed=1,2", *common])
    main(["run", "-m", "model=bpr", "model.train.max_epochs=2", "eval=full", "seed=1,2", *common])
    main(["leaderboard", "--runs", str(tmp / "res" / "runs"), "--out", str(tmp / "lb")])
    return tmp / "lb"


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield d
    d.quit()


def _cells(driver, table: int, metric: str) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    out = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, f'table[data-table="{table}"] tbody tr'):
        td = tr.find_element(By.CSS_SELECTOR, f'td[data-metric="{metric}"]')
        out[tr.get_attribute("data-model")] = td.text
    return out


def test_page_loads_sorts_filters_and_matches_csv(board, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get((board / "leaderboard.html").as_uri())
    tables = driver.find_elements(By.CSS_SELECTOR, "table[data-table]")
    assert len(tables) == 2  # tiny/loo/full and tiny/loo/sampled
    driver.save_screenshot(str(tmp_path / "leaderboard.png"))
    assert (tmp_path / "leaderboard.png").stat().st_size > 0

    # Same numbers as the CSV (4 decimals), for every row and headline column.
    rows = list(csv.DictReader((board / "leaderboard.csv").open()))
    full = [r for r in rows if r["eval"] == "full"]
    shown = _cells(driver, 0, "test/ndcg@10")
    assert set(shown) == {r["model"] for r in full}
    for r in full:
        mean, std = float(r["test/ndcg@10"]), float(r["test/ndcg@10_std"])
        assert shown[r["model"]] == f"{mean:.4f} ± {std:.4f}"

    # Sorting: click the ndcg@10 header -> descending by value; click again -> ascending.
    def order() -> list[float]:
        return [float(td.get_attribute("data-value")) for td in
                driver.find_elements(By.CSS_SELECTOR, 'table[data-table="0"] td[data-metric="test/ndcg@10"]')]

    driver.find_element(By.CSS_SELECTOR, 'table[data-table="0"] th[data-col="test/ndcg@10"]').click()
    assert order() == sorted(order(), reverse=True)
    driver.find_element(By.CSS_SELECTOR, 'table[data-table="0"] th[data-col="test/ndcg@10"]').click()
    assert order() == sorted(order())

    # Filter by family and by slice.
    Select(driver.find_element(By.ID, "family")).select_by_value("classic")
    assert len(driver.find_elements(By.CSS_SELECTOR, 'table[data-table="0"] tbody tr')) == 2
    # The prompt filter: these rows have no prompt ("-"), so "-" keeps both.
    prompts = Select(driver.find_element(By.ID, "prompt"))
    assert [o.get_attribute("value") for o in prompts.options] == ["all", "-"]
    prompts.select_by_value("-")
    assert len(driver.find_elements(By.CSS_SELECTOR, 'table[data-table="0"] tbody tr')) == 2
    for sel in ("icl", "history"):  # the in-context and history filters: no row has either
        choice = Select(driver.find_element(By.ID, sel))
        assert [o.get_attribute("value") for o in choice.options] == ["all", "-"]
        choice.select_by_value("-")
        assert len(driver.find_elements(By.CSS_SELECTOR, 'table[data-table="0"] tbody tr')) == 2
    Select(driver.find_element(By.ID, "slice")).select_by_value("cold_item")
    assert driver.find_elements(By.CSS_SELECTOR, 'td[data-metric="test/cold_item/ndcg@10"]')
    assert not driver.find_elements(By.CSS_SELECTOR, 'td[data-metric="test/ndcg@10"]')
    # Best value per column is marked.
    assert driver.find_elements(By.CSS_SELECTOR, 'table[data-table="0"] td.best')


def test_page_reads_like_a_public_leaderboard(board, driver, tmp_path):
    """Fits a narrow window, model column fixed while a table scrolls, plots readable, rows linked."""
    import re
    from urllib.parse import unquote, urlparse

    from selenium.webdriver.common.by import By

    driver.set_window_size(700, 900)
    driver.get((board / "leaderboard.html").as_uri())
    # The page itself never scrolls sideways; a wide table scrolls inside its own box.
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    box = driver.find_element(By.CSS_SELECTOR, ".scroll")
    assert driver.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", box)
    driver.execute_script("arguments[0].scrollLeft = 300", box)
    left_box = driver.execute_script("return arguments[0].getBoundingClientRect().left", box)
    left_name = driver.execute_script("return document.querySelector('.scroll td.name').getBoundingClientRect().left")
    assert abs(left_name - left_box) <= 2  # the model column stays in view
    driver.save_screenshot(str(tmp_path / "narrow.png"))

    # Header: the commit and date the page was generated from, and the folder it read.
    meta = driver.find_element(By.ID, "meta").text
    assert re.search(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC from commit \w+", meta)
    assert str(board.parent / "res" / "runs") in meta

    # Plots: both axes titled, at least two tick values each, cost counts training and evaluation.
    driver.set_window_size(1280, 900)
    driver.get((board / "leaderboard.html").as_uri())
    svgs = driver.find_elements(By.CSS_SELECTOR, "svg.plot")
    assert len(svgs) == 2
    for svg in svgs:
        assert "training + evaluation seconds" in svg.find_element(By.CSS_SELECTOR, "text.x-title").text
        assert svg.find_element(By.CSS_SELECTOR, "text.y-title").text.startswith("ndcg@10")
        assert len(svg.find_elements(By.CSS_SELECTOR, "text.x-tick")) >= 2
        assert len(svg.find_elements(By.CSS_SELECTOR, "text.y-tick")) >= 2
        # No two texts of a plot overlap (labels, ticks, titles, legend).
        boxes = driver.execute_script(
            "return [...arguments[0].querySelectorAll('text')].map(t => {const b = t.getBoundingClientRect();"
            " return [b.left, b.top, b.right, b.bottom, t.textContent];})",
            svg,
        )
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                overlap = a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5
                assert not overlap, f"plot texts overlap: {a[4]!r} and {b[4]!r}"
        assert {t.text for t in svg.find_elements(By.CSS_SELECTOR, "text.point-label")} >= {"pop"}
    driver.save_screenshot(str(tmp_path / "wide.png"))

    # Every row links to its run records (relative links that resolve to the record files).
    links = driver.find_elements(By.CSS_SELECTOR, "td.records a")
    assert links and len(links) == 2 * len(driver.find_elements(By.CSS_SELECTOR, "tbody tr"))  # two seeds per row
    for a in links:
        href = a.get_dom_attribute("href") or ""
        assert href.endswith("/record.json") and not href.startswith("/") and "://" not in href  # relative
        path = Path(unquote(urlparse(a.get_attribute("href")).path))
        assert path.name == "record.json" and path.is_file()
