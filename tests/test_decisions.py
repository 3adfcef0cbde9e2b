"""decisions.csv and the tear sheet's "Decisions" section (reports/decisions.py): why each trade happened.

A planted csv dataset where known headlines on known days make the sentiment rule enter, exit, re-enter and be
stopped out by a price gap; the expected rows (action, session, headline order, scores, contributions, stop
level) are worked out by hand below. Then the learned rules: the cluster rule's regime with its training mean
and t-statistic from the walk-forward window that decided the session, the regression's forecast.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT

CONF = str(ROOT / "conf")
SCRIPT = "<script>alert(1)</script> & strong gains"  # Loughran-McDonald: strong, gains positive: tone 1
MILD = "gains but losses and decline"  # gains positive; losses, decline negative: tone (1 - 2) / 3 = -1/3
NEUTRAL = "market report"  # no LM word: tone 0
BAD = "losses weak decline"  # tone -1
WEAK = "weak losses"  # tone -1
UPBEAT = "gains ahead"  # tone 1
GOOD = "strong gains"  # tone 1


def run_folder(folder: Path, run_dir: Path, overrides: list[str]) -> Path:
    from engine.run import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=csv", f"data.prices.path={folder}/prices.csv", f"data.news.path={folder}/news.csv",
            "signals/sentiment=lexicon", f"paths.cache={folder}/cache", *overrides])
    run(cfg, run_dir)
    return run_dir


# --- the sentiment rule on 16 hand-made sessions ------------------------------------------------------------------

DATES = pd.bdate_range("2021-03-01", periods=16)  # index 3: Thu 2021-03-04 ... index 10: Mon 2021-03-15


def write_planted(folder: Path) -> None:
    """Opens and closes at 100, except a gap to 80 at session 10; news at 08:00 New York (13:00 UTC before the
    14 March DST change), before the 09:30 open of its own day."""
    opens = np.full(len(DATES), 100.0)
    opens[10:] = 80.0
    pd.DataFrame({"ticker": "PLANT", "date": DATES.strftime("%Y-%m-%d"), "open": opens, "high": opens + 1,
                  "low": opens - 1, "close": opens, "volume": 1000}).to_csv(folder / "prices.csv", index=False)
    rows = [(1, "08:00", MILD), (3, "08:00", SCRIPT), (3, "08:05", NEUTRAL), (6, "08:00", BAD), (6, "08:05", WEAK),
            (6, "08:10", UPBEAT), (9, "08:00", GOOD)]
    pd.DataFrame([(f"{DATES[day]:%Y-%m-%d}T{time}:00-05:00", "PLANT", text) for day, time, text in rows],
                 columns=["timestamp", "ticker", "text"]).to_csv(folder / "news.csv", index=False)


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory, request) -> Path:
    if not (ROOT / ".." / "shared" / "data" / "loughran-mcdonald-wordlists").is_dir():
        pytest.skip("the Loughran-McDonald word lists of ../shared/data are needed")
    folder = tmp_path_factory.mktemp("planted")
    write_planted(folder)
    return run_folder(folder, folder / "run", PLANTED)


# Window of 3 sessions, no baseline, long above 0; no costs, no VaR scaling: the fills are hand-worked.
PLANTED = ["strategy=sentiment", "strategy.window_sessions=3", "strategy.baseline_sessions=null",
           "strategy.threshold=0", "broker.commission_bps=0", "broker.slippage_bps=0", "risk.var_limit=null",
           "risk.stop_loss=0.1", "signals.topics.enabled=false", "signals.regimes.enabled=false"]


def test_the_headline_that_made_the_rule_enter_comes_first(sentiment_run):
    decisions = pd.read_csv(sentiment_run / "decisions.csv")
    entry = decisions.iloc[0]
    assert (entry["session"], entry["action"], entry["ticker"]) == ("2021-03-04", "entry", "PLANT")
    assert entry["size_before"] == 0 and entry["size_after"] > 0
    # The window is sessions 03-02..03-04; sessions with news: 03-02 (MILD) and 03-04 (SCRIPT, NEUTRAL). The
    # rule's score: mean(-1/3, mean(1, 0)) = 1/12 > 0. Contributions: SCRIPT 1/(2*2)*1 = 1/4, MILD 1/2*(-1/3)
    # = -1/6, NEUTRAL 0 (they add up to the score). Ranked toward the positive side: SCRIPT, NEUTRAL, MILD.
    assert entry["news_since"] == "2021-03-02T14:30:00+00:00" and entry["news_items"] == 3
    assert [entry[f"headline_{k}"] for k in (1, 2, 3)] == [SCRIPT, NEUTRAL, MILD]
    assert [entry[f"headline_{k}_score"] for k in (1, 2, 3)] == pytest.approx([1, 0, -1 / 3])
    assert [entry[f"headline_{k}_contribution"] for k in (1, 2, 3)] == pytest.approx([1 / 4, 0, -1 / 6])
    inputs = json.loads(entry["inputs"])
    assert inputs["sentiment_score"] == pytest.approx(1 / 12) and inputs["sentiment"] == pytest.approx(1 / 2)
    # Known in time: published at 08:00 New York, before the 09:30 open it first informs, the entry's session.
    assert entry["headline_1_published"] == "2021-03-04T13:00:00+00:00"
    assert entry["headline_1_session"] == entry["session_open"] == "2021-03-04T14:30:00+00:00"
    assert entry["headline_3_published"] == "2021-03-02T13:00:00+00:00"
    assert entry["headline_3_session"] == "2021-03-02T14:30:00+00:00"
    assert pd.Timestamp(entry["headline_1_published"]) < pd.Timestamp(entry["session_open"])


def test_exit_reentry_and_stop_have_their_actions(sentiment_run):
    decisions = pd.read_csv(sentiment_run / "decisions.csv")
    # 03-09: the window 03-05..03-09 holds the three items of 03-09: BAD, WEAK (-1 each) and UPBEAT (+1), each
    # weighing 1/3: the score is -1/3, an exit. Ranked toward the negative side: WEAK and BAD (-1/3 each; WEAK
    # published later), then UPBEAT (+1/3), although UPBEAT was published last. 03-12: GOOD, long again.
    # 03-15: the open gaps to 80, under the stop at 100 * (1 - 0.1) = 90: a stop at the open. The rule still
    # wants the long (GOOD is in its window), so the open's rebalance buys what the near-zero cash allows first.
    rows = decisions[decisions["action"].isin(["entry", "exit", "stop"])]
    assert list(zip(rows["session"], rows["action"])) == [
        ("2021-03-04", "entry"), ("2021-03-09", "exit"), ("2021-03-12", "entry"), ("2021-03-15", "stop")]
    exit_row = rows.iloc[1]
    assert exit_row["size_after"] == 0 and exit_row["news_items"] == 3
    assert [exit_row[f"headline_{k}"] for k in (1, 2, 3)] == [WEAK, BAD, UPBEAT]
    assert [exit_row[f"headline_{k}_contribution"] for k in (1, 2, 3)] == pytest.approx([-1 / 3, -1 / 3, 1 / 3])
    assert json.loads(exit_row["inputs"])["sentiment_score"] == pytest.approx(-1 / 3)
    stop = rows.iloc[3]
    assert stop["fill_price"] == 80.0 and stop["size_after"] == 0 and stop["size_before"] > 0
    assert stop["entry_price"] == pytest.approx(100.0, rel=1e-6)
    assert stop["stop_price"] == pytest.approx(90.0, rel=1e-6)
    assert json.loads(stop["inputs"])["stop_loss"] == 0.1
    assert pd.isna(stop["headline_1"]) and stop["news_items"] == 0  # a stop is a price level, not news
    fills = pd.read_csv(sentiment_run / "fills.csv")
    assert len(decisions) == len(fills) and (fills["kind"] == "stop").sum() == 1


def test_cutting_the_data_leaves_earlier_decisions_unchanged(sentiment_run):
    # Cut after 03-12, the re-entry: the decisions up to it, their headlines included, are the same rows.
    cut = run_folder(sentiment_run.parent, sentiment_run.parent / "cut", [*PLANTED, "data.end=2021-03-12"])
    full = pd.read_csv(sentiment_run / "decisions.csv")
    pd.testing.assert_frame_equal(pd.read_csv(cut / "decisions.csv"),
                                  full[full["session"] <= "2021-03-12"].reset_index(drop=True))


def test_report_shows_the_decisions_escaped(sentiment_run):
    from reports.tearsheet import write_tearsheet

    page = write_tearsheet(sentiment_run).read_text(encoding="utf-8")
    assert "<h2>Decisions</h2>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; strong gains" in page
    assert "alert(1)</script>" not in page and "<script>alert" not in page
    assert "5 decisions (2 entry, 1 exit, 1 increase, 1 stop)" in page


def test_the_section_keeps_the_most_recent(sentiment_run):
    from reports.decisions import decisions_section

    section = decisions_section(sentiment_run, limit=2)
    assert "the 2 most recent are shown" in section
    # The stop and the increase before it, both on 03-15, newest (the stop) first; the header row besides.
    assert section.count("<tr>") == 3
    assert section.index("<td>stop</td>") < section.index("<td>increase</td>")
    assert ">2021-03-12</td>" not in section and ">2021-03-04</td>" not in section and ">2021-03-15</td>" in section
    assert decisions_section(sentiment_run.parent) == ""  # no decisions.csv there: no section


def test_tickers_stay_as_written_and_no_fills_is_said(sentiment_run, tmp_path):
    import shutil

    from reports.decisions import build_decisions, decisions_section, write_decisions

    # A ticker that reads as a number ("0700") keeps its leading zero from fills.csv to decisions.csv.
    folder = tmp_path / "renamed"
    shutil.copytree(sentiment_run, folder)
    signals = pd.read_parquet(folder / "signals.parquet").rename(index={"PLANT": "0700"}, level="ticker")
    signals.to_parquet(folder / "signals.parquet")
    (folder / "fills.csv").write_text((folder / "fills.csv").read_text().replace(",PLANT,", ",0700,"))
    news = pd.read_parquet(folder / "news.parquet")
    news.assign(ticker="0700").to_parquet(folder / "news.parquet")
    window = pd.DataFrame({"since": signals.index.get_level_values("session"), "baseline": 0.0}, index=signals.index)
    decisions = build_decisions(folder, signals[["sentiment"]], window)
    assert list(decisions["ticker"].unique()) == ["0700"] and decisions["headline_1"].iloc[0] == SCRIPT
    # A run without fills: decisions.csv with its header only, and the section says the rule never traded.
    (folder / "fills.csv").write_text("date,ticker,size,price,commission,kind\n")
    write_decisions(folder, signals[["sentiment"]], window)
    assert pd.read_csv(folder / "decisions.csv").empty
    assert "No fills: the rule never traded." in decisions_section(folder)


def test_fill_actions_by_hand():
    from reports.decisions import fill_actions

    fills = pd.DataFrame({
        "date": ["d1", "d2", "d3", "d4", "d5"], "ticker": "X",
        "size": [10.0, 5.0, -3.0, -22.0, 10.0], "price": [100.0, 110.0, 120.0, 90.0, 99.5],
        "kind": ["rebalance", "rebalance", "rebalance", "rebalance", "stop"]})
    actions = fill_actions(fills, stop_loss=0.1)
    assert list(actions["action"]) == ["entry", "increase", "decrease", "reversal", "stop"]
    assert list(actions["size_before"]) == [0, 10, 15, 12, -10]
    assert list(actions["size_after"]) == [10, 15, 12, -10, 0]
    # Entry 100; grown by 5 at 110: (10*100 + 5*110) / 15; shrinking keeps it; the reversal resets it to 90;
    # the short's stop is 90 * 1.1 = 99.
    stop = actions.iloc[4]
    assert stop["entry_price"] == pytest.approx(90.0) and stop["stop_price"] == pytest.approx(99.0)
    assert actions["entry_price"].iloc[:4].isna().all()


def test_rules_say_what_they_read():
    from strategies.buy_and_hold import BuyAndHold
    from strategies.regression import RegressionRule

    index = pd.MultiIndex.from_product([["A"], pd.date_range("2020-01-01", periods=30, tz="UTC")],
                                       names=["ticker", "session"])
    rng = np.random.default_rng(0)
    features = pd.DataFrame({"sentiment": rng.standard_normal(30), "return_1": np.nan, "topic_0": 0.5,
                             "topic_1": rng.standard_normal(30)}, index=index)
    rule = RegressionRule("ridge", 1.0, ["sentiment", "return_1", "topic_*"], 0.0, False, 10)
    assert list(rule.inputs(features)) == ["sentiment", "return_1", "topic_0", "topic_1"]  # the patterns
    rule.fit(features, pd.Series(rng.standard_normal(30), index=index))
    assert list(rule.inputs(features)) == ["sentiment", "topic_0", "topic_1"]  # return_1 had no value to learn
    assert BuyAndHold().inputs(features).shape == (30, 0) and BuyAndHold().news_window(features) is None


# --- the learned rules ------------------------------------------------------------------------------------------

TRAIN, STEP, SESSIONS = 100, 50, 200


def write_toned(folder: Path) -> pd.DatetimeIndex:
    """One ticker whose next open-to-open move follows the tone of the news published before the open."""
    rng = np.random.default_rng(7)
    dates = pd.bdate_range("2019-01-02", periods=SESSIONS)
    tone = rng.choice([1, -1], size=SESSIONS)
    moves = 0.006 * tone + 0.004 * rng.standard_normal(SESSIONS)
    opens = 100 * np.cumprod(np.concatenate([[1.0], 1 + moves[:-1]]))
    closes = opens * (1 + moves * 0.5)
    pd.DataFrame({"ticker": "PLANT", "date": dates.strftime("%Y-%m-%d"), "open": opens,
                  "high": np.maximum(opens, closes) * 1.002, "low": np.minimum(opens, closes) * 0.998,
                  "close": closes, "volume": 1000}).to_csv(folder / "prices.csv", index=False)
    rows = [(f"{day:%Y-%m-%d}T08:00:00-05:00", "PLANT", "strong profit gains" if sign > 0 else "losses weak decline")
            for day, sign in zip(dates, tone)]
    pd.DataFrame(rows, columns=["timestamp", "ticker", "text"]).to_csv(folder / "news.csv", index=False)
    return dates


LEARNED = ["signals.topics.enabled=false", f"walk_forward.train_sessions={TRAIN}",
           f"walk_forward.step_sessions={STEP}", "report.enabled=false"]


def test_cluster_decisions_show_the_regime_of_their_window(tmp_path):
    if not (ROOT / ".." / "shared" / "data" / "loughran-mcdonald-wordlists").is_dir():
        pytest.skip("the Loughran-McDonald word lists of ../shared/data are needed")
    dates = write_toned(tmp_path)
    run_dir = run_folder(tmp_path, tmp_path / "run", [
        "strategy=cluster", "strategy.min_count=5", "signals.regimes.features=[sentiment,return_5]",
        "signals.regimes.n_init=2", *LEARNED])
    decisions = pd.read_csv(run_dir / "decisions.csv")
    ruled = decisions[decisions["action"].isin(["entry", "exit"])]
    assert len(ruled) >= 4
    signals = pd.read_parquet(run_dir / "signals.parquet")
    regime_map = pd.read_csv(run_dir / "regime_map.csv")
    # The walk-forward's test windows start at sessions 100 and 150.
    starts = [dates[TRAIN], dates[TRAIN + STEP]]
    assert sorted(regime_map["window_start"].unique()) == [f"{start:%Y-%m-%d}" for start in starts]
    in_second = 0
    for _, row in ruled.iterrows():
        session = pd.Timestamp(row["session"])
        start = starts[1] if session >= starts[1] else starts[0]
        in_second += session >= starts[1]
        regime = signals.loc[("PLANT", pd.Timestamp(row["session_open"])), "regime"]
        assert row["regime"] == regime and json.loads(row["inputs"]) == {"regime": regime}
        learned = regime_map[(regime_map["window_start"] == f"{start:%Y-%m-%d}") & (regime_map["regime"] == regime)]
        assert row["regime_mean_return"] == pytest.approx(learned["mean_return"].item())
        assert row["regime_t_stat"] == pytest.approx(learned["t_stat"].item())
        # The rule goes long exactly in regimes whose training t-statistic is above min_t_stat (1.0).
        assert (row["regime_t_stat"] > 1.0) == (row["action"] == "entry")
        assert row["news_items"] == 1 and row["headline_1_session"] == row["session_open"]
    assert in_second > 0  # some decisions read the second window's map, not the first's


def test_regression_decisions_show_the_forecast(tmp_path):
    if not (ROOT / ".." / "shared" / "data" / "loughran-mcdonald-wordlists").is_dir():
        pytest.skip("the Loughran-McDonald word lists of ../shared/data are needed")
    write_toned(tmp_path)
    run_dir = run_folder(tmp_path, tmp_path / "run", [
        "strategy=regression", "strategy.features=[sentiment,return_1]", "strategy.min_train_rows=50",
        "signals.regimes.enabled=false", *LEARNED])
    decisions = pd.read_csv(run_dir / "decisions.csv")
    ruled = decisions[decisions["action"].isin(["entry", "exit"])]
    assert len(ruled) >= 4
    predictions = pd.read_csv(run_dir / "predictions.csv")
    predictions["session"] = pd.to_datetime(predictions["session"], utc=True)
    forecast = predictions.set_index("session")["prediction"]
    for _, row in ruled.iterrows():
        assert row["prediction"] == pytest.approx(forecast[pd.Timestamp(row["session_open"])])
        # Long exactly when the forecast is above the threshold (0).
        assert (row["prediction"] > 0) == (row["action"] == "entry")
        assert list(json.loads(row["inputs"])) == ["sentiment", "return_1"]
        assert pd.isna(row["regime"])
