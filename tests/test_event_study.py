"""Event types as a signal provider and the event study: the provider's columns on every session, each item's type
in news.parquet, the sentiment provider ordered before it; the mean cumulative abnormal return around planted
price jumps worked out by hand (universe benchmark, band, count, windows off the data, one ticker); the "Done
when" command on a headlines file without tickers; no event column changes when later data are cut away."""
from __future__ import annotations

import json
import os
from collections import Counter
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from engine.cache import CACHE_STATS
from engine.errors import ConfigError
from engine.features import assemble_features
from engine.providers import Slot, plan_providers
from engine.run import build_inputs
from engine.signal import SignalProvider
from reports.event_study import OFFSETS, RAW, UNIVERSE, event_study, event_study_section, write_event_study
from signals.events import EventSignals, event_columns
from signals.lexicon import LexiconSentiment
from tests.conftest import ROOT, make_prices

CONF = str(ROOT / "conf")


def open_of(day) -> pd.Timestamp:
    """The 09:30 New York open of ``day``, in UTC."""
    return pd.Timestamp(f"{pd.Timestamp(day):%Y-%m-%d} 09:30", tz="America/New_York").tz_convert("UTC")


def outcomes_of(*prices: pd.DataFrame) -> pd.DataFrame:
    return assemble_features(pd.concat(prices, ignore_index=True), []).outcomes


def events_at(dates, rows) -> pd.DataFrame:
    """news.parquet-like rows from (ticker, session number, event type)."""
    return pd.DataFrame({"ticker": [r[0] for r in rows], "session": [open_of(dates[r[1]]) for r in rows],
                         "event": [r[2] for r in rows]})


def curve(study: pd.DataFrame, event: str, column: str = "car") -> np.ndarray:
    return study.loc[study["event"] == event, column].to_numpy(dtype=float)


# --- the event study on planted jumps ----------------------------------------------------------------------------

def test_planted_jumps_give_the_car_worked_out_by_hand():
    dates = pd.bdate_range("2021-01-04", periods=32)
    # AAA's open is 100 up to session 12 and 110 after: its open-to-open return of session 12 is +10%. BBB's is 50
    # up to session 20 and 45 after: -10% at session 20. Every other return is 0.
    aaa = make_prices(dates, np.where(np.arange(32) <= 12, 100.0, 110.0), np.full(32, 100.0), ticker="AAA")
    bbb = make_prices(dates, np.where(np.arange(32) <= 20, 50.0, 45.0), np.full(32, 50.0), ticker="BBB")
    news = events_at(dates, [
        ("AAA", 12, "earnings"), ("AAA", 12, "earnings"),  # two items, one event
        ("AAA", 3, "earnings"),    # offset -5 would be session -2: off the data
        ("BBB", 25, "earnings"),   # offset +10 would be session 35: off the data
        ("BBB", 20, "management_change"),
    ])
    study = event_study(news, outcomes_of(aaa, bbb))
    assert list(study["event"].unique()) == ["earnings", "management_change"]
    assert list(study["offset"]) == list(range(-5, 11)) * 2
    assert (study["abnormal_to"] == UNIVERSE).all()
    # The universe (mean of both) returns +5% at session 12 and -5% at session 20. AAA's earnings window is
    # sessions 7..22: abnormal +10% - 5% = +5% at offset 0 (session 12) and 0 - (-5%) = +5% at offset 8 (session 20).
    earnings = study[study["event"] == "earnings"]
    assert (earnings["events"] == 1).all() and (earnings["events_off_data"] == 2).all()
    expected = [0.0] * 5 + [0.05] * 8 + [0.10] * 3
    assert np.allclose(curve(study, "earnings"), expected, atol=1e-12)
    assert np.allclose(curve(study, "earnings", "abnormal_return"),
                       [0.0] * 5 + [0.05] + [0.0] * 7 + [0.05, 0.0, 0.0], atol=1e-12)
    assert earnings["car_low"].isna().all() and earnings["car_high"].isna().all()  # one event: no band
    # BBB's management change at session 20: -10% - (-5%) = -5% at offset 0; AAA's jump at session 12 is offset -8.
    change = study[study["event"] == "management_change"]
    assert (change["events"] == 1).all() and (change["events_off_data"] == 0).all()
    assert np.allclose(curve(study, "management_change"), [0.0] * 5 + [-0.05] * 11, atol=1e-12)


