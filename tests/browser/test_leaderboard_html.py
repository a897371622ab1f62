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
    Select(driver.find_element(By.ID, "slice")).select_by_value("cold_item")
    assert driver.find_elements(By.CSS_SELECTOR, 'td[data-metric="test/cold_item/ndcg@10"]')
    assert not driver.find_elements(By.CSS_SELECTOR, 'td[data-metric="test/ndcg@10"]')
    # Best value per column is marked.
    assert driver.find_elements(By.CSS_SELECTOR, 'table[data-table="0"] td.best')
