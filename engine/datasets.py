"""The dataset catalog and loaders: turn a ``data`` config into the prices and news frames of ``engine.schema``.

Named datasets (``djia``, ``stocknet``) are found under the data roots and checked against the SHA-256 in
``data/catalog.yaml``; the ``csv`` type reads the user's own files and rejects bad rows with their line number.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from engine.cache import PROJECT_ROOT, file_sha256, project_path
from engine.config import time_zone
from engine.calendar import end_of_day, session_instants
from engine.errors import ConfigError, DataError
from engine.schema import NEWS_COLUMNS, validate_news, validate_prices

CATALOG_PATH = PROJECT_ROOT / "data" / "catalog.yaml"
TWITTER_TIME_FORMAT = "%a %b %d %H:%M:%S %z %Y"
_OHLC = ["open", "high", "low", "close"]


@dataclass
class Dataset:
    """Prices and news of one dataset, in the ``engine.schema`` frames, with what was done to load them.

    ``meta["news_items"]`` counts the news items read; ``meta["news_dropped"]`` the items left out, by reason
    (``empty_text``, ``duplicate``, ``retweet``, ``other_language``; ``before_first_session``: earlier than
    ``news_lookback_days`` before the first bar; ``after_last_session``: after the day of the last bar;
    ``outside_start_end``: the same on a side that ``data.start``/``data.end`` cut), each item once: ``news``
    keeps the rest.

    >>> data = load_dataset(cfg.data, roots); data.prices, data.news, data.meta["files"]
    """

    name: str
    prices: pd.DataFrame
    news: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, dict[str, Any]]:
    """The ``datasets`` mapping of the catalog: name -> folder, files (path, bytes, sha256), licence, origin, obtain.

    >>> load_catalog()["djia"]["licence"]
    """
    return copy.deepcopy(_read_catalog(str(path)))


@lru_cache(maxsize=4)
def _read_catalog(path: str) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["datasets"]


def resolve_file(relative: str, roots: Sequence[str | Path], sha256: str | None = None) -> Path:
    """The first ``root / relative`` that exists, checked against ``sha256`` when given; DataError if absent or altered.

    >>> resolve_file("djia-reddit-news/DJIA_table.csv", ["data/raw", "../shared/data"])
    """
    found = _find(relative, roots)
    if found is None:
        raise DataError(f"missing data file {relative}; searched roots: {_roots_text(roots)}")
    if sha256 is not None:
        _verify(found, relative, sha256)
    return found


def load_dataset(data_cfg: Mapping, roots: Sequence[str | Path]) -> Dataset:
    """Load the dataset ``data_cfg`` describes (type djia, stocknet or csv), cut to its start/end sessions.

    >>> data = load_dataset(cfg.data, cfg.paths.roots)
    """
    cfg = _plain(data_cfg)
    kind = cfg.get("type") or cfg.get("name")
    if kind not in _LOADERS:
        raise ConfigError(f"data.type: unknown dataset type {kind!r}; known: {', '.join(sorted(_LOADERS))}")
    start, end = _date_key(cfg, "start"), _date_key(cfg, "end")
    if start is not None and end is not None and start > end:
        raise ConfigError(f"data.start: {start.date()} is after data.end {end.date()}")
    timezone = _required(cfg, "exchange_timezone")
    session_open = _required(cfg, "session_open")
    prices, news, meta = _LOADERS[kind](cfg, [Path(r) for r in roots])
    meta = {"dataset": cfg.get("name") or kind, "type": kind, **meta}

    # prices carry the exchange-local session date in ``timestamp`` (naive) until here
    dates = prices["timestamp"]
    keep = pd.Series(True, index=prices.index)
    if start is not None:
        keep &= dates >= start
    if end is not None:
        keep &= dates <= end
    if not keep.any():
        span = f"{dates.min().date()} .. {dates.max().date()}" if len(dates) else "no bars"
        window = (f"between {_day(start)} and {_day(end)}" if start is not None and end is not None
                  else f"on or after {_day(start)}" if start is not None else f"on or before {_day(end)}")
        raise ConfigError(f"data.start/data.end: no price bars {window} (data has {span})")
    prices = prices[keep].copy()
    prices["timestamp"] = session_instants(prices["timestamp"], timezone, session_open).as_unit("us")

    news = news.copy()
    news["timestamp"] = news["timestamp"].dt.as_unit("us")
    # Measured from the first and last sessions kept (not only a configured start), so news from long before
    # the first bar never piles onto it. Items outside it on a side that data.start/data.end cut are what the
    # user asked to leave out; on a side they did not cut, what the prices cannot place.
    lookback_days = _required(cfg, "news_lookback_days")
    if not isinstance(lookback_days, int) or isinstance(lookback_days, bool) or lookback_days < 0:
        raise ConfigError(f"data.news_lookback_days: must be a non-negative integer, got {lookback_days!r}")
    first_day, last_day = dates[keep].min(), dates[keep].max()
    news_from = session_instants(pd.DatetimeIndex([first_day - pd.Timedelta(days=lookback_days)]), timezone, "00:00")[0]
    news_to = end_of_day(pd.DatetimeIndex([last_day]), timezone)[0]
    before, after = news["timestamp"] < news_from, news["timestamp"] > news_to
    dropped = dict.fromkeys(["before_first_session", "after_last_session", "outside_start_end"], 0)
    dropped["outside_start_end" if first_day > dates.min() else "before_first_session"] += int(before.sum())
    dropped["outside_start_end" if last_day < dates.max() else "after_last_session"] += int(after.sum())
    dropped = {**meta.pop("news_dropped"), **dropped}
    news = news[~before & ~after]

    what = f"dataset {meta['dataset']}"
    prices = validate_prices(prices, f"{what} prices")
    news = validate_news(news, f"{what} news")
    meta.update(
        start=_day(start), end=_day(end),
        news_from=news_from.isoformat(), news_to=news_to.isoformat(),
        price_rows=len(prices), news_rows=len(news), news_dropped=dropped,
        first_session=prices["timestamp"].iloc[0].isoformat(), last_session=prices["timestamp"].iloc[-1].isoformat(),
    )
    return Dataset(name=meta["dataset"], prices=prices, news=news, meta=meta)


# ---------------------------------------------------------------------------------------------------------------
# config helpers

def _plain(data_cfg: Mapping) -> dict[str, Any]:
    """A plain dict of the config (an OmegaConf node keeps "???" as a string instead of raising on access)."""
    if isinstance(data_cfg, DictConfig):
        return OmegaConf.to_container(data_cfg, resolve=True, throw_on_missing=False)
    return dict(data_cfg)


def _required(cfg: Mapping, key: str, prefix: str = "data") -> Any:
    value = cfg.get(key)
    if value is None or value == "???":
        raise ConfigError(f"{prefix}.{key}: required")
    return value


def _date_key(cfg: Mapping, key: str) -> pd.Timestamp | None:
    value = cfg.get(key)
    if value is None:
        return None
    try:
        day = pd.Timestamp(str(value))
    except ValueError:
        raise ConfigError(f"data.{key}: expected an ISO date like 2014-01-02, got {value!r}") from None
    if day.tz is not None or day != day.normalize():
        raise ConfigError(f"data.{key}: expected a date without time or zone, got {value!r}")
    return day


def _day(day: pd.Timestamp | None) -> str | None:
    return None if day is None else str(day.date())


# ---------------------------------------------------------------------------------------------------------------
# catalog files

def _find(relative: str, roots: Sequence[str | Path]) -> Path | None:
    for root in roots:
        candidate = project_path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def _roots_text(roots: Sequence[str | Path]) -> str:
    return ", ".join(str(project_path(r)) for r in roots) or "(none)"


def _verify(path: Path, relative: str, expected: str) -> None:
    # hashing on every load costs ~20 ms (djia) / ~35 ms (stocknet): cheaper than keeping a hash cache honest
    actual = file_sha256(path)
    if actual != expected:
        raise DataError(
            f"{relative} ({path}): SHA-256 mismatch, expected {expected[:12]}…, got {actual[:12]}… "
            f"({path.stat().st_size:,} bytes); the file differs from the catalogued version (data/catalog.yaml)"
        )


def _catalog_files(name: str, relatives: list[str], roots: Sequence[Path]) -> tuple[list[Path], dict[str, Any]]:
    """Resolve and verify ``relatives`` of catalog dataset ``name``: one DataError listing every missing file."""
    entry = load_catalog()[name]
    hashes = {f["path"]: f["sha256"] for f in entry["files"]}
    found = {relative: _find(relative, roots) for relative in relatives}
    missing = [relative for relative, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"dataset {name}: missing {len(missing)} file(s): {', '.join(missing)}; searched roots: "
            f"{_roots_text(roots)}; to obtain: {' '.join(entry['obtain'].split())}"
        )
    for relative, path in found.items():
        _verify(path, relative, hashes[relative])
    meta = {
        "files": [str(found[r]) for r in relatives],
        "sha256": {str(found[r]): hashes[r] for r in relatives},
        "licence": entry["licence"],
        "origin": " ".join(entry["origin"].split()),
    }
    return [found[r] for r in relatives], meta


# ---------------------------------------------------------------------------------------------------------------
# djia: r/worldnews headlines and the DJIA table

_ESCAPE = re.compile(r"\\([\\'\"nrt])")
_ESCAPED_CHAR = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _clean_headlines(raw: pd.Series) -> tuple[list[str], dict[str, int]]:
    """Undo the Python bytes reprs of 2008-2010 headlines (b'..' / b".." with \\' \\n escapes), squeeze whitespace.

    Stray \\r\\n, tab runs and double spaces inside headlines carry no meaning: words end up one space apart.
    """
    cleaned, wrapped, escaped = [], 0, 0
    unescape = lambda match: _ESCAPED_CHAR[match.group(1)]  # noqa: E731
    for headline in raw.tolist():
        headline = headline.strip()
        if len(headline) >= 3 and headline[0] == "b" and headline[1] in "'\"" and headline[-1] == headline[1]:
            wrapped += 1
            headline = headline[2:-1]
            if "\\" in headline:
                escaped += 1
                headline = _ESCAPE.sub(unescape, headline)
        cleaned.append(" ".join(headline.split()))
    return cleaned, {"byte_prefixes_stripped": wrapped, "escaped_headlines_unescaped": escaped}


def _load_djia(cfg: Mapping, roots: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """RedditNews headlines (every calendar day, stamped at the end of their UTC day) and DJIA daily bars.

    Prices use Close (Adj Close == Close for the index; checked and reported as ``adj_close_equals_close``).
    """
    (news_path, prices_path), meta = _catalog_files(
        "djia", ["djia-reddit-news/RedditNews.csv", "djia-reddit-news/DJIA_table.csv"], roots
    )
    raw = pd.read_csv(news_path, dtype=str, keep_default_na=False, encoding="utf-8")
    text, counts = _clean_headlines(raw["News"])
    empty = pd.Series(text) == ""
    days = pd.to_datetime(raw["Date"], format="%Y-%m-%d")
    news = pd.DataFrame({
        "timestamp": end_of_day(days, _required(cfg, "news_timezone")),
        "ticker": "",
        "text": text,
        "source": "reddit/worldnews",
    })[~empty.to_numpy()]

    table = pd.read_csv(prices_path, encoding="utf-8")
    table = table.sort_values("Date", kind="stable")  # the file is newest-first
    prices = pd.DataFrame({
        "ticker": "DJIA",
        "timestamp": pd.to_datetime(table["Date"], format="%Y-%m-%d"),
        "open": table["Open"], "high": table["High"], "low": table["Low"], "close": table["Close"],
        "volume": table["Volume"].astype("float64"),
    }).reset_index(drop=True)
    meta.update(
        news_items=len(raw), news_dropped={"empty_text": int(empty.sum())}, **counts,
        adj_close_equals_close=bool((table["Adj Close"] == table["Close"]).all()),
        price_adjustment="none: Close is the index level (Adj Close == Close)",
    )
    return prices, news, meta


# ---------------------------------------------------------------------------------------------------------------
# stocknet: cashtag tweets and raw daily prices

_MONTHS = {name: f"{number:02d}" for number, name in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], start=1)}


def _twitter_times(created_at: pd.Series) -> pd.Series:
    """UTC instants of Twitter ``created_at`` strings, e.g. "Thu Jan 02 15:45:02 +0000 2014"."""
    month = created_at.str.slice(4, 7).map(_MONTHS)
    if created_at.str.len().eq(30).all() and (created_at.str.slice(19, 26) == " +0000 ").all() and month.notna().all():
        # the API always writes +0000: rearranged to ISO, pandas parses it ~5x faster than with strptime
        iso = created_at.str.slice(26, 30) + "-" + month + "-" + created_at.str.slice(8, 10) + "T" + created_at.str.slice(11, 19)
        return pd.to_datetime(iso, format="%Y-%m-%dT%H:%M:%S", utc=True)
    return pd.to_datetime(created_at, format=TWITTER_TIME_FORMAT, utc=True)


def _stocknet_prices(path: Path, ticker: str) -> tuple[pd.DataFrame, int]:
    """Bars of one ``price_raw`` file with OHLC scaled by Adj Close / Close; and the number of all-null rows dropped."""
    table = pd.read_csv(path, na_values=["null"], encoding="utf-8")
    values = ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    null_rows = table[values].isna().all(axis=1)
    table = table[~null_rows].sort_values("Date", kind="stable")
    factor = table["Adj Close"] / table["Close"]
    prices = pd.DataFrame({
        "ticker": ticker,
        "timestamp": pd.to_datetime(table["Date"], format="%Y-%m-%d"),
        "open": table["Open"] * factor, "high": table["High"] * factor, "low": table["Low"] * factor,
        "close": table["Adj Close"], "volume": table["Volume"].astype("float64"),
    }).reset_index(drop=True)
    return prices, int(null_rows.sum())


def _load_stocknet(cfg: Mapping, roots: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Tweets of the chosen tickers (deduplicated on id, optionally without retweets / other languages) and bars.

    Prices are total-return adjusted: open/high/low are multiplied by Adj Close / Close and close is Adj Close,
    so bar-to-bar returns include dividends (Yahoo's Close is split-adjusted only); volume is left as is.
    """
    known = load_catalog()["stocknet"]["tickers"]
    tickers = cfg.get("tickers") or known
    tickers = [tickers] if isinstance(tickers, str) else list(tickers)
    for ticker in tickers:
        if ticker not in known:
            raise ConfigError(f"data.tickers: unknown stocknet ticker {ticker!r}; known: {', '.join(known)}")
    tickers = list(dict.fromkeys(tickers))
    tweet_files = [f"stocknet-tweets-prices/tweets/{t}_tweets.csv" for t in tickers]
    price_files = [f"stocknet-tweets-prices/price_raw/{t}.csv" for t in tickers]
    paths, meta = _catalog_files("stocknet", tweet_files + price_files, roots)

    frames = []
    for ticker, path in zip(tickers, paths[: len(tickers)]):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8",
                            usecols=["created_at", "id_str", "lang", "is_retweet", "text"])
        frame.insert(0, "ticker", ticker)
        frames.append(frame)
    tweets = pd.concat(frames, ignore_index=True)
    raw_rows = len(tweets)
    duplicated = tweets.duplicated(["ticker", "id_str"])
    duplicates_by_ticker = {t: int(n) for t, n in duplicated.groupby(tweets["ticker"]).sum().items()}
    tweets = tweets[~duplicated]
    retweets = tweets["is_retweet"] == "1"
    if cfg.get("drop_retweets"):
        tweets = tweets[~retweets]
    retweets_dropped = int(retweets.sum()) if cfg.get("drop_retweets") else 0
    languages = cfg.get("languages")
    languages = [languages] if isinstance(languages, str) else languages
    other_language = ~tweets["lang"].isin(list(languages)) if languages else pd.Series(False, index=tweets.index)
    tweets = tweets[~other_language]
    news = pd.DataFrame({
        "timestamp": _twitter_times(tweets["created_at"]),
        "ticker": tweets["ticker"], "text": tweets["text"], "source": "twitter",
    })

    bars, null_rows = [], {}
    for ticker, path in zip(tickers, paths[len(tickers):]):
        frame, null_rows[ticker] = _stocknet_prices(path, ticker)
        bars.append(frame)
    meta.update(
        tickers=tickers, news_items=raw_rows, duplicates_dropped_by_ticker=duplicates_by_ticker,
        news_dropped={"duplicate": int(duplicated.sum()), "retweet": retweets_dropped,
                      "other_language": int(other_language.sum())},
        null_price_rows_dropped=sum(null_rows.values()),
        price_adjustment="total return: open/high/low x Adj Close / Close, close = Adj Close",
    )
    return pd.concat(bars, ignore_index=True), news, meta


