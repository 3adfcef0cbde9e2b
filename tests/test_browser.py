"""The four pages in a real browser (headless Chromium driven by selenium): a run's report.html, a sweep's
summary.html, runs/index.html and a comparison page, all built from two small real runs made here.

Each page must log no console error, send no request outside its own file (Chrome's performance log of
DevTools Network events), decode every image, and show the key metrics equal to each run's metrics.json.
Without Chromium the test is skipped, saying how to install it; under CI=true (.ci/run installs Chromium) a
missing browser fails instead.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT

CONF = str(ROOT / "conf")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
BROWSER_PAGES = ("chrome://", "chrome-untrusted://", "chrome-extension://", "devtools://")
INSTALL_HINT = "install it with: apt-get install -y chromium chromium-driver, and pip install -e '.[test]' for selenium"
RUNS = {"cluster": ["strategy=cluster", "strategy.min_count=5"], "regression": ["strategy=regression"]}
# How each page writes a metric of metrics.json, worked out here independently of reports/.
PERCENT = "{:.2%}".format
TWO = "{:.2f}".format
EIGHT = "{:.8f}".format


def metric_text(key: str, value: float) -> str:
    if key in ("trades", "oos_n"):
        return str(int(value))
    if key.endswith(("mse",)):
        return EIGHT(value)
    if key.removeprefix("benchmark_").removeprefix("oos_") in (
        "cagr", "total_return", "max_drawdown", "var_95", "hit_rate",
    ):
        return PERCENT(value)
    if key.endswith("r2") or key.endswith("r2_oos"):
        return f"{value:.4f}"
    return TWO(value)


# --- the pages, from two real runs on a planted csv dataset ------------------------------------------------------


def write_dataset(folder: Path, n_sessions: int = 300, seed: int = 5) -> None:
    """One ticker whose next open-to-open move follows the tone of the news published before the open."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-03-01", periods=n_sessions)
    tone = rng.choice([1, -1], size=n_sessions)
    moves = 0.006 * tone + 0.004 * rng.standard_normal(n_sessions)
    opens = 100 * np.cumprod(np.concatenate([[1.0], 1 + moves[:-1]]))
    closes = opens * (1 + moves * 0.5)
    pd.DataFrame({"ticker": "PLANT", "date": dates.strftime("%Y-%m-%d"), "open": opens,
                  "high": np.maximum(opens, closes) * 1.002, "low": np.minimum(opens, closes) * 0.998,
                  "close": closes, "volume": 1000}).to_csv(folder / "prices.csv", index=False)
    fillers = ["oil", "bank", "chip", "retail", "energy", "court", "merger", "factory", "rates", "china"]
    rows = []
    for day, sign in zip(dates, tone):
        lead = "strong profit gains beat expectations" if sign > 0 else "losses and litigation weak decline"
        for text, minute in ((lead, "00"), ("market report", "05")):
            rows.append((f"{day:%Y-%m-%d}T08:{minute}:00-05:00", "PLANT",
                         " ".join([text, *rng.choice(fillers, size=3, replace=False)])))
    pd.DataFrame(rows, columns=["timestamp", "ticker", "text"]).to_csv(folder / "news.csv", index=False)


def real_run(folder: Path, run_dir: Path, overrides: list[str]) -> dict:
    from engine.run import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=csv", f"data.prices.path={folder}/prices.csv", f"data.news.path={folder}/news.csv",
            "signals/sentiment=lexicon", f"paths.cache={folder}/cache", "walk_forward.train_sessions=120",
            "walk_forward.step_sessions=60", "signals.topics.num_topics=3", "signals.topics.passes=1",
            "signals.topics.no_below=2", *overrides])
    run(cfg, run_dir)
    return json.loads((run_dir / "metrics.json").read_text())