def test_band_and_count_with_one_ticker_in_raw_returns(tmp_path):
    dates = pd.bdate_range("2021-01-04", periods=45)
    # One instrument: +10% at session 10 (100 -> 110), +2% at session 30 (110 -> 112.2), else 0.
    opens = np.select([np.arange(45) <= 10, np.arange(45) <= 30], [100.0, 110.0], 112.2)
    news = events_at(dates, [("X", 10, "guidance"), ("X", 30, "guidance"), ("X", 40, "guidance")])
    study = event_study(news, outcomes_of(make_prices(dates, opens, opens)))
    assert (study["abnormal_to"] == RAW).all()  # its only benchmark is itself: raw returns
    assert (study["events"] == 2).all() and (study["events_off_data"] == 1).all()  # session 40 + 10 is past the end
    # At offsets 0..10 the two CARs are 0.10 and 0.02: mean 0.06, sample std 0.08 / sqrt(2), standard error
    # 0.08 / 2 = 0.04, band 0.06 -+ 1.96 * 0.04. Before: both 0, a band of width 0.
    assert np.allclose(curve(study, "guidance"), [0.0] * 5 + [0.06] * 11, atol=1e-12)
    assert np.allclose(curve(study, "guidance", "car_low"), [0.0] * 5 + [0.06 - 0.0784] * 11, atol=1e-12)
    assert np.allclose(curve(study, "guidance", "car_high"), [0.0] * 5 + [0.06 + 0.0784] * 11, atol=1e-12)
    # The file and the tear sheet's section say what the curve is measured against.
    path = write_event_study(tmp_path, news, outcomes_of(make_prices(dates, opens, opens)))
    assert pd.read_csv(path)["car"].round(12).tolist() == study["car"].round(12).tolist()
    section = event_study_section(tmp_path)
    assert section.startswith("<h3>Event study</h3>") and "raw returns" in section and "<img alt=" in section
    assert "<td>guidance</td><td>2</td><td>1</td><td>0.00%</td><td>6.00%</td><td>6.00%</td>" in section
    # Without event types (the provider off) there is no file, and no section.
    assert write_event_study(tmp_path / "none", news.drop(columns="event"), study) is None
    assert event_study_section(tmp_path / "none") == ""


# --- the provider --------------------------------------------------------------------------------------------------

def test_the_provider_counts_averages_and_marks_novel_types_on_every_session():
    dates = pd.bdate_range("2021-01-04", periods=5)
    sessions = pd.MultiIndex.from_product([["AAA", "BBB"], [open_of(d) for d in dates]], names=["ticker", "session"])
    news = pd.DataFrame({
        "ticker": ["AAA", "AAA", "AAA", "BBB"],
        "session": [open_of(dates[0]), open_of(dates[0]), open_of(dates[3]), open_of(dates[1])],
        "text": ["Intel quarterly profit beats analyst estimates", "$NFLX reports Q2 EPS of $0.42 vs $0.35 expected",
                 "Siemens net income fell 12% in the fourth quarter", "Microsoft names Satya Nadella CEO"],
        "sentiment": [0.5, -0.1, 0.2, 0.9]})
    provider = EventSignals(sentiment="sentiment", novelty_sessions=2)
    assert provider.item_needs == ("sentiment",) and provider.produces == tuple(event_columns(True))
    frame = provider.transform(news, sessions=sessions)
    assert frame.index.equals(sessions)  # every session of each ticker, news or not
    aaa, bbb = frame.xs("AAA"), frame.xs("BBB")
    assert aaa["event_earnings_count"].tolist() == [2, 0, 0, 1, 0]
    assert np.allclose(aaa["event_earnings_sentiment"].to_numpy(), [0.2, np.nan, np.nan, 0.2, np.nan], equal_nan=True)
    # novel: none of the type in the ticker's 2 previous sessions (session 3's earnings: sessions 1, 2 had none).
    assert aaa["event_earnings_novel"].tolist() == [1, 0, 0, 1, 0]
    assert bbb["event_management_change_count"].tolist() == [0, 1, 0, 0, 0]
    assert bbb["event_management_change_novel"].tolist() == [0, 1, 0, 0, 0]
    assert bbb["event_earnings_count"].sum() == 0
    assert provider.item_scores(news)["event"].tolist() == ["earnings", "earnings", "earnings", "management_change"]
    # Without a sentiment column to read: no event_<type>_sentiment, and it reads the news alone.
    plain = EventSignals(sentiment=None, novelty_sessions=20)
    assert plain.item_needs == () and plain.transform(news, sessions=sessions).columns.tolist() == event_columns(False)


class LearnedScores(SignalProvider):
    """A learned news reader with a per-item score, for the plan's refusal."""

    name = "learnedscores"
    columns = ("score",)
    item_columns = ("score",)
    learned = True


