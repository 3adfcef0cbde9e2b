"""End to end: the CLI on real data slices, clear errors for bad keys, determinism, and truncation invariance
of every rule through the whole pipeline (alignment, signals, walk-forward, risk, backtrader)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from engine.run import run
from tests.conftest import ROOT

CONF = str(ROOT / "conf")


def cli(*overrides, cwd=ROOT, tmp=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "engine.run", *overrides, f"paths.runs={tmp}", f"paths.cache={tmp}/cache"],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_cli_on_a_djia_slice_writes_every_output(shared_data, tmp_path):
    done = cli("signals/sentiment=lexicon", "data.start=2014-01-01", "data.end=2014-12-31", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Sharpe" in done.stdout and "report:" in done.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "cache"]
    for name in ["report.html", "metrics.json", "trades.csv", "equity.csv", "fills.csv", "signals.parquet", "config.yaml"]:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    equity = pd.read_csv(run_dir / "equity.csv")
    assert equity["date"].iloc[0] == "2014-01-02" and equity["date"].iloc[-1] == "2014-12-31"
    assert metrics["sessions"] == len(equity) == 252
    assert metrics["final_value"] == pytest.approx(equity["value"].iloc[-1])
    assert not list(run_dir.glob(".incomplete*"))
    assert "font" not in done.stderr.lower()


@pytest.mark.slow
def test_cli_on_stocknet(shared_data, tmp_path):
    done = cli("signals/sentiment=lexicon", "data=stocknet", "data.tickers=[AAPL,MSFT,XOM]", "data.end=2014-12-31",
               "report.enabled=false", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "cache"]
    # No report was asked for: none is named, the run folder is.
    assert "report:" not in done.stdout and f"run folder: {run_dir} (report.enabled=false)" in done.stdout
    assert not (run_dir / "report.html").exists()
    signals = pd.read_parquet(run_dir / "signals.parquet")
    assert sorted(signals.index.get_level_values("ticker").unique()) == ["AAPL", "MSFT", "XOM"]
    # With several instruments the target weights of a session never add up to more than 1.
    assert signals["target"].groupby(level="session").sum().max() <= 1 + 1e-9


@pytest.mark.parametrize("override,expected", [
    ("strategy.windw_sessions=3", "windw_sessions"),
    ("data=nosuch", "nosuch"),
    ("strategy.window_sessions=-2", "strategy.window_sessions"),
    ("broker.commission_bps=-1", "broker.commission_bps"),
])
def test_bad_keys_give_one_clear_line_and_leave_no_run_folder(override, expected, tmp_path, shared_data):
    done = cli("signals/sentiment=lexicon", "data.start=2014-01-01", "data.end=2014-03-31", override, tmp=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert expected in done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []


# --- a small planted csv dataset for the whole pipeline -------------------------------------------------------

GOOD, BAD = "strong profit gains beat expectations", "losses and litigation weak decline"


def write_dataset(folder: Path, n_sessions=360, seed=3):
    """Prices whose next open-to-open move follows the tone of the news published before the open."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-02", periods=n_sessions)
    tone = rng.choice([1, -1], size=n_sessions)
    moves = 0.006 * tone + 0.004 * rng.standard_normal(n_sessions)
    opens = 100 * np.cumprod(np.concatenate([[1.0], 1 + moves[:-1]]))
    closes = opens * (1 + moves * 0.5)
    pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "open": opens, "high": np.maximum(opens, closes) * 1.002,
                  "low": np.minimum(opens, closes) * 0.998, "close": closes, "volume": 1000}).to_csv(folder / "prices.csv", index=False)
    fillers = ["oil", "bank", "chip", "retail", "energy", "court", "merger", "factory", "consumer", "rates",
               "china", "europe", "software", "airline", "pharma", "mining"]
    stamps, texts = [], []
    for day, sign in zip(dates, tone):
        # Two items at 08:00 New York time on each session's own date (before its open): the toned one and
        # a neutral one, each with topical filler words.
        for lead, minute in ((GOOD if sign > 0 else BAD, "00"), ("market report", "05")):
            stamps.append(f"{day:%Y-%m-%d} 08:{minute}:00-05:00")
            texts.append(" ".join([lead, *rng.choice(fillers, size=3, replace=False)]))
    pd.DataFrame({"timestamp": stamps, "text": texts}).to_csv(folder / "news.csv", index=False)
    return dates


def compose_cfg(folder: Path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "data=csv", f"data.prices.path={folder}/prices.csv", "data.prices.ticker=PLANT",
            f"data.news.path={folder}/news.csv", "data.news.columns.ticker=null", "signals/sentiment=lexicon",
            "report.enabled=false",
            f"paths.cache={folder}/cache", "walk_forward.train_sessions=120", "walk_forward.step_sessions=60",
            "signals.topics.num_topics=3", "signals.topics.passes=1", "signals.topics.no_below=2", *overrides])


RULES = [
    ("sentiment", ["strategy.window_sessions=1", "strategy.baseline_sessions=null"]),
    ("regression", []),
    ("cluster", ["strategy.min_count=5"]),
]


@pytest.mark.parametrize("strategy,extra", RULES)
def test_truncation_leaves_earlier_decisions_unchanged(strategy, extra, tmp_path):
    dates = write_dataset(tmp_path)
    full = run(compose_cfg(tmp_path, f"strategy={strategy}", *extra), tmp_path / "full")
    fills = pd.read_csv(tmp_path / "full" / "fills.csv")
    assert len(fills) > 5
    for number, cut in enumerate([dates[200], dates[250], dates[301]]):
        cut_day = f"{cut:%Y-%m-%d}"
        run(compose_cfg(tmp_path, f"strategy={strategy}", *extra, f"data.end={cut_day}"), tmp_path / f"cut{number}")
        cut_fills = pd.read_csv(tmp_path / f"cut{number}" / "fills.csv")
        pd.testing.assert_frame_equal(cut_fills, fills[fills["date"] <= cut_day].reset_index(drop=True))
    assert full["final_value"] > 0


@pytest.mark.parametrize("strategy,extra", RULES)
def test_same_config_twice_gives_identical_numbers(strategy, extra, tmp_path):
    write_dataset(tmp_path)
    first = run(compose_cfg(tmp_path, f"strategy={strategy}", *extra), tmp_path / "a")
    second = run(compose_cfg(tmp_path, f"strategy={strategy}", *extra), tmp_path / "b")
    for metrics in (first, second):  # how long it took is no number of the run's
        metrics.pop("elapsed_seconds"), metrics.pop("run_dir"), metrics.pop("stage_seconds")
    assert first == second
    assert (tmp_path / "a" / "trades.csv").read_text() == (tmp_path / "b" / "trades.csv").read_text()