def write_sweep(sweep_dir: Path, run_dirs: dict[str, Path], metrics: dict[str, dict]) -> Path:
    """A sweep folder over the two runs: results.duckdb (the columns engine.grid writes and the index reads)
    and summary.html."""
    import duckdb

    from reports.sweep import write_sweep_summary

    keys = ["sharpe", "cagr", "max_drawdown", "var_95", "in_sample_sharpe", "out_of_sample_sharpe", "sessions",
            "oos_mse", "trades"]
    results = pd.DataFrame([
        {"run_id": name, "status": "ok", "error": None, "overrides": f"strategy={name}", "run_dir": str(run_dirs[name]),
         "elapsed_seconds": 1.0, "finished_at": pd.Timestamp("2024-01-02 03:04:05"), "strategy": name,
         **{key: metrics[name][key] for key in keys}}
        for name in run_dirs
    ])
    sweep_dir.mkdir(parents=True)
    with duckdb.connect(str(sweep_dir / "results.duckdb")) as connection:
        connection.register("results", results)
        connection.execute("CREATE TABLE runs AS SELECT * FROM results")
    return write_sweep_summary(results, ["strategy"], sweep_dir / "summary.html", title="demo sweep")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from reports.compare import write_comparison
    from reports.index import write_index

    root = tmp_path_factory.mktemp("site")
    write_dataset(root)
    runs_root = root / "runs"
    run_dirs = {name: runs_root / name for name in RUNS}
    metrics = {name: real_run(root, run_dirs[name], overrides) for name, overrides in RUNS.items()}
    sweeps_root = root / "sweeps"
    summary = write_sweep(sweeps_root / "demo", run_dirs, metrics)
    (runs_root / "20240101-000000-broken").mkdir()  # a run that never finished: listed, no crash
    index = write_index(runs_root, sweeps_root)
    comparison = write_comparison([run_dirs["cluster"], run_dirs["regression"]], root / "compare.html")
    return {"runs": run_dirs, "metrics": metrics, "summary": summary, "index": index, "compare": comparison}


# --- the browser ------------------------------------------------------------------------------------------------


def browser_parts() -> tuple[str | None, str | None, list[str]]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.isfile(p)), None)
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return chromium, driver, missing


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path, missing = browser_parts()
    if missing:
        message = f"browser test: {', '.join(missing)} not found; {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: a missing browser fails the build; .ci/run installs it)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="newsbt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1300,1000"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> dict:
    """Load ``path``; return its console errors, the URLs it requested and its images' decoded widths."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages logged
    url = path.resolve().as_uri()
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        # The browser's own pages (its start tab, chrome://...) load their resources too: not the page's.
        if params.get("documentURL", "").startswith(BROWSER_PAGES):
            continue
        if message["method"] == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            requests.append(params["url"])
    return {
        "url": url,
        "errors": [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"],
        "requests": requests,
        "images": driver.execute_script("return Array.from(document.images).map(i => i.naturalWidth)"),
    }


def assert_clean(page: dict, images: int) -> None:
    assert page["errors"] == []
    outside = [u for u in page["requests"] if u != page["url"] and not u.startswith("data:")]
    assert outside == [], "requests outside the page's own file"
    assert page["url"] in page["requests"]
    assert len(page["images"]) == images and all(width > 0 for width in page["images"]), page["images"]


def keyed_cells(driver, selector: str = "[data-metric]") -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(c => ({run: c.getAttribute('data-run'),"
        " metric: c.getAttribute('data-metric'), value: c.getAttribute('data-value'), text: c.textContent}))",
        selector)


def assert_equal_to_metrics(cell: dict, metrics: dict) -> None:
    expected = metrics[cell["metric"]]
    if expected is None:
        assert cell["value"] == "" and cell["text"] == "–", cell
        return
    assert float(cell["value"]) == pytest.approx(expected, rel=1e-9, abs=1e-15), cell
    assert cell["text"] == metric_text(cell["metric"], expected), cell


def dotted(metrics: dict, prefix: str = "") -> dict:
    """metrics.json's nested counts (news_dropped) as dotted keys, as the comparison page lists them."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and value:
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RUNS))
def test_report_in_a_browser(browser, site, name):
    page = open_page(browser, site["runs"][name] / "report.html")
    assert_clean(page, images=4)  # signal, regime, topic and event study charts (QuantStats' are inline SVG)
    metrics = site["metrics"][name]
    cells = {c["metric"]: c for c in keyed_cells(browser)}
    for key in ("sharpe", "cagr", "total_return", "max_drawdown", "var_95", "trades", "benchmark_sharpe",
                "benchmark_cagr", "oos_mse", "oos_n", "oos_hit_rate", "oos_r2_oos"):
        assert key in cells, key
        assert_equal_to_metrics(cells[key], metrics)
    text = browser.execute_script("return document.body.innerText")
    assert "\ufe6a" not in text and "nan%" not in text and "Key Performance Metrics" in text
    # QuantStats' end-of-year table: one row per year from the first session where both the strategy and
    # buy-and-hold moved to the last session, no empty year.
    years = browser.execute_script(
        "return Array.from(document.querySelectorAll('#eoy tbody tr td:first-child')).map(c => c.textContent)")
    equity = pd.read_csv(site["runs"][name] / "equity.csv")
    moved = (equity["returns"] != 0) & equity["returns"].notna()
    benchmark_moved = (equity["benchmark_returns"] != 0) & equity["benchmark_returns"].notna()
    start = max(equity["date"][moved].iloc[0], equity["date"][benchmark_moved].iloc[0])
    end = equity["date"].iloc[-1]
    assert years == [str(y) for y in range(int(start[:4]), int(end[:4]) + 1)]


