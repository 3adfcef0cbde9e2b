"""Ticker linking: which instruments a news item or tweet is about, found in its text.

Four methods, strongest first: ``cashtag`` ($AAPL, any case), ``exchange`` (NASDAQ:AAPL, NYSE: GE), ``symbol``
(a bare upper-case AAPL or #AAPL, only for symbols that are neither English words nor common acronyms, so ALL,
IT, A, GE never link bare) and ``name`` (names and aliases at word boundaries, legal suffixes such as Inc., Corp.,
plc stripped). A name that is an ordinary English word (Apple, Target, Gap, Visa, Oracle; Boeing is not one)
links when written as in the master and either followed by a legal suffix ("Apple Inc") or in an item with a
finance cue (shares, earnings, CEO, a price, a percentage...) that is no shop advert ("Check out this Amazon deal!");
the core of a registered name that is an ordinary word ("Target" of "Target Corporation") links only with its
suffix. Names inside links (https://facebook.com/...) and names used as a channel ("follow us on Facebook", "join
our Facebook group") are no mentions. An item that carries cashtags or exchange-qualified symbols is taken at
its word: names and bare symbols link only untagged items. One Aho-Corasick automaton (pyahocorasick) finds all
names and symbols in one pass. There is no named-entity recogniser: no English spaCy pipeline installs from the
package indexes (en-core-web-sm is not on PyPI).

>>> from engine.securities import stocknet_master
>>> TickerLinker(stocknet_master(), universe=["AAPL", "MSFT"]).link(["Apple Inc. and Microsoft beat"])
[[('AAPL', 'name'), ('MSFT', 'name')]]
"""
from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import ahocorasick
import pandas as pd

from engine.errors import ConfigError
from engine.securities import US_EXCHANGES, Security, SecurityMaster, normalize_ticker

METHODS = ("cashtag", "exchange", "symbol", "name")  # strongest first
LINK_MODES = ("off", "fill-missing", "always")