# ---------------------------------------------------------------------------------------------------------------
# csv: the user's own files, strictly checked

def _user_path(value: Any, key: str) -> Path:
    """Relative paths are relative to the current working directory."""
    if value is None or value == "???":
        raise ConfigError(f"{key}: required (path of your CSV file)")
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise DataError(f"{path}: file not found ({key} = {value!r}, relative to {Path.cwd()})")
    return path


def _read_text_csv(path: Path, encoding: str, key: str) -> tuple[pd.DataFrame, str, str]:
    """The file as a frame of strings (one row per record), its decoded text (for line numbers) and SHA-256."""
    text, digest = _read_text(path, encoding, key)
    return _string_frame(text, path), text, digest


def _read_text(path: Path, encoding: str, key: str) -> tuple[str, str]:
    """The file's decoded text (without a byte order mark) and its SHA-256; DataError naming the line of a byte
    that does not decode, or for an empty file."""
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{path}: line {line}: cannot decode byte 0x{data[error.start]:02x} at byte offset {error.start} "
            f"with encoding {encoding!r} ({key}); re-save the file as {encoding} or set {key}"
        ) from None
    except LookupError:
        raise ConfigError(f"{key}: unknown encoding {encoding!r}") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text, hashlib.sha256(data).hexdigest()


