"""Point-in-time alignment: which session may first use each news item, and what prices say before an open.

The rule: an item published at ``t`` is usable by the decision made just before the first session that opens
strictly after ``t + latency``; that decision fills at that open. Market-wide items (ticker "") concern every
instrument. Price features for a session use closes up to the previous session only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.errors import ConfigError
from engine.schema import NEWS_COLUMNS


def align_news(news: pd.DataFrame, prices: pd.DataFrame, latency_minutes: float = 0) -> pd.DataFrame:
    """Return ``news`` with a ``session`` column (UTC open of the first session that may use it), one row per
    (item, instrument) it concerns; items after the last session or for unknown tickers are dropped.

    >>> aligned = align_news(dataset.news, dataset.prices, latency_minutes=5)
    """
    if latency_minutes is None or float(latency_minutes) < 0:
        raise ConfigError(f"latency_minutes: must be >= 0, got {latency_minutes!r}")
    usable_from = (news["timestamp"] + pd.Timedelta(minutes=float(latency_minutes))).to_numpy()
    pieces = []
    for ticker, opens in prices.groupby("ticker", sort=True)["timestamp"]:
        opens = np.sort(opens.to_numpy())
        concerns = ((news["ticker"] == ticker) | (news["ticker"] == "")).to_numpy()
        position = np.searchsorted(opens, usable_from[concerns], side="right")
        inside = position < len(opens)
        piece = news.loc[concerns, NEWS_COLUMNS][inside].copy()
        piece["ticker"] = ticker
        piece["session"] = opens[position[inside]]
        pieces.append(piece)
    if not pieces:
        return news.iloc[0:0].assign(session=pd.Series([], dtype="datetime64[us, UTC]"))
    aligned = pd.concat(pieces, ignore_index=True)
    aligned["session"] = pd.to_datetime(aligned["session"], utc=True)
    return aligned.sort_values(["ticker", "session", "timestamp"], kind="stable").reset_index(drop=True)


def session_grid(prices: pd.DataFrame) -> pd.DataFrame:
    """One row per (ticker, session) with price diagnostics, indexed like a signals frame.

    Columns known before the session opens: ``return_1`` (previous close-to-close return),
    ``return_5`` and ``volatility_20`` (annualised, from closes up to the previous session).
    Diagnostics that are NOT known before the open: ``open``, ``close`` and ``forward_return``
    (open of the next session over this open, minus one: what a position taken at this open earns).

    >>> grid = session_grid(dataset.prices)
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
    columns = ["ticker", "session", "open", "close", "return_1", "return_5", "volatility_20", "forward_return"]
    return frame[columns].set_index(["ticker", "session"])
