"""Point-in-time alignment: which session may first use each news item, and what prices say before an open.

The rule: an item published at ``t`` is usable by the decision made just before the first session that opens
strictly after ``t + latency``; that decision fills at that open. Market-wide items (ticker "") concern every
instrument. Price features for a session use closes up to the previous session only.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from engine.errors import ConfigError
from engine.schema import NEWS_COLUMNS


def align_news(news: pd.DataFrame, prices: pd.DataFrame, latency_minutes: float = 0) -> pd.DataFrame:
    """Return ``news`` with a ``session`` column (UTC open of the first session that may use it), one row per
    (item, instrument) it concerns; items after the last session or for unknown tickers are dropped (counted
    by ``news_drops``). Columns beyond the schema's (e.g. ``item``, ``link_method``) are kept.

    >>> aligned = align_news(dataset.news, dataset.prices, latency_minutes=5)
    """
    columns = [*NEWS_COLUMNS, *[c for c in news.columns if c not in NEWS_COLUMNS and c != "session"]]
    # Index arrays per ticker, sorted as numbers, then one take of the rows: a frame copy per ticker, or a take
    # and then a sort of the frame with its texts, cost more than the alignment itself at hundreds of tickers.
    names, rows, codes, sessions = [], [], [], []
    for code, (ticker, opens, concerns, position) in enumerate(_first_sessions(news, prices, latency_minutes)):
        inside = position < len(opens)
        names.append(ticker)
        rows.append(concerns[inside])
        codes.append(np.full(int(inside.sum()), code))
        sessions.append(opens[position[inside]])
    if not rows:
        return news.iloc[0:0].assign(session=pd.Series([], dtype="datetime64[us, UTC]"))
    rows, codes, sessions = np.concatenate(rows), np.concatenate(codes), np.concatenate(sessions)
    published = _utc_values(news["timestamp"])[rows]
    # by ticker (the codes follow the sorted tickers), session, then publication; lexsort is stable
    order = np.lexsort((published.view("int64"), sessions.view("int64"), codes))
    aligned = news.iloc[rows[order]][columns].reset_index(drop=True)
    aligned["ticker"] = pd.array(names, dtype="str").take(codes[order])
    aligned["session"] = pd.to_datetime(sessions[order], utc=True)
    return aligned


def news_drops(news: pd.DataFrame, prices: pd.DataFrame, latency_minutes: float = 0) -> dict:
    """The items of ``news`` that ``align_news`` keeps and drops, counted as items (a market-wide item is kept
    when it reaches any instrument; rows sharing an ``item`` number, one per linked ticker, are one item, kept
    when any of them is, for an unknown ticker when all of them are): ``aligned``, ``after_last_session``,
    ``unknown_ticker`` and ``unknown_tickers_top`` (the five most frequent tickers with no prices, with their
    counts).

    >>> news_drops(dataset.news, dataset.prices)["unknown_tickers_top"]  # e.g. {"GOOG": 1209}
    """
    reached = np.zeros(len(news), dtype=bool)
    for _, opens, concerns, position in _first_sessions(news, prices, latency_minutes):
        reached[concerns[position < len(opens)]] = True
    tickers = news["ticker"]
    unknown = ~(tickers.isin(prices["ticker"].unique()) | (tickers == "")).to_numpy()
    counted = np.ones(len(news), dtype=bool)  # one row per item
    if "item" in news.columns:
        items = news["item"].to_numpy()
        reached = pd.Series(reached).groupby(items).transform("any").to_numpy()
        unknown = pd.Series(unknown).groupby(items).transform("all").to_numpy()
        counted = ~news["item"].duplicated().to_numpy()
    counts = tickers[unknown].value_counts()
    top = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[:5]
    return {
        "aligned": int((reached & counted).sum()),
        "after_last_session": int((~reached & ~unknown & counted).sum()),
        "unknown_ticker": int((unknown & counted).sum()),
        "unknown_tickers_top": {str(ticker): int(count) for ticker, count in top},
    }


def _first_sessions(news: pd.DataFrame, prices: pd.DataFrame, latency_minutes: float) -> list:
    """Per ticker with prices: (ticker, its sorted opens, the positions in ``news`` of the items that concern
    it, the index in those opens of the first session each may use; ``len(opens)`` when there is none)."""
    if latency_minutes is None or float(latency_minutes) < 0:
        raise ConfigError(f"latency_minutes: must be >= 0, got {latency_minutes!r}")
    usable_from = _utc_values(news["timestamp"] + pd.Timedelta(minutes=float(latency_minutes)))
    # The items of each ticker found once by sorting (not one comparison over all news per ticker, which grew as
    # tickers x items); market-wide items ("") concern every ticker.
    price_tickers = np.sort(prices["ticker"].unique())
    codes = pd.Index(price_tickers).get_indexer(news["ticker"])  # -1: market-wide or unknown
    market_wide = np.flatnonzero((news["ticker"] == "").to_numpy())
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(price_tickers) + 1))
    out = []
    for code, (ticker, opens) in enumerate(prices.groupby("ticker", sort=True)["timestamp"]):
        opens = np.sort(_utc_values(opens))
        concerns = order[bounds[code]:bounds[code + 1]]  # ascending: a stable sort's slice
        if market_wide.size:
            concerns = np.union1d(concerns, market_wide)
        out.append((ticker, opens, concerns, np.searchsorted(opens, usable_from[concerns], side="right")))
    return out


def _utc_values(stamps: pd.Series) -> np.ndarray:
    """UTC instants as a numpy datetime64 array (``to_numpy`` of tz-aware stamps is an array of objects, which
    sorted and searched 10-100x slower)."""
    values = stamps.array
    if getattr(values, "tz", None) is not None:
        values = values.tz_convert("UTC").tz_localize(None)
    return np.asarray(values)


# How the run's news line names each reason of ``news_dropped`` (metrics.json), after its count.
NEWS_DROP_REASONS = {
    "empty_text": "with empty text",
    "duplicate": "duplicates",
    "retweet": "retweets (data.drop_retweets)",
    "other_language": "in other languages (data.languages)",
    "outside_start_end": "outside data.start/data.end",
    "before_first_session": "before the first session (beyond data.news_lookback_days)",
    "after_last_session": "after the last session",
    "unknown_ticker": "for tickers with no prices",
}
# Drops a config key asked for: counted and printed, but not warned about.
CHOSEN_DROPS = ("retweet", "other_language", "outside_start_end")
WARN_DROPPED_SHARE = 0.05  # warn when more of the other items are dropped than this


def news_accounting(dataset, latency_minutes: float = 0) -> dict:
    """Where the news items of a loaded dataset went: ``news_items`` (as read from the files), ``news_aligned``
    (items that reach at least one session) and ``news_dropped`` (every reason of ``NEWS_DROP_REASONS``, plus
    ``unknown_tickers_top``). Each item is counted once, under the first step that dropped it (loading, the
    dataset's date window, alignment), so ``news_items == news_aligned + sum of the reasons``.

    >>> metrics.update(news_accounting(dataset, cfg.latency_minutes))
    """
    alignment = news_drops(dataset.news, dataset.prices, latency_minutes)
    dropped = dict.fromkeys(NEWS_DROP_REASONS, 0)
    for reason, count in dataset.meta["news_dropped"].items():
        dropped[reason] += int(count)
    dropped["after_last_session"] += alignment["after_last_session"]
    dropped["unknown_ticker"] += alignment["unknown_ticker"]
    dropped["unknown_tickers_top"] = alignment["unknown_tickers_top"]
    return {"news_items": int(dataset.meta["news_items"]), "news_aligned": alignment["aligned"], "news_dropped": dropped}


def news_drop_report(accounting: dict) -> tuple[str, str | None]:
    """The run's printed news line, and a warning when more than ``WARN_DROPPED_SHARE`` of the items were
    dropped for reasons other than ``CHOSEN_DROPS`` (the share is of the items those left).

    >>> line, warning = news_drop_report(news_accounting(dataset))
    """
    items, aligned, dropped = accounting["news_items"], accounting["news_aligned"], accounting["news_dropped"]

    def describe(reasons) -> str:
        parts = []
        for reason in reasons:
            text = f"{dropped[reason]:,} {NEWS_DROP_REASONS[reason]}"
            if reason == "unknown_ticker" and dropped["unknown_tickers_top"]:
                text += " (" + ", ".join(f"{t} {n:,}" for t, n in dropped["unknown_tickers_top"].items()) + ")"
            parts.append(text)
        return "; ".join(parts)

    reasons = [reason for reason in NEWS_DROP_REASONS if dropped[reason]]
    total = sum(dropped[reason] for reason in reasons)
    line = f"news: {items:,} items, {aligned:,} aligned, {total:,} dropped" + (f": {describe(reasons)}" if total else "")
    unasked = [reason for reason in reasons if reason not in CHOSEN_DROPS]
    lost = sum(dropped[reason] for reason in unasked)
    asked = items - (total - lost)
    if not asked or lost <= WARN_DROPPED_SHARE * asked:
        return line, None
    return line, (f"{lost:,} of {asked:,} news items ({100 * lost / asked:.1f}%) were dropped: {describe(unasked)} "
                  f"(counts in metrics.json news_dropped)")


# The one list of columns NOT known before a session's open: the session's own bar and ``forward_return`` (next
# open over this open, minus one). They live only in the ``outcomes`` frame of ``session_grid``, never beside the
# features a rule, a regime model or any learner reads; a rule sees ``forward_return`` only as the walk-forward's
# masked training label.
DIAGNOSTIC_COLUMNS = ("open", "high", "low", "close", "volume", "forward_return")


class SessionGrid(NamedTuple):
    """``features``: what is known before each session's open; ``outcomes``: ``DIAGNOSTIC_COLUMNS``, same index."""

    features: pd.DataFrame
    outcomes: pd.DataFrame


def session_grid(prices: pd.DataFrame) -> SessionGrid:
    """One row per (ticker, session), indexed like a signals frame, split into two frames with the same index.

    ``features``, known before the session opens: ``return_1`` (previous close-to-close return), ``return_5``
    and ``volatility_20`` (annualised, from closes up to the previous session).
    ``outcomes``, NOT known before the open (``DIAGNOSTIC_COLUMNS``): the session's ``open high low close
    volume`` and ``forward_return`` (open of the next session over this open, minus one: what a position taken
    at this open earns).

    >>> features, outcomes = session_grid(dataset.prices)
    """
    frame = prices.sort_values(["ticker", "timestamp"]).rename(columns={"timestamp": "session"})
    by_ticker = frame.groupby("ticker", sort=False)
    close_return = by_ticker["close"].pct_change()
    frame["return_1"] = close_return.groupby(frame["ticker"]).shift(1)
    frame["return_5"] = (by_ticker["close"].shift(1) / by_ticker["close"].shift(6) - 1)
    frame["volatility_20"] = (
        frame["return_1"].groupby(frame["ticker"]).rolling(20, min_periods=10).std().reset_index(level=0, drop=True)
        * np.sqrt(252)
    )
    frame["forward_return"] = by_ticker["open"].shift(-1) / frame["open"] - 1
    frame = frame.set_index(["ticker", "session"])
    return SessionGrid(frame[["return_1", "return_5", "volatility_20"]], frame[list(DIAGNOSTIC_COLUMNS)])
