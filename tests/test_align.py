"""Point-in-time alignment: each news item acts at the first open strictly after publication plus latency."""
import numpy as np
import pandas as pd
import pytest

from engine.align import align_news, session_grid
from engine.calendar import end_of_day
from engine.errors import ConfigError
from tests.conftest import make_news, make_prices

# Mon 6 .. Fri 10 Jan 2020, then Tue 21 Jan (Mon 20 is a holiday), then Mon 6 and Tue 7 Jul 2020 (EDT).
DATES = ["2020-01-06", "2020-01-07", "2020-01-08", "2020-01-09", "2020-01-10", "2020-01-21", "2020-07-06", "2020-07-07"]
PRICES = make_prices(DATES, range(100, 108), range(101, 109))


def session_of(stamp, latency=0, ticker="X"):
    aligned = align_news(make_news([(stamp, ticker, "n")]), PRICES, latency)
    return None if aligned.empty else aligned["session"].iloc[0]


def utc(text):
    return pd.Timestamp(text, tz="UTC")


def test_pre_open_news_acts_at_that_open():
    assert session_of("2020-01-07 08:00-05:00") == utc("2020-01-07 14:30")


def test_after_close_news_acts_next_open():
    assert session_of("2020-01-07 16:30-05:00") == utc("2020-01-08 14:30")


def test_news_during_the_session_waits_for_next_open():
    assert session_of("2020-01-07 11:00-05:00") == utc("2020-01-08 14:30")


def test_news_exactly_at_the_open_is_too_late_for_it():
    assert session_of("2020-01-07 09:30-05:00") == utc("2020-01-08 14:30")


def test_latency_pushes_to_next_session():
    assert session_of("2020-01-07 09:25-05:00", latency=0) == utc("2020-01-07 14:30")
    assert session_of("2020-01-07 09:25-05:00", latency=5) == utc("2020-01-08 14:30")
    assert session_of("2020-01-07 09:25-05:00", latency=4.9) == utc("2020-01-07 14:30")


def test_weekend_news_rolls_to_monday_and_holiday_news_to_next_session():
    assert session_of("2020-01-04 12:00-05:00") == utc("2020-01-06 14:30")
    assert session_of("2020-01-18 12:00-05:00") == utc("2020-01-21 14:30")  # Sat before MLK Monday
    assert session_of("2020-01-20 12:00-05:00") == utc("2020-01-21 14:30")  # the holiday itself


def test_date_only_news_counts_at_end_of_day():
    # A Reddit day (UTC) ends 2020-01-07 23:59:59.999999 UTC = 18:59 EST: after that close, so the 8th.
    stamp = end_of_day(pd.to_datetime(["2020-01-07"]), "UTC")[0]
    assert stamp == pd.Timestamp("2020-01-07 23:59:59.999999", tz="UTC")
    assert session_of(stamp) == utc("2020-01-08 14:30")
    # Friday's date-only news acts on Monday... here the next bar after Fri 10 Jan is Tue 21 Jan.
    assert session_of(end_of_day(pd.to_datetime(["2020-01-10"]), "America/New_York")[0]) == utc("2020-01-21 14:30")


def test_time_zones_and_daylight_saving():
    # 13:45 UTC is 08:45 EST in January (before the 14:30 UTC open) but 09:45 EDT in July (after 13:30 UTC).
    assert session_of("2020-01-07 13:45Z") == utc("2020-01-07 14:30")
    assert session_of("2020-07-06 13:45Z") == utc("2020-07-07 13:30")
    assert session_of("2020-07-06 09:29-04:00") == utc("2020-07-06 13:30")


def test_market_wide_news_reaches_every_ticker_and_late_news_is_dropped():
    prices = pd.concat([PRICES, PRICES.assign(ticker="Y")], ignore_index=True)
    news = make_news([("2020-01-07 08:00-05:00", "", "market"), ("2020-01-07 08:00-05:00", "Y", "only y"),
                      ("2020-01-07 08:00-05:00", "Z", "unknown ticker"), ("2020-07-08 08:00-04:00", "", "too late")])
    aligned = align_news(news, prices)
    assert sorted(zip(aligned["ticker"], aligned["text"])) == [("X", "market"), ("Y", "market"), ("Y", "only y")]



