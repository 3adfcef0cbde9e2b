"""No news item is lost silently: naive stamps need their zone, a missing ticker column is an error, and every
item dropped on the way from the files to the sessions is counted by reason (metrics.json) and warned about."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from engine.align import align_news, news_accounting, news_drop_report, news_drops
from engine.datasets import load_dataset
from engine.errors import ConfigError, DataError
from tests.conftest import ROOT, make_news, make_prices


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def csv_config(folder: Path, prices: str, news: str, **news_keys) -> dict:
    """The shipped conf/data/csv.yaml (its defaults live there only) pointed at two files written here."""
    config = yaml.safe_load((ROOT / "conf" / "data" / "csv.yaml").read_text())
    (folder / "prices.csv").write_text(prices)
    (folder / "news.csv").write_text(news)
    config["prices"]["path"] = str(folder / "prices.csv")
    config["news"]["path"] = str(folder / "news.csv")
    config["news"].update(news_keys)
    return config


PRICES = "date,ticker,open,high,low,close,volume\n2016-01-04,AAA,10,11,9,10,1\n2016-01-05,AAA,10,11,9,10,1\n"
NO_DROPS = {"empty_text": 0, "duplicate": 0, "retweet": 0, "other_language": 0, "outside_start_end": 0,
            "before_first_session": 0, "after_last_session": 0, "unknown_ticker": 0, "unknown_tickers_top": {}}


# ---------------------------------------------------------------------------------------------------------------
# (A) a stamp without a zone is never read in a guessed one


def test_naive_stamp_without_a_timezone_is_a_config_error_naming_the_key_the_file_and_the_line(tmp_path):
    news = "timestamp,ticker,text\n2016-01-04T08:00:00-05:00,AAA,with an offset\n2016-01-04 09:45,AAA,naive\n"
    config = csv_config(tmp_path, PRICES, news)
    assert config["news"]["timezone"] is None  # the shipped default: no zone is assumed
    with pytest.raises(ConfigError) as error:
        load_dataset(config, [])
    assert str(error.value) == (
        f"data.news.timezone: {tmp_path / 'news.csv'} has timestamps without a time zone (e.g. '2016-01-04 09:45' "
        "on line 3); set data.news.timezone to the zone they were written in, e.g. America/New_York or UTC"
    )


def test_date_only_stamp_without_a_timezone_is_a_config_error_too(tmp_path):
    news = "timestamp,ticker,text\n2016-01-04T08:00Z,AAA,with an offset\n2016-01-04,AAA,a day\n"
    with pytest.raises(ConfigError) as error:
        load_dataset(csv_config(tmp_path, PRICES, news), [])
    assert str(error.value) == (
        f"data.news.timezone: {tmp_path / 'news.csv'} has timestamps without a time zone (e.g. '2016-01-04' on "
        "line 3); set data.news.timezone to the zone they were written in, e.g. America/New_York or UTC (a "
        "date-only stamp counts as published at the end of that day there)"
    )


def test_stamps_with_an_offset_need_no_timezone_and_ignore_it(tmp_path):
    news = "timestamp,ticker,text\n2016-01-04T08:00:00+01:00,AAA,paris\n2016-01-04T08:00:00-05:00,AAA,new york\n"
    for zone in (None, "Asia/Tokyo"):
        data = load_dataset(csv_config(tmp_path, PRICES, news, timezone=zone), [])
        # 08:00+01:00 = 07:00 UTC; 08:00-05:00 = 13:00 UTC, whatever the key says
        assert data.news["timestamp"].tolist() == [utc("2016-01-04 07:00"), utc("2016-01-04 13:00")]


def test_a_new_york_headline_after_the_open_waits_for_the_next_session(tmp_path):
    # 09:45 in New York is after that day's 09:30 open (14:30 UTC in January): it first acts on the 5th.
    # Read as UTC (the old default) it would have been 04:45 New York time and acted at the open of the 4th.
    news = "timestamp,ticker,text\n2016-01-04 09:45,AAA,headline\n2016-01-04,AAA,a New York day\n"
    data = load_dataset(csv_config(tmp_path, PRICES, news, timezone="America/New_York"), [])
    assert data.news["timestamp"].tolist() == [utc("2016-01-04 14:45"), utc("2016-01-05 04:59:59.999999")]
    aligned = align_news(data.news, data.prices)
    assert aligned["session"].tolist() == [utc("2016-01-05 14:30"), utc("2016-01-05 14:30")]


def test_unknown_timezone_names_the_key(tmp_path):
    news = "timestamp,ticker,text\n2016-01-04 09:45,AAA,headline\n"
    with pytest.raises(ConfigError, match=r"^data\.news\.timezone: unknown time zone 'Mars/Olympus'"):
        load_dataset(csv_config(tmp_path, PRICES, news, timezone="Mars/Olympus"), [])


# ---------------------------------------------------------------------------------------------------------------
# (C) a ticker mapping to a column the file lacks is an error; null means market-wide


def test_ticker_column_missing_from_the_file_is_an_error_naming_key_column_and_file(tmp_path):
    news = "timestamp,symbol,text\n2016-01-04T08:00Z,AAA,headline\n"
    with pytest.raises(DataError) as error:
        load_dataset(csv_config(tmp_path, PRICES, news), [])
    assert str(error.value) == (
        f"{tmp_path / 'news.csv'}: missing column 'ticker' (data.news.columns.ticker); columns found: timestamp, "
        "symbol, text; set data.news.columns.ticker=null if every item is market-wide"
    )


def test_ticker_mapping_null_makes_every_item_market_wide(tmp_path):
    news = "timestamp,symbol,text\n2016-01-04T08:00Z,BBB,headline\n"
    config = csv_config(tmp_path, PRICES, news)
    config["news"]["columns"]["ticker"] = None
    data = load_dataset(config, [])
    assert data.news["ticker"].tolist() == [""]
    assert align_news(data.news, data.prices)[["ticker", "session"]].values.tolist() == [["AAA", utc("2016-01-04 14:30")]]


# ---------------------------------------------------------------------------------------------------------------
# (B) every dropped item counted, by reason

# AAA trades Mon 4 .. Fri 8 Jan 2016, BBB Mon 4 .. Wed 6; every open is 09:30 EST = 14:30 UTC.
TWO_TICKERS = "date,ticker,open,high,low,close,volume\n" + "".join(
    f"2016-01-0{day},{ticker},10,11,9,10,1\n" for ticker, last in (("AAA", 8), ("BBB", 6)) for day in range(4, last + 1))
# With news_lookback_days 2 the window runs from New York midnight of Sat 2 Jan (05:00 UTC) to the end of the
# New York day of Fri 8 Jan (Sat 9 Jan 04:59:59.999999 UTC).
FOURTEEN_ITEMS = """timestamp,ticker,text
2016-01-01T12:00Z,AAA,1 before the window
2016-01-02T04:00Z,,2 before the window (market-wide)
2016-01-02T06:00Z,AAA,3 in the lookback: AAA on the 4th
2016-01-05T12:00Z,,4 market-wide: AAA and BBB on the 5th
2016-01-05T12:00Z,GOOG,5 unknown
2016-01-06T12:00Z,GOOG,6 unknown
2016-01-07T12:00Z,GOOG,7 unknown
2016-01-07T12:00Z,XYZ,8 unknown
2016-01-07T12:00Z,BBB,9 after BBB's last open
2016-01-08T12:00Z,,10 market-wide before AAA's last open
2016-01-08T15:00Z,AAA,11 after AAA's last open
2016-01-09T06:00Z,AAA,12 after the window
2016-01-06T12:00Z,AAA,\"   \"
2016-01-09T03:00Z,,14 market-wide after every last open
"""


def test_every_item_is_counted_once_as_aligned_or_under_one_reason(tmp_path):
    data = load_dataset(csv_config(tmp_path, TWO_TICKERS, FOURTEEN_ITEMS) | {"news_lookback_days": 2}, [])
    accounting = news_accounting(data)
    assert accounting == {
        "news_items": 14,
        "news_aligned": 3,  # items 3, 4 and 10
        "news_dropped": NO_DROPS | {
            "empty_text": 1,  # 13
            "before_first_session": 2,  # 1, 2
            "after_last_session": 4,  # 12 (after the window); 9, 11, 14 (after their last open)
            "unknown_ticker": 4,  # 5-8
            "unknown_tickers_top": {"GOOG": 3, "XYZ": 1},
        },
    }
    # items, not rows: the market-wide item 4 is two rows (AAA and BBB), item 10 one (BBB has ended)
    aligned = align_news(data.news, data.prices)
    assert sorted(zip(aligned["ticker"], aligned["text"].str[:2])) == [("AAA", "10"), ("AAA", "3 "), ("AAA", "4 "),
                                                                       ("BBB", "4 ")]


@pytest.mark.parametrize("cut, expected", [
    # Kept window: New York midnight of Sun 3 Jan (05:00 UTC) .. end of Thu 7 Jan (Fri 8 Jan 04:59:59 UTC); both
    # sides were cut, so items 1-3 and 10-12, 14 are what the user left out, not what the prices cannot place.
    ({"start": "2016-01-05", "end": "2016-01-07"},
     {"news_aligned": 1, "outside_start_end": 7, "after_last_session": 1}),  # aligned: 4; after BBB's last: 9
    # Only the end is cut: 1, 2 are still before the file's first session and its lookback.
    ({"end": "2016-01-07"},
     {"news_aligned": 2, "before_first_session": 2, "outside_start_end": 4, "after_last_session": 1}),
    # A start on or before the first bar cuts nothing.
    ({"start": "2016-01-04"},
     {"news_aligned": 3, "before_first_session": 2, "after_last_session": 4}),
])
def test_start_and_end_cuts_are_counted_apart_from_what_the_data_cannot_place(tmp_path, cut, expected):
    config = csv_config(tmp_path, TWO_TICKERS, FOURTEEN_ITEMS) | {"news_lookback_days": 2} | cut
    accounting = news_accounting(load_dataset(config, []))
    aligned = expected.pop("news_aligned")
    assert accounting == {
        "news_items": 14,
        "news_aligned": aligned,
        "news_dropped": NO_DROPS | {"empty_text": 1, "unknown_ticker": 4, "unknown_tickers_top": {"GOOG": 3, "XYZ": 1},
                                    **expected},
    }


def test_news_drops_names_the_five_most_frequent_unknown_tickers_and_applies_latency():
    prices = make_prices(["2020-01-06", "2020-01-07"], [1, 1], [1, 1], ticker="X")  # opens 14:30 UTC
    rows = [("2020-01-06 12:00Z", ticker, "n") for ticker, count in
            [("U1", 4), ("U3", 3), ("U2", 3), ("U4", 2), ("U6", 1), ("U5", 1)] for _ in range(count)]
    rows += [("2020-01-07 14:25Z", "X", "five minutes before the last open"), ("2020-01-06 12:00Z", "", "market")]
    news = make_news(rows)
    assert news_drops(news, prices, latency_minutes=0) == {
        "aligned": 2, "after_last_session": 0, "unknown_ticker": 14,
        "unknown_tickers_top": {"U1": 4, "U2": 3, "U3": 3, "U4": 2, "U5": 1},  # ties by name; U6 is sixth
    }
    # ten minutes of latency make the 14:25 item usable only after the last open (14:30)
    assert news_drops(news, prices, latency_minutes=10)["after_last_session"] == 1
    assert news_drops(news, prices, latency_minutes=10)["aligned"] == 1


def accounting_of(items: int, aligned: int, **dropped) -> dict:
    return {"news_items": items, "news_aligned": aligned, "news_dropped": NO_DROPS | dropped}


def test_report_line_names_every_reason_and_the_unknown_tickers():
    line, warning = news_drop_report(accounting_of(
        14, 3, empty_text=1, before_first_session=2, after_last_session=4, unknown_ticker=4,
        unknown_tickers_top={"GOOG": 3, "XYZ": 1}))
    assert line == (
        "news: 14 items, 3 aligned, 11 dropped: 1 with empty text; 2 before the first session (beyond "
        "data.news_lookback_days); 4 after the last session; 4 for tickers with no prices (GOOG 3, XYZ 1)"
    )
    assert warning == (
        "11 of 14 news items (78.6%) were dropped: 1 with empty text; 2 before the first session (beyond "
        "data.news_lookback_days); 4 after the last session; 4 for tickers with no prices (GOOG 3, XYZ 1) "
        "(counts in metrics.json news_dropped)"
    )
    assert news_drop_report(accounting_of(5, 5)) == ("news: 5 items, 5 aligned, 0 dropped", None)


@pytest.mark.parametrize("dropped, warned", [
    ({"before_first_session": 5}, False),  # 5 of 100: exactly 5% is not more than 5%
    ({"before_first_session": 6}, True),  # 6 of 100
    ({"outside_start_end": 60, "after_last_session": 2}, False),  # 2 of the 40 asked for: 5%
    ({"outside_start_end": 60, "after_last_session": 3}, True),  # 3 of 40: 7.5%
    ({"retweet": 30, "other_language": 30}, False),  # filters the user asked for
])
def test_warning_when_more_than_five_percent_of_the_items_asked_for_are_dropped(dropped, warned):
    total = sum(dropped.values())
    _, warning = news_drop_report(accounting_of(100, 100 - total, **dropped))
    assert (warning is not None) == warned


# ---------------------------------------------------------------------------------------------------------------
# the real djia data


def test_djia_accounting_matches_a_count_of_the_raw_file(shared_data):
    with open(shared_data / "djia-reddit-news" / "RedditNews.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    assert len(rows) == 73_608
    blank = [date for date, text in rows if not text.strip().removeprefix("b").strip("'\"").strip()]
    assert blank == ["2008-07-01"]  # the b'        ' headline: dropped as empty, before the window
    # The first DJIA bar is 2008-08-08, so headlines dated before 2008-07-29 (10 days earlier) are out; those of
    # 2016-07-01 count at 23:59:59 UTC, after that day's 13:30 UTC open, the last session.
    before = sum(date < "2008-07-29" for date, _ in rows) - 1
    after = sum(date == "2016-07-01" for date, _ in rows)
    assert (before, after) == (1_274, 25)
    data = load_dataset(yaml.safe_load((ROOT / "conf" / "data" / "djia.yaml").read_text()), [shared_data])
    accounting = news_accounting(data)
    assert accounting == {
        "news_items": 73_608,
        "news_aligned": 73_608 - 1 - 1_274 - 25,
        "news_dropped": NO_DROPS | {"empty_text": 1, "before_first_session": 1_274, "after_last_session": 25},
    }
    assert news_drop_report(accounting)[1] is None  # 1,299 of 73,608: 1.8%, no warning


# ---------------------------------------------------------------------------------------------------------------
# the command line


def cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.run", "data=csv", "signals/sentiment=lexicon", "report.enabled=false",
         "strategy=sentiment", "strategy.baseline_sessions=null", f"paths.runs={tmp_path}/runs",
         f"paths.cache={tmp_path}/cache", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_cli_prints_and_stores_the_drop_counts_and_warns(tmp_path, shared_data):
    days = pd.bdate_range("2016-01-04", periods=20)  # Mon 4 .. Fri 29 Jan 2016
    prices = "date,ticker,open,high,low,close,volume\n" + "".join(
        f"{day:%Y-%m-%d},GOOGL,{100 + i},{102 + i},{99 + i},{101 + i},1000\n" for i, day in enumerate(days))
    # 20 items: 12 for GOOGL at 08:00 New York time, 5 for GOOG (the prices say GOOGL), 2 before the
    # lookback (news_lookback_days 10: from New York midnight of 25 Dec 2015), 1 after the last open.
    lines = [f"{day:%Y-%m-%d} 08:00,GOOGL,strong profit gains" for day in days[:12]]
    lines += [f"{day:%Y-%m-%d} 08:00,GOOG,weak losses" for day in days[:5]]
    lines += ["2015-12-01 08:00,GOOGL,old", "2015-12-24 23:00,GOOGL,old", "2016-01-29 10:00,GOOGL,late"]
    (tmp_path / "prices.csv").write_text(prices)
    (tmp_path / "news.csv").write_text("timestamp,ticker,text\n" + "\n".join(lines) + "\n")
    files = [f"data.prices.path={tmp_path}/prices.csv", f"data.news.path={tmp_path}/news.csv"]

    missing_zone = cli(tmp_path, *files)
    assert missing_zone.returncode == 2 and "Traceback" not in missing_zone.stderr
    assert (f"newsbt: error: data.news.timezone: {tmp_path / 'news.csv'} has timestamps without a time zone "
            "(e.g. '2016-01-04 08:00' on line 2)") in missing_zone.stderr

    done = cli(tmp_path, *files, "data.news.timezone=America/New_York")
    assert done.returncode == 0, done.stderr
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["news_items"], metrics["news_aligned"]) == (20, 12)
    assert metrics["news_dropped"] == NO_DROPS | {
        "before_first_session": 2, "after_last_session": 1, "unknown_ticker": 5, "unknown_tickers_top": {"GOOG": 5}}
    summary = ("8 of 20 news items (40.0%) were dropped: 2 before the first session (beyond "
               "data.news_lookback_days); 1 after the last session; 5 for tickers with no prices (GOOG 5)")
    assert f"newsbt: warning: {summary} (counts in metrics.json news_dropped)" in done.stderr.splitlines()
    assert "news: 20 items, 12 aligned, 8 dropped: 2 before" in done.stdout