def test_the_plan_runs_sentiment_before_the_events_that_read_its_item_scores():
    events, lexicon = EventSignals("sentiment", 20), LexiconSentiment("wordlists")
    plan = plan_providers([Slot("signals.events", events), Slot("signals.sentiment", lexicon)], ["return_1"])
    assert [slot.key for slot in plan.fixed] == ["signals.sentiment", "signals.events"] and plan.windowed == []
    with pytest.raises(ConfigError) as error:
        plan_providers([Slot("signals.events", events)], ["return_1"])
    assert str(error.value) == ("signals.events: reads each item's 'sentiment', which no other enabled provider "
                                "gives per item")
    with pytest.raises(ConfigError) as error:
        plan_providers([Slot("signals.events", EventSignals("score", 20)), Slot("signals.s", LearnedScores())], [])
    assert str(error.value) == ("signals.events: reads per-item columns (score), which exist only for providers "
                                "computed once over all the data; it may not be learned nor read a learned provider's")


# --- the "Done when" command ------------------------------------------------------------------------------------

SESSIONS = 80
JUMPS = (20, 50)  # AAA's open-to-open return is +10% at these sessions, every other return of every ticker is 0
HEADLINES = [  # (session, text): no ticker column; the linker finds the companies by name
    *[(day, "Acmetronix quarterly profit beats estimates") for day in (2, *JUMPS)],
    (20, "Acmetronix reports record quarterly revenue"),  # a second earnings item of the same session: one event
    (35, "Qorvantix names new chief executive"),
    (60, "Central bank holds rates steady"),  # names no company: market-wide, one event per ticker
    *[(day, "Zentrolux shares trade quietly") for day in range(SESSIONS)],
]


