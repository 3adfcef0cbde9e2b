"""The fixed frame schemas that cross stages, and their validators.

prices   one row per (ticker, bar): ``ticker`` str, ``timestamp`` = the bar's session open as a UTC tz-aware
         Timestamp, ``open high low close volume`` floats. Sorted by (ticker, timestamp), no duplicates.
news     one row per item: ``timestamp`` = publication instant, UTC tz-aware; ``ticker`` str ("" for
         market-wide news that concerns every instrument); ``text`` str; ``source`` str.
signals  indexed by (``ticker``, ``session``) where ``session`` is the UTC open of the session the values are
         first usable for (everything in the row was known before that open); named float columns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.errors import DataError

PRICE_COLUMNS = ["ticker", "timestamp", "open", "high", "low", "close", "volume"]
NEWS_COLUMNS = ["timestamp", "ticker", "text", "source"]
SIGNAL_INDEX = ["ticker", "session"]


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}")


def _require_utc(series: pd.Series, what: str) -> None:
    tz = getattr(series.dtype, "tz", None)
    if tz is None or str(tz) != "UTC":
        raise DataError(f"{what}: column 'timestamp' must be UTC tz-aware, got dtype {series.dtype}")


def validate_prices(prices: pd.DataFrame, what: str = "prices") -> pd.DataFrame:
    """Check a prices frame against the schema; return it with canonical dtypes and order.

    >>> validate_prices(frame)  # raises DataError naming the first bad row
    """
    _require_columns(prices, PRICE_COLUMNS, what)
    prices = prices[PRICE_COLUMNS].copy()
    _require_utc(prices["timestamp"], what)
    prices["ticker"] = prices["ticker"].astype(str)
    for column in ["open", "high", "low", "close", "volume"]:
        prices[column] = pd.to_numeric(prices[column], errors="coerce").astype("float64")
    bad = prices[["open", "high", "low", "close"]].isna().any(axis=1) | (prices[["open", "high", "low", "close"]] <= 0).any(axis=1)
    if bad.any():
        row = prices[bad].iloc[0]
        raise DataError(f"{what}: NaN or non-positive price for {row['ticker']} at {row['timestamp']}")
    if (prices["volume"] < 0).any():
        row = prices[prices["volume"] < 0].iloc[0]
        raise DataError(f"{what}: negative volume for {row['ticker']} at {row['timestamp']}")
    duplicated = prices.duplicated(["ticker", "timestamp"])
    if duplicated.any():
        row = prices[duplicated].iloc[0]
        raise DataError(f"{what}: duplicate bar for {row['ticker']} at {row['timestamp']}")
    return prices.sort_values(["ticker", "timestamp"], kind="stable").reset_index(drop=True)


def validate_news(news: pd.DataFrame, what: str = "news") -> pd.DataFrame:
    """Check a news frame against the schema; return it sorted by (timestamp, ticker) with a clean index.

    >>> validate_news(frame)
    """
    _require_columns(news, NEWS_COLUMNS, what)
    news = news[NEWS_COLUMNS].copy()
    _require_utc(news["timestamp"], what)
    if news["timestamp"].isna().any():
        raise DataError(f"{what}: missing timestamp in row {int(news['timestamp'].isna().to_numpy().argmax())}")
    news["ticker"] = news["ticker"].fillna("").astype(str)
    news["text"] = news["text"].fillna("").astype(str)
    news["source"] = news["source"].fillna("").astype(str)
    return news.sort_values(["timestamp", "ticker"], kind="stable").reset_index(drop=True)


def empty_signals(columns: list[str]) -> pd.DataFrame:
    """An empty signals frame with the canonical (ticker, session) index and the given float columns."""
    index = pd.MultiIndex.from_arrays(
        [pd.Index([], dtype="object"), pd.DatetimeIndex([], tz="UTC")], names=SIGNAL_INDEX
    )
    return pd.DataFrame({c: pd.Series([], dtype="float64") for c in columns}, index=index)


def canonical_signals(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` (a copy) with its (ticker, session) index in canonical dtypes (str, datetime64[ns, UTC]),
    so frames from different stages (or a Parquet round trip) join exactly.

    >>> canonical_signals(pd.read_parquet(path)).index.levels[1].dtype  # datetime64[ns, UTC]
    """
    out = frame.copy(deep=False)  # pandas copies on write: as independent of ``frame`` as a deep copy
    index = _with_canonical_levels(frame.index)
    if index is None:
        tickers = frame.index.get_level_values("ticker").astype(str)
        sessions = pd.DatetimeIndex(frame.index.get_level_values("session")).tz_convert("UTC").as_unit("ns")
        index = pd.MultiIndex.from_arrays([tickers, sessions], names=SIGNAL_INDEX)
    out.index = index
    return out


_TICKER_DTYPE = pd.Index([], dtype=object).astype(str).dtype  # what canonical_signals' astype(str) gives
_SESSION_DTYPE = pd.DatetimeTZDtype("ns", "UTC")  # its tz is the object tz_convert("UTC") sets (timezone.utc)


def is_canonical_index(index: pd.Index) -> bool:
    """Whether ``index`` is exactly what ``canonical_signals`` builds from its values: levels ``ticker`` (str)
    and ``session`` (datetime64[ns, UTC], the zone ``tz_convert("UTC")`` sets), each sorted with every value
    used, no missing value.

    >>> is_canonical_index(features.index)
    """
    # dtypes compare equal for any UTC object (ZoneInfo("UTC"), pytz.UTC): the zone itself must be the same one
    return (isinstance(index, pd.MultiIndex) and index.nlevels == 2
            and index.levels[0].dtype == _TICKER_DTYPE and index.levels[1].dtype == _SESSION_DTYPE
            and index.levels[1].tz is _SESSION_DTYPE.tz and _with_canonical_levels(index) is not None)


def _with_canonical_levels(index: pd.Index) -> pd.MultiIndex | None:
    """``index`` with only its levels converted (tickers to str, sessions to ns in UTC), when that gives what
    ``MultiIndex.from_arrays`` builds from its values, which factorises each array into its sorted distinct
    values: so when each converted level is strictly increasing, every value used, none missing. Converting
    a few thousand level values and one pass over the codes, instead of a string and a stamp per row; None
    when the index must be rebuilt."""
    if not isinstance(index, pd.MultiIndex) or list(index.names) != SIGNAL_INDEX:
        return None
    tickers, sessions = index.levels
    if not isinstance(sessions, pd.DatetimeIndex) or sessions.tz is None:
        return None
    levels = [tickers.astype(str), sessions.tz_convert("UTC").as_unit("ns")]
    for level, codes in zip(levels, index.codes):
        if not (level.is_monotonic_increasing and level.is_unique):
            return None
        if len(codes) == 0:
            if len(level):
                return None
        elif codes.min() < 0 or not np.bincount(codes, minlength=len(level)).all():
            return None
    return index.set_levels(levels)
