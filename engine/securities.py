"""The security master: which instruments exist and the names news uses for them.

A ``Security`` is a ticker with its company name, aliases and, when known, exchange and sector. A
``SecurityMaster`` holds them by ticker; three sources build one: the built-in StockNet twelve
(``stocknet_master``), index constituents shipped by ``pytickersymbols`` (``index_master``) and the user's own
``securities.csv`` (``read_securities_csv``). ``signals.linking`` turns a master into a ticker linker.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from engine.errors import ConfigError, DataError

# Upper-case letters and digits, optionally one class suffix (BRK-B, RDS-A); '.' and '/' are folded to '-'.
_TICKER = re.compile(r"^[A-Z0-9]{1,6}(?:-[A-Z0-9]{1,3})?$")
US_EXCHANGES = ("NASDAQ", "NYSE", "NYSEARCA", "NYSEAMERICAN", "AMEX", "BATS", "OTC", "OTCMKTS")
US_INDICES = ("S&P 500", "NASDAQ 100", "DOW JONES", "S&P 600")
CSV_COLUMNS = ("ticker", "name", "aliases", "exchange", "sector")
ALIAS_SEPARATOR = "|"


def normalize_ticker(raw: str) -> str:
    """The canonical spelling of a ticker: stripped, upper case, class separator '-' (``brk.b`` -> ``BRK-B``).

    >>> normalize_ticker(" brk.b ")
    'BRK-B'
    """
    return raw.strip().upper().replace(".", "-").replace("/", "-")


@dataclass(frozen=True)
class Security:
    """One instrument: ``ticker`` (canonical, see ``normalize_ticker``), company ``name`` as registered
    (legal suffix included), extra ``aliases`` news uses, and optional ``exchange`` and ``sector``.

    >>> Security("AAPL", "Apple Inc.", aliases=("Apple",), exchange="NASDAQ")
    """

    ticker: str
    name: str
    aliases: tuple[str, ...] = ()
    exchange: str | None = None
    sector: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The registered name followed by the aliases, without repeats."""
        return tuple(dict.fromkeys((self.name, *self.aliases)))


@dataclass(frozen=True)
class SecurityMaster:
    """Securities by ticker, in a fixed (sorted) order, and the sources they came from.

    >>> master = stocknet_master().merge(index_master()); master["AAPL"].name
    'Apple Inc.'
    """

    securities: tuple[Security, ...]
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        tickers = [security.ticker for security in self.securities]
        duplicated = sorted({t for t in tickers if tickers.count(t) > 1})
        if duplicated:
            raise ValueError(f"duplicate tickers in security master: {', '.join(duplicated)}")
        object.__setattr__(self, "securities", tuple(sorted(self.securities, key=lambda s: s.ticker)))
        object.__setattr__(self, "_by_ticker", {security.ticker: security for security in self.securities})

    def __len__(self) -> int:
        return len(self.securities)

    def __iter__(self) -> Iterator[Security]:
        return iter(self.securities)

    def __contains__(self, ticker: object) -> bool:
        return ticker in self._by_ticker

    def __getitem__(self, ticker: str) -> Security:
        return self._by_ticker[ticker]

    @property
    def tickers(self) -> tuple[str, ...]:
        """All tickers, sorted."""
        return tuple(security.ticker for security in self.securities)

    def merge(self, other: "SecurityMaster") -> "SecurityMaster":
        """This master plus ``other``: a ticker in both keeps this master's name, exchange and sector (the ones
        ``other`` lacks are filled in) and gets the aliases of both, with ``other``'s name as one more alias.

        >>> stocknet_master().merge(read_securities_csv("securities.csv"))
        """
        merged = {security.ticker: security for security in self.securities}
        for security in other.securities:
            mine = merged.get(security.ticker)
            if mine is None:
                merged[security.ticker] = security
                continue
            aliases = tuple(dict.fromkeys(a for a in (*mine.aliases, *security.names) if a != mine.name))
            merged[security.ticker] = replace(
                mine,
                aliases=aliases,
                exchange=mine.exchange or security.exchange,
                sector=mine.sector or security.sector,
            )
        return SecurityMaster(tuple(merged.values()), sources=self.sources + other.sources)


# The StockNet twelve, with the names in use over 2014-2016 (Google became Alphabet in October 2015;
# Facebook became Meta later) and the short forms news and tweets write. Sectors follow StockNet's StockTable.
_STOCKNET = (
    Security("AAPL", "Apple Inc.", ("Apple", "Apple Computer"), "NASDAQ", "Consumer Goods"),
    Security("AMZN", "Amazon.com, Inc.", ("Amazon", "Amazon.com"), "NASDAQ", "Services"),
    Security("BA", "The Boeing Company", ("Boeing",), "NYSE", "Industrial Goods"),
    Security("BAC", "Bank of America Corporation", ("Bank of America", "BofA"), "NYSE", "Financial"),
    Security("FB", "Facebook, Inc.", ("Facebook",), "NASDAQ", "Technology"),
    Security("GE", "General Electric Company", ("General Electric", "GE"), "NYSE", "Industrial Goods"),
    Security("GOOG", "Alphabet Inc.", ("Alphabet", "Google", "Google Inc."), "NASDAQ", "Technology"),
    Security(
        "JPM", "JPMorgan Chase & Co.", ("JPMorgan Chase", "JPMorgan", "JP Morgan", "J.P. Morgan", "Chase"),
        "NYSE", "Financial",
    ),
    Security("KO", "The Coca-Cola Company", ("Coca-Cola", "Coca Cola", "Coke"), "NYSE", "Consumer Goods"),
    Security("MSFT", "Microsoft Corporation", ("Microsoft",), "NASDAQ", "Technology"),
    Security("ORCL", "Oracle Corporation", ("Oracle",), "NYSE", "Technology"),
    Security("XOM", "Exxon Mobil Corporation", ("Exxon Mobil", "ExxonMobil", "Exxon"), "NYSE", "Basic Materials"),
)