@pytest.fixture(scope="module")
def headlines(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("headlines")
    dates = pd.bdate_range("2021-01-04", periods=SESSIONS)
    step = np.zeros(SESSIONS)
    for day in JUMPS:
        step[day + 1:] += 1
    opens = {"AAA": 100 * 1.1 ** step, "BBB": np.full(SESSIONS, 50.0), "CCC": np.full(SESSIONS, 20.0)}
    pd.concat([pd.DataFrame({"ticker": ticker, "date": dates.strftime("%Y-%m-%d"), "open": values,
                             "high": values * 1.01, "low": values * 0.99, "close": values, "volume": 1000})
               for ticker, values in opens.items()]).to_csv(folder / "prices.csv", index=False)
    # Naive stamps, 12:00 UTC: 07:00 in New York, before that day's open.
    pd.DataFrame([(f"{dates[day]:%Y-%m-%d} 12:00:00", text) for day, text in HEADLINES],
                 columns=["timestamp", "text"]).to_csv(folder / "headlines.csv", index=False)
    (folder / "securities.csv").write_text("ticker,name\nAAA,Acmetronix Inc\nBBB,Qorvantix Corp\nCCC,Zentrolux Corp\n")
    lists = folder / "roots" / "loughran-mcdonald-wordlists"
    lists.mkdir(parents=True)
    (lists / "LoughranMcDonald_Positive.csv").write_text("PROFIT,2009\nRECORD,2009\n", encoding="ascii")
    (lists / "LoughranMcDonald_Negative.csv").write_text("QUIETLY,2009\n", encoding="ascii")
    return folder


def done_when(folder: Path, *extra: str, cache: Path | None = None) -> list[str]:
    """The README's command on these files; for a test this small and fast: the lexicon, no topics or regimes (LDA
    needs more distinct texts than six), a short walk-forward."""
    return ["data=csv", f"data.prices.path={folder}/prices.csv", f"data.news.path={folder}/headlines.csv",
            "data.news.columns.ticker=null", "data.news.timezone=UTC", "data.news.link_tickers=fill-missing",
            "strategy=regression", "strategy.features=[sentiment,event_*]",
            f"data.securities=[{folder}/securities.csv]", "signals/sentiment=lexicon", f"paths.roots=[{folder}/roots]", f"paths.cache={cache or folder / 'cache'}",
            f"paths.runs={folder}/runs",  # no runs/index.html written into the project
            "signals.topics.enabled=false", "signals.regimes.enabled=false", "walk_forward.train_sessions=40",
            "walk_forward.step_sessions=20", *extra]


def test_done_when_headlines_without_tickers_reach_the_event_study(headlines):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "engine.run", *done_when(headlines, f"hydra.run.dir={headlines}/run")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = headlines / "run"
    news = pd.read_parquet(run / "news.parquet")
    by_text = news.drop_duplicates("text").set_index("text")
    assert by_text.loc["Acmetronix quarterly profit beats estimates", ["ticker", "link_method", "event"]].tolist() == \
        ["AAA", "name", "earnings"]
    assert by_text.loc["Qorvantix names new chief executive", "event"] == "management_change"
    study = pd.read_csv(run / "event_study.csv")
    # Earnings: sessions 20 and 50 (session 2 runs off the data). Three tickers: the universe returns +10% / 3 at a
    # jump, so AAA's abnormal return at offset 0 is 0.1 - 0.1 / 3 = 1 / 15, and 0 at every other offset.
    earnings = study[study["event"] == "earnings"]
    assert (earnings["events"] == 2).all() and (earnings["events_off_data"] == 1).all()
    assert np.allclose(earnings["car"], [0.0] * 5 + [1 / 15] * 11, atol=1e-12)
    assert np.allclose(earnings["car_low"], earnings["car"], atol=1e-9)  # the same jump twice: a band of width 0
    # Zentrolux's daily items: sessions 5..68 have a whole window (the last return is session 78's).
    other = study[study["event"] == "other"]
    assert (other["events"] == 64).all() and (other["events_off_data"] == 16).all()
    macro = study[study["event"] == "macro_market"]
    assert (macro["events"] == 3).all() and np.allclose(macro["car"], 0.0)  # market-wide, in a quiet window
    assert (study["abnormal_to"] == UNIVERSE).all()
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "<h3>Event study</h3>" in report and "event study: mean cumulative abnormal return" in report
    assert "<td>earnings</td><td>2</td><td>1</td><td>0.00%</td><td>6.67%</td><td>6.67%</td>" in report
    # The rule read the event columns: they are features of every session.
    signals = pd.read_parquet(run / "signals.parquet")
    assert signals.xs("AAA")["event_earnings_count"].loc[open_of(pd.bdate_range("2021-01-04", periods=51)[50])] == 1
    assert json.loads((run / "metrics.json").read_text())["news_linking"]["by_method"]["name"] > 0


def test_cutting_the_data_at_a_date_leaves_every_earlier_event_column_unchanged(headlines):
    cut = pd.bdate_range("2021-01-04", periods=SESSIONS)[52]  # two sessions after the second jump
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        full = build_inputs(compose("config", overrides=done_when(headlines)))
        short = build_inputs(compose("config", overrides=done_when(headlines, f"data.end={cut:%Y-%m-%d}")))
    columns = [c for c in full.features.columns if c.startswith("event_")]
    assert len(columns) == 30 and columns == [c for c in short.features.columns if c.startswith("event_")]
    earlier = short.features.index
    assert pd.DatetimeIndex(earlier.get_level_values("session")).max() == open_of(cut)
    pd.testing.assert_frame_equal(full.features.loc[earlier, columns], short.features[columns])
    assert full.features.loc[earlier, "event_earnings_count"].sum() == 4  # AAA's items: at 2, two at 20, at 50


def test_the_events_are_cached_under_a_key_that_covers_the_item_sentiment_they_read(headlines, tmp_path):
    def build(*extra: str) -> tuple[dict, pd.DataFrame]:
        before = Counter(CACHE_STATS)
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            inputs = build_inputs(compose("config", overrides=done_when(headlines, *extra, cache=tmp_path / "cache")))
        delta = {k: v for k, v in (Counter(CACHE_STATS) - before).items() if k.startswith(("events", "lexicon"))}
        return delta, inputs.features

    first, features = build()
    assert first == {"lexicon.miss": 1, "lexicon-items.miss": 1, "events.miss": 1, "events-items.miss": 1}
    again, same = build()
    assert again == {"lexicon.hit": 1, "lexicon-items.hit": 1, "events.hit": 1, "events-items.hit": 1}
    pd.testing.assert_frame_equal(features, same)
    # Other word lists: other item sentiment, so other event columns (the types per item are the same texts').
    lists = tmp_path / "roots" / "loughran-mcdonald-wordlists"
    lists.mkdir(parents=True)
    (lists / "LoughranMcDonald_Positive.csv").write_text("QUIETLY,2009\n", encoding="ascii")
    (lists / "LoughranMcDonald_Negative.csv").write_text("PROFIT,2009\n", encoding="ascii")
    changed, other = build(f"paths.roots=[{tmp_path / 'roots'}]")
    assert changed == {"lexicon.miss": 1, "lexicon-items.miss": 1, "events.miss": 1, "events-items.hit": 1}
    assert other["event_other_sentiment"].max() == 1.0 and features["event_other_sentiment"].max() == -1.0