def test_many_tickers_match_a_one_item_at_a_time_reference():
    # 30 tickers, items for known, unknown and no ticker (market-wide) at random instants: each (item, ticker
    # it concerns) row must carry the first open strictly after publication + latency, worked out item by item.
    rng = np.random.default_rng(7)
    tickers = [f"T{i:02d}" for i in range(30)]
    prices = pd.concat([PRICES.assign(ticker=t) for t in tickers], ignore_index=True)
    prices["timestamp"] = prices["timestamp"].dt.as_unit("us")  # as engine.datasets loads them
    opens = sorted(PRICES["timestamp"])
    instants = pd.Timestamp("2020-01-05", tz="UTC") + pd.to_timedelta(rng.integers(0, 200 * 24 * 60, 400), "min")
    names = rng.choice([*tickers, "", "ZZZ"], 400)
    news = pd.DataFrame({"timestamp": instants, "ticker": names, "text": [f"n{i}" for i in range(400)],
                         "source": "test"}).sort_values("timestamp", ignore_index=True)
    expected = []
    for stamp, name, text in zip(news["timestamp"], news["ticker"], news["text"]):
        later = [o for o in opens if o > stamp + pd.Timedelta(minutes=7)]
        for ticker in (tickers if name == "" else [name] if name in tickers else []):
            if later:
                expected.append((ticker, later[0], stamp, text))
    aligned = align_news(news, prices, latency_minutes=7)
    assert list(zip(aligned["ticker"], aligned["session"], aligned["timestamp"], aligned["text"])) == sorted(
        expected, key=lambda row: (row[0], row[1], row[2]))
    assert aligned["session"].dtype == prices["timestamp"].dtype  # the prices' unit, whatever the stamps hold

def test_negative_latency_is_a_config_error():
    with pytest.raises(ConfigError, match="latency_minutes"):
        align_news(make_news([("2020-01-07 08:00Z", "X", "n")]), PRICES, -1)


def test_session_grid_price_features_use_previous_closes_only():
    features, outcomes = session_grid(PRICES)
    grid, outcome = features.loc["X"], outcomes.loc["X"]
    closes = list(range(101, 109))
    # return_1 on session 3 is close[1] / close[0] - 1: known before session 3 opens.
    assert grid["return_1"].iloc[2] == pytest.approx(closes[1] / closes[0] - 1)
    assert pd.isna(grid["return_1"].iloc[1])
    assert outcome["forward_return"].iloc[0] == pytest.approx(101 / 100 - 1)
    assert pd.isna(outcome["forward_return"].iloc[-1])
    # The session's own bar and forward_return are outcomes, never features.
    assert list(features.columns) == ["return_1", "return_5", "volatility_20"]
    assert list(outcomes.columns) == ["open", "high", "low", "close", "volume", "forward_return"]


def test_join_signals_gives_the_same_rows_whether_or_not_the_index_is_canonical():
    # A frame already in canonical dtypes is joined as it is; one with object tickers and stamps in another zone
    # and unit is converted first. Both must land on the same (ticker, session) rows: worked out by hand below.
    from engine.features import join_signals
    from engine.schema import canonical_signals

    sessions = pd.DatetimeIndex(["2020-01-06 14:30", "2020-01-07 14:30"], tz="UTC")
    features = canonical_signals(pd.DataFrame(
        {"return_1": [0.1, 0.2, 0.3, 0.4]},
        index=pd.MultiIndex.from_product([["X", "Y"], sessions], names=["ticker", "session"])))
    new_york = sessions[1:].tz_convert("America/New_York").as_unit("us")
    loose = pd.DataFrame({"topic_0": [0.7], "topics_count": [2.0]},
                         index=pd.MultiIndex.from_arrays([pd.Index(["Y"], dtype=object), new_york],
                                                         names=["ticker", "session"]))
    for frame in (loose, canonical_signals(loose)):
        joined = join_signals(features, frame, "signals.topics")
        assert joined.index.equals(features.index)
        assert joined["topic_0"].isna().tolist() == [True, True, True, False]
        assert joined["topic_0"].iloc[3] == 0.7
        assert joined["topics_count"].tolist() == [0.0, 0.0, 0.0, 2.0]