def stocknet_master() -> SecurityMaster:
    """The built-in master of StockNet's twelve tweet tickers (AAPL ... XOM).

    >>> stocknet_master().tickers[:3]
    ('AAPL', 'AMZN', 'BA')
    """
    return SecurityMaster(_STOCKNET, sources=("stocknet",))


def index_master(indices: Sequence[str] = US_INDICES) -> SecurityMaster:
    """Constituents of the named indices as shipped by ``pytickersymbols`` (the pinned version's snapshot: current
    names, not historical ones), one security per listed ``symbol``, exchange from its US listing, sector from
    its last industry entry.

    >>> index_master(["DOW JONES"])["KO"].name
    'The Coca-Cola Company'
    """
    from pytickersymbols import PyTickerSymbols

    catalog = PyTickerSymbols()
    unknown = [index for index in indices if index not in catalog.get_all_indices()]
    if unknown:
        raise ConfigError(f"unknown index {unknown[0]!r}; pytickersymbols has: {', '.join(catalog.get_all_indices())}")
    found: dict[str, Security] = {}
    for index in indices:
        for company in catalog.get_stocks_by_index(index):
            ticker = normalize_ticker(company.get("symbol") or "")
            name = (company.get("name") or "").strip()
            if not _TICKER.match(ticker) or not name or ticker in found:
                continue
            exchange = None
            for listing in company.get("symbols") or []:
                venue, _, symbol = str(listing.get("google") or "").partition(":")
                if venue in US_EXCHANGES and normalize_ticker(symbol) == ticker:
                    exchange = venue
                    break
            industries = company.get("industries") or []
            found[ticker] = Security(ticker, name, (), exchange, industries[-1] if industries else None)
    return SecurityMaster(tuple(found.values()), sources=tuple(f"pytickersymbols:{index}" for index in indices))


def read_securities_csv(path: str | Path, encoding: str = "utf-8") -> SecurityMaster:
    """The user's security master: a CSV with header ``ticker,name`` and optionally ``aliases`` (separated by
    ``|``), ``exchange``, ``sector``. A bad row raises DataError naming the file and line; nothing is skipped.

    >>> read_securities_csv("securities.csv")["ACME"].aliases
    ('Acme',)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (securities file)")
    data = path.read_bytes()
    try:
        text = data.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}: line {line}: cannot decode byte 0x{data[error.start]:02x} as {encoding}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty file (expected a header line with ticker,name)")
    header_line = reader.line_num
    columns = [cell.strip().lower() for cell in header]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise DataError(
            f"{path}: line {header_line}: unknown column {unknown[0]!r}; allowed: {', '.join(CSV_COLUMNS)}"
        )
    for required in ("ticker", "name"):
        if required not in columns:
            raise DataError(f"{path}: line {header_line}: missing column {required!r}")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: line {header_line}: column {repeated[0]!r} appears twice")
    securities: dict[str, Security] = {}
    first_line: dict[str, int] = {}
    previous_end = reader.line_num
    for row in reader:
        line, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise DataError(f"{path}: line {line}: {len(row)} fields, the header has {len(columns)}")
        cells = {column: cell.strip() for column, cell in zip(columns, row)}
        ticker = normalize_ticker(cells["ticker"])
        if not ticker:
            raise DataError(f"{path}: line {line}: empty ticker")
        if not _TICKER.match(ticker):
            raise DataError(
                f"{path}: line {line}: ticker {cells['ticker']!r} is not a symbol "
                "(1-6 letters or digits, optionally a class suffix such as BRK-B)"
            )
        if ticker in securities:
            raise DataError(f"{path}: line {line}: ticker {ticker} already given on line {first_line[ticker]}")
        if not cells["name"]:
            raise DataError(f"{path}: line {line}: empty name for {ticker}")
        aliases = tuple(a.strip() for a in cells.get("aliases", "").split(ALIAS_SEPARATOR))
        if cells.get("aliases") and not all(aliases):
            raise DataError(f"{path}: line {line}: empty alias in {cells['aliases']!r} (aliases are separated by '|')")
        exchange = cells.get("exchange", "").upper() or None
        securities[ticker] = Security(
            ticker, cells["name"], tuple(a for a in aliases if a), exchange, cells.get("sector") or None
        )
        first_line[ticker] = line
    if not securities:
        raise DataError(f"{path}: no securities (only the header line)")
    return SecurityMaster(tuple(securities.values()), sources=(f"csv:{path}",))


def load_master(sources: Iterable[str], securities_csv: str | Path | None = None) -> SecurityMaster:
    """Merge the named sources in order: ``stocknet``, ``indices`` (``index_master()``) and ``csv``
    (``read_securities_csv(securities_csv)``); earlier sources win on names.

    >>> load_master(["stocknet", "indices"])
    """
    master: SecurityMaster | None = None
    for source in sources:
        if source == "stocknet":
            part = stocknet_master()
        elif source == "indices":
            part = index_master()
        elif source == "csv":
            if securities_csv is None:
                raise ConfigError("security master source 'csv' needs the path of a securities.csv")
            part = read_securities_csv(securities_csv)
        else:
            raise ConfigError(f"unknown security master source {source!r} (stocknet, indices, csv)")
        master = part if master is None else master.merge(part)
    if master is None:
        raise ConfigError("no security master source given (stocknet, indices, csv)")
    return master