def _string_frame(text: str, path: Path) -> pd.DataFrame:
    """``text`` as a frame of strings, one row per record; DataError if malformed or without data rows."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: malformed CSV ({error})") from None
    if frame.empty:
        raise DataError(f"{path}: no data rows (only the header line)")
    return frame


def _line_of(text: str, record: int) -> int:
    """1-based line of data record ``record`` (0-based, as pandas numbers rows; the header is line 1)."""
    reader = csv.reader(io.StringIO(text))
    previous, index = 0, -1  # the first non-blank record is the header
    for row in reader:
        first_line, previous = previous + 1, reader.line_num
        if not row:
            continue  # pandas skips blank lines
        if index == record:
            return first_line
        index += 1
    return record + 2


def _column(frame: pd.DataFrame, columns: Mapping, name: str, path: Path, key: str) -> str:
    header = columns.get(name)
    if header is None:
        raise ConfigError(f"{key}.{name}: required (the header of your {name} column)")
    if header not in frame.columns:
        raise DataError(
            f"{path}: missing column {header!r} ({key}.{name}); columns found: {', '.join(map(str, frame.columns))}"
        )
    return header


def _first_bad(mask: pd.Series) -> int | None:
    positions = mask.to_numpy().nonzero()[0]
    return int(positions[0]) if len(positions) else None


def _parse_dates(values: pd.Series, where: str, **options: Any) -> pd.Series:
    """Parse with one inferred format (unparsable -> NaT, reported by the caller with its line)."""
    with warnings.catch_warnings():  # "could not infer format" falls back to dateutil per value
        warnings.simplefilter("ignore", UserWarning)
        try:
            return pd.to_datetime(values, errors="coerce", **options)
        except (ValueError, TypeError) as error:  # e.g. values with different time zones
            raise DataError(f"{where}: cannot parse the stamps as one kind of date ({error})") from None


# A bar is one exchange session: its date, not an instant. A time of day or a zone ("2019-01-02T00:00:00Z")
# would have to be converted to the exchange's calendar, and midnight UTC is the day before in New York.
_DATE_WITH_TIME = r"\d:\d|\dT\d|\dZ$|\d\s*(?:UTC|GMT)$"
# Above 2**53 a whole number read by ``to_numeric`` as an integer and then cast may round unlike the float parser.
_EXACT_INTEGERS = 2.0**53


def _load_csv_prices(cfg: Mapping) -> tuple[pd.DataFrame, Path, str]:
    spec = cfg.get("prices") or {}
    key = "data.prices"
    path = _user_path(spec.get("path"), f"{key}.path")
    text, digest = _read_text(path, spec.get("encoding", "utf-8"), f"{key}.encoding")
    columns = spec.get("columns") or {}
    at = lambda record: f"{path}: line {_line_of(text, record)}"  # noqa: E731

    # A clean file is read with typed columns (about 10x faster at a million rows); a file with any row the
    # typed reading cannot vouch for goes through the strict reading, which names the first bad row.
    prices = _typed_prices(text, spec, columns)
    if prices is None:
        prices = _strict_prices(_string_frame(text, path), spec, columns, path, at)

    duplicated = prices.duplicated(["ticker", "timestamp"])
    bad = _first_bad(duplicated)
    if bad is not None:
        row = prices.iloc[bad]
        same = (prices["ticker"] == row["ticker"]) & (prices["timestamp"] == row["timestamp"])
        first = _first_bad(same)
        raise DataError(
            f"{at(bad)}: duplicate date {row['timestamp'].date()} for ticker {row['ticker']!r} "
            f"(first at line {_line_of(text, first)})"
        )
    previous = prices.groupby("ticker", sort=False)["timestamp"].shift()
    bad = _first_bad(prices["timestamp"] < previous)
    if bad is not None:
        row = prices.iloc[bad]
        raise DataError(
            f"{at(bad)}: dates not in ascending order for ticker {row['ticker']!r} "
            f"({row['timestamp'].date()} after {previous.iloc[bad].date()}); sort the file by date"
        )
    return prices, path, digest


def _price_headers(spec: Mapping, columns: Mapping) -> dict[str, Any]:
    """The header of each prices column read from the file: date, ticker (unless ``spec`` fixes one), OHLC and
    volume (if mapped); a name without a header maps to None."""
    names = ["date", *([] if spec.get("ticker") is not None else ["ticker"]), *_OHLC,
             *(["volume"] if columns.get("volume") is not None else [])]
    return {name: columns.get(name) for name in names}


def _first_seen(column: pd.Series) -> tuple[pd.Series, np.ndarray] | None:
    """A categorical column's distinct values in the order they first appear, and each row's position among them;
    None if a cell is missing."""
    codes = column.cat.codes.to_numpy()
    if (codes < 0).any():
        return None
    seen = pd.unique(codes)
    position = np.empty(len(column.cat.categories), dtype=np.intp)
    position[seen] = np.arange(len(seen))
    return pd.Series(column.cat.categories.take(seen)), position[codes]


def _typed_prices(text: str, spec: Mapping, columns: Mapping) -> pd.DataFrame | None:
    """The frame ``_strict_prices`` gives for ``text``, when it accepts every row, read with typed columns: the
    numbers by pandas' float parser (the one ``to_numeric`` uses), dates and tickers checked and parsed once per
    distinct value (in order of first appearance, so a date format is inferred from the same first value).
    None when any cell needs the strict reading to accept it or to name it as bad.
    """
    headers = _price_headers(spec, columns)
    if any(header is None for header in headers.values()):
        return None
    labels = {headers[name] for name in ("date", "ticker") if name in headers}
    numeric = {header for name, header in headers.items() if name not in ("date", "ticker")}
    if labels & numeric:
        return None
    # The float parser reads True/False (any case pandas knows) as 1/0, where to_numeric sees no number.
    lowered = text.lower()
    if "true" in lowered or "false" in lowered:
        return None
    dtypes = defaultdict(lambda: "object", {**{h: "category" for h in labels}, **{h: "float64" for h in numeric}})
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=dtypes, keep_default_na=False)
    except (ValueError, TypeError, OverflowError):  # a cell that is not a number (or a malformed file)
        return None
    if frame.empty or not set(headers.values()) <= set(frame.columns):
        return None
    if not frame.index.equals(pd.RangeIndex(len(frame))):  # more cells than headers: pandas made an index of them
        return None

    distinct = _first_seen(frame[headers["date"]])
    if distinct is None:
        return None
    values, rows = distinct
    raw_dates = values.str.strip()
    if raw_dates.str.contains(_DATE_WITH_TIME, regex=True).any():
        return None
    try:
        dates = _parse_dates(raw_dates, "", utc=False)
    except DataError:
        return None
    if dates.isna().any() or getattr(dates.dtype, "tz", None) is not None:
        return None
    dates = dates.iloc[rows].reset_index(drop=True)

    if "ticker" in headers:
        distinct = _first_seen(frame[headers["ticker"]])
        if distinct is None:
            return None
        values, rows = distinct
        names = values.str.strip()
        if (names == "").any():
            return None
        tickers = names.iloc[rows].reset_index(drop=True)
    else:
        tickers = pd.Series(str(spec["ticker"]), index=frame.index)

    prices = pd.DataFrame({"ticker": tickers, "timestamp": dates})
    for name in _OHLC + (["volume"] if "volume" in headers else []):
        numbers = frame[headers[name]].to_numpy(dtype="float64")
        # -0.0 as well: to_numeric reads "-0" as the integer 0
        if not (np.abs(numbers) < _EXACT_INTEGERS).all() or np.signbit(numbers).any():
            return None
        if name != "volume" and (numbers == 0).any():
            return None
        prices[name] = numbers
    if "volume" not in headers:
        prices["volume"] = 0.0
    return prices


def _strict_prices(frame: pd.DataFrame, spec: Mapping, columns: Mapping, path: Path,
                   at: Callable[[int], str]) -> pd.DataFrame:
    """Prices from a frame of strings, every cell checked; DataError naming the line of the first bad one."""
    key = "data.prices"
    date_column = _column(frame, columns, "date", path, f"{key}.columns")
    raw_dates = frame[date_column].str.strip()
    bad = _first_bad(raw_dates.str.contains(_DATE_WITH_TIME, regex=True))
    if bad is not None:
        raise DataError(f"{at(bad)}: date {frame[date_column].iloc[bad]!r} in column {date_column!r} has a time of "
                        f"day or a zone; write the session's date only, e.g. 2019-01-02")
    dates = _parse_dates(raw_dates, f"{path}: column {date_column!r}", utc=False)
    bad = _first_bad(dates.isna())
    if bad is not None:
        raise DataError(f"{at(bad)}: cannot parse date {frame[date_column].iloc[bad]!r} in column {date_column!r}")
    if getattr(dates.dtype, "tz", None) is not None:  # a zone the pattern above does not know
        raise DataError(f"{at(0)}: date {frame[date_column].iloc[0]!r} in column {date_column!r} has a zone; "
                        f"write the session's date only, e.g. 2019-01-02")

    if spec.get("ticker") is not None:
        tickers = pd.Series(str(spec["ticker"]), index=frame.index)
    else:
        ticker_column = _column(frame, columns, "ticker", path, f"{key}.columns")
        tickers = frame[ticker_column].str.strip()
        bad = _first_bad(tickers == "")
        if bad is not None:
            raise DataError(f"{at(bad)}: empty ticker in column {ticker_column!r}")

    prices = pd.DataFrame({"ticker": tickers, "timestamp": dates})
    volume_header = columns.get("volume")
    for name in _OHLC + (["volume"] if volume_header is not None else []):
        header = _column(frame, columns, name, path, f"{key}.columns")
        numbers = pd.to_numeric(frame[header].str.strip(), errors="coerce")
        for mask, problem in [(numbers.isna(), "is not a number"),
                              (numbers < 0 if name == "volume" else numbers <= 0,
                               "is negative" if name == "volume" else "is not a positive price")]:
            bad = _first_bad(mask)
            if bad is not None:
                raise DataError(f"{at(bad)}: {name} {frame[header].iloc[bad]!r} in column {header!r} {problem}")
        prices[name] = numbers.astype("float64")
    if volume_header is None:
        prices["volume"] = 0.0
    return prices


# a clock time followed by a UTC offset: "10:00Z", "08:00:00+01:00", "15:45:02 +0000 2014"
_HAS_OFFSET = r"\d:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})(?:\s|$)"


def _load_csv_news(cfg: Mapping) -> tuple[pd.DataFrame, tuple[Path, str] | None, int]:
    spec = cfg.get("news") or {}
    key = "data.news"
    if spec.get("path") is None:
        return pd.DataFrame({c: pd.Series([], dtype="object") for c in NEWS_COLUMNS}).assign(
            timestamp=pd.DatetimeIndex([], tz="UTC")), None, 0
    path = _user_path(spec["path"], f"{key}.path")
    timezone = spec.get("timezone")
    if timezone is not None:
        try:  # the schema's check, for callers of load_dataset that skip the schema
            time_zone(str(timezone))
        except ValueError as error:
            raise ConfigError(f"{key}.timezone: {error}") from None
    frame, text, digest = _read_text_csv(path, _required(spec, "encoding", key), f"{key}.encoding")
    columns = spec.get("columns") or {}

    stamp_column = _column(frame, columns, "timestamp", path, f"{key}.columns")
    text_column = _column(frame, columns, "text", path, f"{key}.columns")
    timestamps = _news_timestamps(frame[stamp_column], timezone, path, text)

    # No ticker mapping means every item is market-wide; a mapping to a header the file lacks is a mistake
    # (silently making every item market-wide would hand one company's news to every instrument).
    ticker_header = columns.get("ticker")
    if ticker_header is None:
        tickers = ""
    elif ticker_header in frame.columns:
        tickers = frame[ticker_header].str.strip()  # an empty cell: market-wide
    else:
        raise DataError(
            f"{path}: missing column {ticker_header!r} ({key}.columns.ticker); columns found: "
            f"{', '.join(map(str, frame.columns))}; set {key}.columns.ticker=null if every item is market-wide"
        )
    texts = frame[text_column].str.strip()
    empty = texts == ""
    news = pd.DataFrame({"timestamp": timestamps, "ticker": tickers, "text": texts, "source": path.name})
    return news[~empty], (path, digest), int(empty.sum())


def _news_timestamps(values: pd.Series, timezone: str | None, path: Path, text: str) -> pd.Series:
    """UTC instants of news stamps: with an offset converted exactly; naive ones read in ``timezone``; date-only
    ones at the end of that day in ``timezone``. Without a ``timezone``, a stamp that needs one is a ConfigError."""
    column = values.name
    raw = values.str.strip()
    where = f"{path}: column {column!r}"
    timestamps = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
    needs_zone = pd.Series(False, index=raw.index)
    has_time = raw.str.contains(":", regex=False)
    aware = has_time & raw.str.contains(_HAS_OFFSET, regex=True)
    if aware.any():
        timestamps[aware] = _parse_dates(raw[aware], where, utc=True).dt.as_unit("us")
    naive = has_time & ~aware
    if naive.any():
        local = _parse_dates(raw[naive], where)
        if getattr(local.dtype, "tz", None) is not None:  # a zone name such as "UTC" also makes it aware
            timestamps[naive] = local.dt.tz_convert("UTC").dt.as_unit("us")
        else:
            needs_zone[naive] = local.notna()
            if timezone is not None:
                local = local.dt.tz_localize(timezone, ambiguous=False, nonexistent="shift_forward")
                timestamps[naive] = local.dt.tz_convert("UTC").dt.as_unit("us")
    date_only = ~has_time
    if date_only.any():
        days = _parse_dates(raw[date_only], where)
        needs_zone[date_only] = days.notna()
        if timezone is not None:
            parsed = days.notna()
            timestamps.loc[parsed.index[parsed]] = end_of_day(days[parsed], timezone).as_unit("us")

    line = lambda record: _line_of(text, record)  # noqa: E731
    bad = _first_bad(timestamps.isna() & ~needs_zone)
    if bad is not None:
        raise DataError(f"{path}: line {line(bad)}: cannot parse timestamp {values.iloc[bad]!r} in column {column!r}")
    bad = _first_bad(needs_zone) if timezone is None else None
    if bad is not None:
        day = " (a date-only stamp counts as published at the end of that day there)" if date_only.iloc[bad] else ""
        raise ConfigError(
            f"data.news.timezone: {path} has timestamps without a time zone (e.g. {values.iloc[bad]!r} on line "
            f"{line(bad)}); set data.news.timezone to the zone they were written in, e.g. America/New_York or UTC{day}"
        )
    return timestamps


def _load_csv(cfg: Mapping, roots: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The user's prices (strict: every bad row is an error naming its line) and optional news."""
    prices, prices_path, prices_digest = _load_csv_prices(cfg)
    news, news_file, empty = _load_csv_news(cfg)
    digests = {str(prices_path): prices_digest, **({str(news_file[0]): news_file[1]} if news_file else {})}
    meta = {
        "files": list(digests),
        "sha256": digests,
        "licence": "user data",
        "origin": "user files",
        "news_items": len(news) + empty,
        "news_dropped": {"empty_text": empty},
    }
    return prices, news, meta


_LOADERS: dict[str, Callable[[Mapping, Sequence[Path]], tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]]] = {
    "djia": _load_djia,
    "stocknet": _load_stocknet,
    "csv": _load_csv,
}