_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z0-9]{0,5}(?:[.\-/][A-Za-z0-9]{1,3})?)(?![\w])")
_EXCHANGE = re.compile(
    r"(?<![\w])(?i:(" + "|".join(US_EXCHANGES) + r"))\s?:\s?\$?([A-Z][A-Z0-9]{0,5}(?:[.\-][A-Z0-9]{1,3})?)(?![\w])"
)
_LEGAL_SUFFIX = (
    r"(?:inc|incorporated|corp|corporation|co|cos|company|companies|ltd|limited|plc|p\.l\.c|llc|l\.l\.c|lp|l\.p|"
    r"s\.a|sa|n\.v|nv|ag|se|s\.p\.a|spa|ab|asa|oyj|group|holdings?)"
)
_TRAILING_SUFFIX = re.compile(r"(?:,?\s+(?:&\s*)?" + _LEGAL_SUFFIX + r"\.?)+$", re.IGNORECASE)
_FOLLOWING_SUFFIX = re.compile(r",?\s+" + _LEGAL_SUFFIX + r"(?![\w])", re.IGNORECASE)
_LEADING_THE = re.compile(r"^the\s+", re.IGNORECASE)
# Words, amounts and percentages that make an item about markets or a company (searched in lower case).
_FINANCE_CUE = re.compile(
    r"(?<![\w])(?:stocks?|shares?|shareholders?|stockholders?|earnings|revenues?|profits?|sales|quarter(?:ly)?|"
    r"q[1-4]|fy\d*|eps|guidance|outlook|forecasts?|analysts?|upgrades?|upgraded|downgrades?|downgraded|"
    r"price target|ratings?|investors?|invest(?:s|ing|ment)?|valuation|market|markets|dividends?|buybacks?|ipo|"
    r"ceo|cfo|chief executive|acqui(?:re|res|red|sition|sitions)|merger|deal|lawsuit|sues|sued|antitrust|"
    r"inc|corp|company|nasdaq|nyse|dow|s&p|trading|trades?|traders?|bullish|bearish|calls|puts|options|"
    r"rall(?:y|ies|ied)|surges?|surged|jumps?|jumped|plunges?|plunged|slumps?|fell|falls|rose|rises|gains?|"
    r"losses|results|reports?|reported|billion|million|bn|mln|valued|buy|sell|short|long|bid|layoffs?|"
    r"sec|ftc|regulators?|launch(?:es|ed)?|unveils?|unveiled)(?![\w])|\d%|\d\s?percent|\$\s?\d"
)
# Addresses: a name inside a link (https://facebook.com/..., www.apple.com) is where something is, not a mention.
_URL = re.compile(r"(?:https?://|www\.|pic\.twitter\.com/)\S*", re.IGNORECASE)
# A name used as a channel: "Follow us on Facebook", "contact us via twitter or Facebook", "Join the XYZ Facebook
# group" say where to find the writer, not anything about the company (searched in lower case, ending at the name).
_CHANNEL_BEFORE = re.compile(
    r"(?<![\w])(?:join|like|follow|contact|find|reach|message|friend|add|connect with|visit)\s+(?:us|me|@\w+)\s+"
    r"(?:\w+\s+)?(?:on|via|at|through|thru|in)\s+(?:[\w.@]+\s+(?:or|and|&)\s+)?$"
)
_CHANNEL_INVITATION = re.compile(
    r"(?<![\w])(?:join|like|follow|visit|check out)\s+(?:(?:our|my|the|this)\s+)?(?:[\w@#'.-]+\s+){0,2}$"
)
_CHANNEL_AFTER = re.compile(r"\s+(?:groups?|pages?|fan\s?pages?|profiles?|accounts?)(?![\w])")
# A shop advert ("Check out this Amazon deal!", "Shop Amazon's Gold Box for our Deal of the Day") names a shop, and
# its "deal", "buy" or "sales" are no finance cue: there a common-word name needs its legal suffix.
_SHOP_CUE = re.compile(
    r"(?:^|[^\w\s]\s*)shop\s+(?:now\s+|today\s+)?(?:at|on|the|our|\w+'s)\W|(?<![\w])(?:check out this|deals? of the day"
    r"|gold box|lightning deals?|#black ?friday|#cyber ?monday|coupon codes?|promo codes?|free shipping)"
)
# Upper-case words news and tweets write that are also tickers somewhere; never linked bare.
_ACRONYMS = frozenset(
    "AI AM PM MS TV PC IT US USA UK EU UN OK CEO CFO CTO COO IPO ETF ETFS EPS GDP CPI PPI USD EUR GBP GBX JPY CNY "
    "FX FOMC FED SEC FDA FTC DOJ ATH IMO LOL DD PE PT TA EOD YTD QOQ YOY AH PR HR ID IQ OS IOS API APP APPS NEW "
    "NOW UPS CNBC WSJ NYSE NASDAQ CBOE DOW SPX SPY QQQ VIX OTC NYC LA CA TX NY DC FL RT ICYMI FAQ FYI ASAP LLC "
    "INC CO CORP LTD PLC AG SA NV OI ETN HD CC USB LMT IR ER IV ATM SL TP DM HQ RSI MACD EMA SMA BIG ONE TWO ALL "
    "AND FOR ARE HAS WAS CAN FUN LOVE BEST GOOD REAL TRUE PLAY COST".split()
)
# Exchanges and indices, whose names are also companies' (Nasdaq Inc., Cboe, Dow Inc.): never linked as names.
_MARKET_NAMES = frozenset({"nasdaq", "nyse", "cboe", "amex", "dow", "dow jones", "russell", "s&p", "ftse", "nikkei"})
# Business words that are no name on their own ("The Bancorp, Inc." would otherwise link every "... Bancorp").
_GENERIC_NAMES = frozenset(
    "bancorp bancshares financial holdings holding group international industries technologies systems solutions "
    "partners enterprises trust capital energy resources healthcare pharmaceuticals therapeutics realty properties "
    "brands communications services".split()
)
# Inflected or function words the dictionaries lack as separate entries.
_EXTRA_WORDS = frozenset(
    "has does was were is am are been being did goes went gets got made makes said says sees saw told gave "
    "takes took its hers ours yours theirs whom whose cannot".split()
)


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Lower-cased English words and proper nouns of two dictionaries shipped by english-words: Webster's 2nd
    edition ("web2", 1934) and GCIDE. Apple, Target, Gap, Visa, Oracle, Amazon and Google (the verb) are in;
    coinages such as Microsoft, Facebook, Exxon, Boeing, JPMorgan are not.

    >>> "apple" in english_words(), "microsoft" in english_words()
    (True, False)
    """
    from english_words import get_english_words_set

    return frozenset(get_english_words_set(["web2", "gcide"], lower=True, alpha=True)) | _EXTRA_WORDS


def core_name(name: str) -> str:
    """``name`` without a leading "The", trailing legal suffixes and a trailing period.

    >>> core_name("The Coca-Cola Company"), core_name("JPMorgan Chase & Co."), core_name("BP p.l.c.")
    ('Coca-Cola', 'JPMorgan Chase', 'BP')
    """
    stripped = _LEADING_THE.sub("", name.strip())
    core = _TRAILING_SUFFIX.sub("", stripped).strip().rstrip(",").strip()
    return core or stripped


def is_common_word(alias: str) -> bool:
    """True for a one-word, letters-only alias whose lower-case form is an English word (Apple, Target, GE),
    which then needs context to link; False for coinages (Microsoft, JPMorgan) and multi-word names.

    >>> is_common_word("Apple"), is_common_word("Microsoft"), is_common_word("Bank of America")
    (True, False, False)
    """
    plain_case = alias[1:].islower() or alias.isupper() or alias.islower()  # CoStar, BofA: coinages
    if not (alias.isalpha() and plain_case):
        return False
    word, words = alias.lower(), english_words()
    # the dictionaries list no plurals: "Gates" is "gate" + s
    return word in words or (word[-1:] == "s" and word[:-1] in words) or (word[-2:] == "es" and word[:-2] in words)


def bare_symbol_allowed(ticker: str) -> bool:
    """True when ``ticker`` may link written bare (AAPL, #AAPL): two characters or more, not an English word
    (ALL, IT, GE, KO) and not a common upper-case acronym (CEO, IPO, USA).

    >>> bare_symbol_allowed("AAPL"), bare_symbol_allowed("ALL"), bare_symbol_allowed("A")
    (True, False, False)
    """
    return (
        len(ticker) >= 2
        and any(c.isalpha() for c in ticker)
        and ticker not in _ACRONYMS
        and not is_common_word(ticker.replace("-", ""))
    )


@dataclass(frozen=True)
class _Entry:
    """What a lower-cased automaton key may stand for: a symbol or a name of one security."""

    ticker: str
    method: str  # "symbol" or "name"
    forms: frozenset[str]  # the exact spellings accepted in the text
    hashtag_forms: frozenset[str]  # spellings accepted only right after '#' ("#APPLE", not "DONT CHASE")
    needs: str  # "": nothing more; "context": a finance cue (or a legal suffix); "suffix": a legal suffix after it
    company: str  # names of different companies under one key make it ambiguous


def _name_forms(alias: str, needs: str) -> tuple[frozenset[str], frozenset[str]]:
    forms, hashtag_forms = {alias}, set()
    (hashtag_forms if needs == "context" else forms).add(alias.upper())
    words = alias.split()
    if len(words) > 1:  # "Bank Of America" in title-case headlines
        forms.add(" ".join(w[:1].upper() + w[1:] for w in words))
    elif alias.isalpha() and not needs:
        forms.add(alias.lower())  # "microsoft", "google" in tweets
    return frozenset(forms), frozenset(hashtag_forms - forms)


def _aliases(security: Security) -> list[tuple[str, str]]:
    """``(alias, needs)`` for each spelling of ``security``: its names and aliases as written (a common word among
    them needs context) and their cores without legal suffixes (a core that is a common word or of two characters,
    such as "Target" from "Target Corporation", "News" from "News Corp", "Q2" from "Q2 Holdings", needs the suffix;
    a generic business word such as "Bancorp" is not used)."""
    found: dict[str, str] = {}
    for name in security.names:
        alias = name.strip().rstrip(".")
        if len(alias) >= 2 and any(c.isalpha() for c in alias) and alias.lower() not in _MARKET_NAMES:
            found.setdefault(alias, "context" if is_common_word(alias) else "")
    for name in security.names:
        core = core_name(name)
        if core in found or not any(c.isalpha() for c in core):
            continue
        if core.lower() in _MARKET_NAMES or core.lower() in _GENERIC_NAMES:
            continue
        found[core] = "suffix" if len(core) <= 2 or is_common_word(core) else ""
    return list(found.items())


class TickerLinker:
    """Find the tickers a text is about, restricted to ``universe`` (the tickers that have prices; None: all).

    Names of securities outside the universe are still matched, so that "Apple Hospitality" (APLE) is not read
    as Apple (AAPL) when APLE has no prices; their links are then dropped.

    >>> TickerLinker(master, universe=prices["ticker"].unique()).link(news["text"])
    """

    def __init__(self, master: SecurityMaster, universe: Iterable[str] | None = None) -> None:
        self.master = master
        self.universe = frozenset(master.tickers) if universe is None else frozenset(map(str, universe))
        self._known = frozenset(master.tickers)
        self._automaton = ahocorasick.Automaton()
        table: dict[str, list[_Entry]] = {}
        for security in master:
            company = core_name(security.name).lower()
            if bare_symbol_allowed(security.ticker):
                table.setdefault(security.ticker.lower(), []).append(
                    _Entry(security.ticker, "symbol", frozenset({security.ticker}), frozenset(), "", company)
                )
            for alias, needs in _aliases(security):
                entry = _Entry(security.ticker, "name", *_name_forms(alias, needs), needs, company)
                entries = table.setdefault(alias.lower(), [])
                if entry not in entries:
                    entries.append(entry)
        for key, entries in table.items():
            self._automaton.add_word(key, (len(key), tuple(entries)))
        if table:
            self._automaton.make_automaton()
        self._has_names = bool(table)
        self._written: dict[str, str | None] = {}  # cashtag as written -> known ticker or None

    def link(self, texts: Iterable[str]) -> list[list[tuple[str, str]]]:
        """For each text, its ``(ticker, method)`` pairs in order of first mention, each ticker once with its
        strongest method (``METHODS`` order).

        >>> linker.link(["$AAPL and $MSFT", "Microsoft and Exxon Mobil shares up", "apple pie"])
        [[('AAPL', 'cashtag'), ('MSFT', 'cashtag')], [('MSFT', 'name'), ('XOM', 'name')], []]
        """
        return [self._link_one(text) for text in texts]

    def link_frame(self, news: pd.DataFrame, text_column: str = "text") -> pd.DataFrame:
        """One row per row of ``news`` (same index): ``linked_tickers`` and ``link_methods`` (tuples, aligned;
        empty when nothing linked).

        >>> linker.link_frame(data.news)["linked_tickers"].str.len().gt(0).mean()
        """
        links = self.link(news[text_column].fillna("").astype(str).tolist())
        return pd.DataFrame(
            {
                "linked_tickers": [tuple(t for t, _ in pairs) for pairs in links],
                "link_methods": [tuple(m for _, m in pairs) for pairs in links],
            },
            index=news.index,
        )

    def _link_one(self, text: str) -> list[tuple[str, str]]:
        if not isinstance(text, str) or not text:
            return []
        if "&" in text:
            text = html.unescape(text)
        found: dict[str, list[int]] = {}  # ticker -> [method rank, first position]
        tagged = False
        if "$" in text:
            for match in _CASHTAG.finditer(text):
                tagged = True
                self._add(found, self._ticker_of(match.group(1)), 0, match.start())
        if ":" in text:
            for match in _EXCHANGE.finditer(text):
                tagged = True
                self._add(found, self._ticker_of(match.group(2)), 1, match.start())
        # An item that carries cashtags or exchange-qualified symbols names its tickers itself: other companies it
        # mentions in words are comparisons, analysts, suppliers; names and bare symbols link untagged items only.
        if not tagged and self._has_names:
            self._match_names(text, found)
        ordered = sorted(found.items(), key=lambda item: item[1][1])
        return [(ticker, METHODS[rank]) for ticker, (rank, _) in ordered]

    def _ticker_of(self, written: str) -> str | None:
        ticker = self._written.get(written)
        if ticker is None and written not in self._written:
            normalized = normalize_ticker(written)
            ticker = normalized if normalized in self._known else None
            if len(self._written) < 100_000:
                self._written[written] = ticker
        return ticker

    def _add(self, found: dict[str, list[int]], ticker: str | None, rank: int, position: int) -> None:
        if ticker is None or ticker not in self.universe:
            return
        previous = found.get(ticker)
        if previous is None:
            found[ticker] = [rank, position]
        else:
            previous[0] = min(previous[0], rank)
            previous[1] = min(previous[1], position)

    def _match_names(self, text: str, found: dict[str, list[int]]) -> None:
        if "://" in text or "www." in text or "pic.twitter" in text:  # blank links out, keeping offsets
            text = _URL.sub(lambda match: " " * len(match.group()), text)
        lower = text.lower()
        if len(lower) != len(text):  # a few characters (e.g. "İ") lower to two; keep offsets aligned
            lower = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
        spans: list[tuple[int, int, tuple[_Entry, ...]]] = []
        for end, (length, entries) in self._automaton.iter(lower):
            start = end - length + 1
            before = text[start - 1] if start else " "
            after = text[end + 1] if end + 1 < len(text) else " "
            if before.isalnum() or before == "_" or after.isalnum() or after == "_":
                continue
            if before in ".," and text[start].isdigit():
                continue  # "9.3M" is a number, not 3M
            written = text[start : end + 1]
            accepted = tuple(
                e
                for e in entries
                if (written in e.forms or (before == "#" and written in e.hashtag_forms))
                and not (e.method == "symbol" and before == "@")  # @TT is a handle
            )
            if accepted:
                spans.append((start, end + 1, accepted))
        if not spans:
            return
        spans.sort(key=lambda span: (span[0] - span[1], span[0]))  # longest first, then leftmost
        taken: list[tuple[int, int]] = []
        evidence: bool | None = None
        for start, end, entries in spans:
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            taken.append((start, end))
            if len({e.company for e in entries}) > 1:
                continue  # one alias, several companies: ambiguous
            if entries[0].method == "name" and _is_channel(lower, start, end):
                continue
            for entry in entries:
                if entry.needs and not _FOLLOWING_SUFFIX.match(text, end):
                    if entry.needs == "suffix":
                        continue
                    if evidence is None:  # the item is about business, and no shop advert
                        evidence = _FINANCE_CUE.search(lower) is not None and _SHOP_CUE.search(lower) is None
                    if not evidence:
                        continue
                self._add(found, entry.ticker, 2 if entry.method == "symbol" else 3, start)


def _is_channel(lower: str, start: int, end: int) -> bool:
    """True when the name at ``lower[start:end]`` is where to find the writer ("like us on Facebook", "join our
    Facebook group"), not the company."""
    window = max(0, start - 60)
    if _CHANNEL_BEFORE.search(lower, window, start) is not None:
        return True
    return _CHANNEL_AFTER.match(lower, end) is not None and _CHANNEL_INVITATION.search(lower, window, start) is not None


def link_news(news: pd.DataFrame, linker: TickerLinker, mode: str) -> tuple[pd.DataFrame, dict]:
    """Apply ``data.news.link_tickers``: ``off`` returns ``news`` unchanged; ``fill-missing`` links the items
    whose ``ticker`` is empty (market-wide); ``always`` links every item. A linked item becomes one row per linked
    ticker (column ``link_method`` says how); an item that links to nothing keeps its row and ticker. The report
    counts the items considered, linked (by their strongest method) and unlinked, and the rows written.

    >>> news, report = link_news(data.news, linker, "fill-missing"); report["unlinked"]
    """
    if mode not in LINK_MODES:
        raise ConfigError(f"data.news.link_tickers: {mode!r} is not one of {', '.join(LINK_MODES)}")
    report = {"mode": mode, "considered": 0, "linked": 0, "unlinked": 0, "by_method": {m: 0 for m in METHODS},
              "links": 0, "rows_in": len(news), "rows_out": len(news)}
    out = news.copy()
    out["link_method"] = ""
    if mode == "off" or news.empty:
        return out, report
    considered = out["ticker"].fillna("").astype(str).eq("") if mode == "fill-missing" else pd.Series(True, out.index)
    subset = out[considered]
    links = linker.link(subset["text"].fillna("").astype(str).tolist())
    report["considered"] = len(subset)
    positions = considered.to_numpy().nonzero()[0]  # of the rows of ``subset``, in order
    replace_at: dict[int, list[tuple[str, str]]] = {}
    for position, pairs in zip(positions, links):
        if pairs:
            replace_at[int(position)] = pairs
            report["linked"] += 1
            report["links"] += len(pairs)
            report["by_method"][min((p[1] for p in pairs), key=METHODS.index)] += 1
    report["unlinked"] = report["considered"] - report["linked"]
    if not replace_at:
        return out, report
    take: list[int] = []
    tickers: list[str] = []
    methods: list[str] = []
    original = out["ticker"].tolist()
    for position in range(len(out)):
        pairs = replace_at.get(position)
        if pairs is None:
            take.append(position)
            tickers.append(original[position])
            methods.append("")
        else:
            for ticker, method in pairs:
                take.append(position)
                tickers.append(ticker)
                methods.append(method)
    result = out.iloc[take].reset_index(drop=True)
    result["ticker"] = tickers
    result["link_method"] = methods
    report["rows_out"] = len(result)
    return result, report


def link_counts(links: Sequence[Sequence[tuple[str, str]]]) -> dict[str, int]:
    """Items linked by their strongest method, and ``unlinked``, for a ``TickerLinker.link`` result.

    >>> link_counts([[("AAPL", "name")], []])
    {'cashtag': 0, 'exchange': 0, 'symbol': 0, 'name': 1, 'unlinked': 1}
    """
    counts = Counter(min((m for _, m in pairs), key=METHODS.index) if pairs else "unlinked" for pairs in links)
    return {**{m: counts.get(m, 0) for m in METHODS}, "unlinked": counts.get("unlinked", 0)}