def test_sweep_summary_in_a_browser(browser, site):
    page = open_page(browser, site["summary"])
    assert_clean(page, images=0)  # its charts are inline SVG
    # The scatter, laid out with a size, one point per run (one parameter varies: no heatmap).
    charts = browser.execute_script("""return Array.from(document.querySelectorAll('svg.chart')).map(c =>
        [c.getAttribute('aria-label'), c.getBoundingClientRect().width, c.querySelectorAll('circle.run').length])""")
    assert charts == [["in-sample vs out-of-sample Sharpe", pytest.approx(charts[0][1]), len(RUNS)]]
    assert charts[0][1] > 300
    rows = browser.execute_script("""
        var table = document.getElementById('runs');
        var heads = Array.from(table.tHead.rows[0].cells).map(c => c.textContent);
        return Array.from(table.tBodies[0].rows).map(r => [r.cells[0].textContent,
            r.cells[heads.indexOf('sharpe')].getAttribute('data-value'), r.cells[heads.indexOf('sharpe')].textContent,
            r.querySelector('a') ? r.querySelector('a').href : null]);""")
    assert sorted(r[0] for r in rows) == sorted(RUNS)
    for run_id, value, text, href in rows:
        sharpe = site["metrics"][run_id]["sharpe"]
        assert float(value) == pytest.approx(sharpe, rel=1e-12) and text == TWO(sharpe)
        assert href == (site["runs"][run_id] / "report.html").resolve().as_uri()


def test_index_in_a_browser(browser, site):
    from selenium.webdriver.common.by import By

    page = open_page(browser, site["index"])
    assert_clean(page, images=0)
    cells = keyed_cells(browser, "tr[data-run] td[data-metric]")
    runs = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => [r.getAttribute('data-run'),"
        " r.cells[2].textContent, r.querySelector('a') ? r.querySelector('a').href : null])")
    assert sorted(r[0] for r in runs) == sorted([*RUNS, "20240101-000000-broken"])
    for name, status, href in runs:
        if name in RUNS:
            assert status == "ok" and href == (site["runs"][name] / "report.html").resolve().as_uri()
        else:
            assert status.startswith("incomplete: no metrics.json") and href is None
    for name in RUNS:
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-run="{name}"]')
        keyed = {c["metric"]: c for c in keyed_cells(browser, f'tr[data-run="{name}"] td[data-metric]')}
        assert sorted(keyed) == ["cagr", "max_drawdown", "oos_mse", "sharpe", "var_95"]
        for cell in keyed.values():
            assert_equal_to_metrics(cell, site["metrics"][name])
        assert f"strategy={name}" in row.text
    assert len(cells) == 15  # five metrics on each of three rows (the broken one's are empty)
    sweep_link = browser.find_element(By.CSS_SELECTOR, 'tr[data-sweep="demo"] a').get_attribute("href")
    assert sweep_link == site["summary"].resolve().as_uri()

    # Filtering and sorting run in the page itself.
    browser.find_element(By.CSS_SELECTOR, "input.filter").send_keys("regression")
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).filter(r => r.style.display !== 'none')"
        ".map(r => r.getAttribute('data-run'))")
    assert shown == ["regression"]
    assert browser.find_element(By.ID, "runs-count").text == "1 of 3 shown"
    open_page(browser, site["index"])
    sharpe_header = browser.find_elements(By.CSS_SELECTOR, "#runs thead th")[6]
    assert sharpe_header.text == "Sharpe"
    sharpe_header.click()
    order = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.getAttribute('data-run'))")
    by_sharpe = sorted(RUNS, key=lambda name: site["metrics"][name]["sharpe"])
    assert order == [*by_sharpe, "20240101-000000-broken"]  # ascending, the empty cell last
    assert browser.get_log("browser") == []


def test_comparison_in_a_browser(browser, site):
    page = open_page(browser, site["compare"])
    assert_clean(page, images=1)  # the equity and drawdown chart
    cells = keyed_cells(browser, "td[data-run][data-metric]")
    assert {c["run"] for c in cells} == set(RUNS)
    for cell in cells:
        metrics = dotted(site["metrics"][cell["run"]])
        expected = metrics[cell["metric"]]
        if expected is None:
            assert cell["value"] == ""
        else:
            assert float(cell["value"]) == pytest.approx(expected, rel=1e-12), cell
    keys = {c["metric"] for c in cells}
    assert {"sharpe", "cagr", "max_drawdown", "var_95", "oos_mse", "trades"} <= keys
    sharpe = {c["run"]: c for c in cells if c["metric"] == "sharpe"}
    for name in RUNS:
        assert sharpe[name]["text"] == f"{site['metrics'][name]['sharpe']:.4f}"
    assert not any(math.isnan(float(c["value"])) for c in cells if c["value"])
