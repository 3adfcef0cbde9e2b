"""Ticker linking and the security master: hand-worked texts whose tickers are known by reading them."""
from __future__ import annotations

import pandas as pd
import pytest

from engine.errors import ConfigError, DataError
from engine.securities import Security, SecurityMaster, index_master, read_securities_csv, stocknet_master
from signals.linking import TickerLinker, bare_symbol_allowed, core_name, is_common_word, link_counts, link_news

# A small master with the hard cases: common-word names, symbols that are English words, a digit name, a name
# that contains another company's name.
_EXTRA = SecurityMaster(
    (
        Security("A", "Agilent Technologies, Inc.", ("Agilent",)),
        Security("ALL", "The Allstate Corporation", ("Allstate",)),
        Security("IT", "Gartner, Inc.", ("Gartner",)),
        Security("TGT", "Target Corporation"),
        Security("MMM", "3M Company", ("3M",)),
        Security("APLE", "Apple Hospitality REIT, Inc."),
        Security("GS", "The Goldman Sachs Group, Inc.", ("Goldman Sachs",)),
        Security("BRK-B", "Berkshire Hathaway Inc.", ("Berkshire Hathaway",)),
        Security("NDAQ", "Nasdaq, Inc.", ("Nasdaq",)),
    )
)


@pytest.fixture(scope="module")
def master() -> SecurityMaster:
    return stocknet_master().merge(_EXTRA)


@pytest.fixture(scope="module")
def linker(master) -> TickerLinker:
    return TickerLinker(master)


def one(linker: TickerLinker, text: str) -> list[tuple[str, str]]:
    return linker.link([text])[0]


def test_cashtags_any_case_and_class_shares(linker):
    assert one(linker, "$AAPL and $msft both up") == [("AAPL", "cashtag"), ("MSFT", "cashtag")]
    assert one(linker, "Buffett's $BRK.B and $BRK/B") == [("BRK-B", "cashtag")]
    # an unknown or foreign-listed cashtag links nothing, and a dollar amount is no cashtag
    assert one(linker, "$IBG.TO $ZZZZ up $5") == []


def test_exchange_qualified_symbols(linker):
    assert one(linker, "Apple Inc. (NASDAQ:AAPL) trading outlook") == [("AAPL", "exchange")]
    assert one(linker, "General Electric (NYSE: GE) reports") == [("GE", "exchange")]


def test_legal_suffixes_are_stripped_and_confirm_common_words(linker):
    assert core_name("The Coca-Cola Company") == "Coca-Cola"
    assert core_name("JPMorgan Chase & Co.") == "JPMorgan Chase"
    assert core_name("Amazon.com, Inc.") == "Amazon.com"
    assert core_name("BP p.l.c.") == "BP"
    # "Apple" followed by a legal suffix needs no other context; "Target" (only a core of "Target Corporation")
    # links only with its suffix
    assert one(linker, "Apple Inc bought a startup") == [("AAPL", "name")]
    assert one(linker, "Target Corp. raised its outlook") == [("TGT", "name")]
    assert one(linker, "Facebook Price Target Raised, shares up") == [("FB", "name")]
    assert one(linker, "The Coca-Cola Company dividend") == [("KO", "name")]


def test_word_boundaries(linker):
    assert one(linker, "Applebee's shares rose 3% on earnings") == []
    assert one(linker, "GENERAL market news, stocks up") == []
    assert one(linker, "Sold 9.3M units; shares up") == []  # 3M inside a number
    assert one(linker, "3M raised its dividend") == [("MMM", "name")]
    assert one(linker, "@Brady_Microsoft says hi") == []  # part of a handle


def test_common_word_names_need_a_finance_cue(linker):
    assert one(linker, "Apple pie recipe for the weekend") == []
    assert one(linker, "Shares of Apple rose 3%") == [("AAPL", "name")]
    assert one(linker, "Apple shares fall after the event") == [("AAPL", "name")]
    assert one(linker, "Oracle of the village predicts rain") == []
    assert one(linker, "DONT CHASE NOW! stocks are extended") == []  # shouted common word
    assert one(linker, "#APPLE stock up 1%") == [("AAPL", "name")]  # ...but a hashtag counts
    assert one(linker, "microsoft is hiring") == [("MSFT", "name")]  # coinages need no cue, any case


def test_ambiguous_bare_symbols_never_link_bare(linker):
    assert one(linker, "ALL IN! IT is A sure thing, buy stocks") == []
    # KO and BA are words in the dictionaries: bare they stay unlinked; GE too, but "GE" is also the company's
    # everyday name (an alias), which links with a finance cue
    assert one(linker, "KO BA shares") == []
    assert one(linker, "GE KO BA shares") == [("GE", "name")]
    assert one(linker, "$ALL $IT $A") == [("ALL", "cashtag"), ("IT", "cashtag"), ("A", "cashtag")]
    assert one(linker, "AAPL and #MSFT at highs") == [("AAPL", "symbol"), ("MSFT", "symbol")]
    assert one(linker, "thanks @AAPL") == []  # a handle, not a symbol
    assert (bare_symbol_allowed("AAPL"), bare_symbol_allowed("ALL"), bare_symbol_allowed("A")) == (True, False, False)
    assert (bare_symbol_allowed("CEO"), bare_symbol_allowed("GE")) == (False, False)
    assert (is_common_word("Apple"), is_common_word("Microsoft"), is_common_word("Gates")) == (True, False, True)


def test_exchange_and_index_names_are_not_companies(linker):
    assert one(linker, "Sites set on Nasdaq 5,000 as stocks rally") == []


def test_multi_ticker_items_in_order_of_first_mention(linker):
    assert one(linker, "Microsoft and Google earnings beat; Exxon Mobil falls") == [
        ("MSFT", "name"), ("GOOG", "name"), ("XOM", "name"),
    ]
    # one ticker once, with its strongest method
    assert one(linker, "Microsoft (MSFT) shares: microsoft up") == [("MSFT", "symbol")]


def test_tagged_items_keep_their_own_tickers(linker):
    assert one(linker, "Bank of America $BAC added to Goldman Sachs conviction buy list") == [("BAC", "cashtag")]
    assert one(linker, "Bank of America added to Goldman Sachs conviction buy list") == [
        ("BAC", "name"), ("GS", "name"),
    ]


def test_universe_restricts_links_but_longer_names_still_block(master):
    linker = TickerLinker(master, universe=["MSFT", "AAPL"])
    assert one(linker, "Microsoft and Goldman Sachs shares up, Coca-Cola down") == [("MSFT", "name")]
    # APLE has no prices, yet "Apple Hospitality" is not read as Apple
    assert one(linker, "Apple Hospitality REIT shares rose 2%") == []
    assert one(linker, "Apple Hospitality REIT and Apple shares rose 2%") == [("AAPL", "name")]


def test_link_frame_keeps_the_index(linker):
    news = pd.DataFrame({"text": ["$AAPL up", "nothing here", None]}, index=[10, 20, 30])
    frame = linker.link_frame(news)
    assert frame.index.tolist() == [10, 20, 30]
    assert frame["linked_tickers"].tolist() == [("AAPL",), (), ()]
    assert frame["link_methods"].tolist() == [("cashtag",), (), ()]
    assert link_counts(linker.link(news["text"].fillna(""))) == {
        "cashtag": 1, "exchange": 0, "symbol": 0, "name": 0, "unlinked": 2,
    }


def _news() -> pd.DataFrame:
    stamps = pd.to_datetime(["2016-01-04 12:00", "2016-01-04 13:00", "2016-01-04 14:00"], utc=True)
    return pd.DataFrame(
        {
            "timestamp": stamps,
            "ticker": ["", "AAPL", ""],
            "text": ["Microsoft and Exxon Mobil shares up", "$MSFT beats", "Fed holds rates"],
            "source": ["s", "s", "s"],
        }
    )


def test_link_news_modes(linker):
    news = _news()
    same, report = link_news(news, linker, "off")
    assert same["ticker"].tolist() == ["", "AAPL", ""] and report["considered"] == 0

    filled, report = link_news(news, linker, "fill-missing")
    assert filled["ticker"].tolist() == ["MSFT", "XOM", "AAPL", ""]
    assert filled["link_method"].tolist() == ["name", "name", "", ""]
    assert filled["text"].tolist()[:2] == ["Microsoft and Exxon Mobil shares up"] * 2
    assert (report["considered"], report["linked"], report["unlinked"], report["links"]) == (2, 1, 1, 2)
    assert report["by_method"]["name"] == 1 and report["rows_out"] == 4

    relinked, report = link_news(news, linker, "always")
    assert relinked["ticker"].tolist() == ["MSFT", "XOM", "MSFT", ""]
    assert (report["considered"], report["linked"], report["unlinked"]) == (3, 2, 1)
    assert report["by_method"] == {"cashtag": 1, "exchange": 0, "symbol": 0, "name": 1}

    with pytest.raises(ConfigError, match="data.news.link_tickers"):
        link_news(news, linker, "sometimes")


def test_merge_keeps_the_first_name_and_adds_aliases():
    extra = SecurityMaster((Security("AAPL", "Apple Computer, Inc.", ("iPhone maker",), None, "Tech"),
                            Security("ACME", "Acme Corp")))
    merged = stocknet_master().merge(extra)
    assert merged["AAPL"].name == "Apple Inc."
    assert merged["AAPL"].aliases == ("Apple", "Apple Computer", "Apple Computer, Inc.", "iPhone maker")
    assert merged["AAPL"].sector == "Consumer Goods"
    assert len(merged) == 13 and "ACME" in merged


def test_index_master_from_pytickersymbols():
    dow = index_master(["DOW JONES"])
    assert len(dow) == 30
    assert dow["AAPL"].exchange == "NASDAQ"
    with pytest.raises(ConfigError, match="unknown index"):
        index_master(["NOT AN INDEX"])


def test_securities_csv_reads_aliases(tmp_path):
    path = tmp_path / "securities.csv"
    path.write_text(
        "\ufeffTicker,name,aliases,exchange\nacme,Acme Corp.,Acme|Road Runner Inc,nyse\n\nbrk.b,Berkshire,,\n"
    )
    master = read_securities_csv(path)
    assert master.tickers == ("ACME", "BRK-B")
    assert master["ACME"].aliases == ("Acme", "Road Runner Inc") and master["ACME"].exchange == "NYSE"
    assert master["BRK-B"].aliases == () and master["BRK-B"].exchange is None
    assert one(TickerLinker(master), "Road Runner Inc sues Acme") == [("ACME", "name")]


@pytest.mark.parametrize(
    "content, message",
    [
        ("ticker,company\nAAPL,Apple\n", "line 1: unknown column 'company'"),
        ("ticker,aliases\nAAPL,Apple\n", "line 1: missing column 'name'"),
        ("ticker,name\nAAPL,Apple\nAA PL,Bad\n", "line 3: ticker 'AA PL' is not a symbol"),
        (
            "ticker,name\nAAPL,Apple\n\nMSFT,Microsoft\naapl,Apple again\n",
            "line 5: ticker AAPL already given on line 2",
        ),
        ("ticker,name\nAAPL,\n", "line 2: empty name for AAPL"),
        ("ticker,name\nAAPL,Apple,extra\n", "line 2: 3 fields, the header has 2"),
        ("ticker,name,aliases\nAAPL,Apple,Apple||iPhone\n", "line 2: empty alias"),
        ('ticker,name\nAAPL,"Apple\nInc."\nMSFT,\n', "line 4: empty name for MSFT"),  # quoted line break
        ("ticker,name\n", "no securities"),
        ("", "empty file"),
    ],
)
def test_securities_csv_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "securities.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_securities_csv(path)
    assert str(error.value).startswith(f"{path}: ")


def test_securities_csv_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_securities_csv(tmp_path / "absent.csv")
    path = tmp_path / "latin.csv"
    path.write_bytes(b"ticker,name\nNSRGY,Soci\xe9t\xe9\n")
    with pytest.raises(DataError, match="line 2: cannot decode byte 0xe9"):
        read_securities_csv(path)


def test_names_in_links_and_as_a_channel_are_no_mentions(linker):
    # where to find the writer, not news about the company
    assert one(linker, "Follow us on Facebook for more trading ideas") == []
    assert one(linker, "Please contact us via twitter or Facebook") == []
    assert one(linker, "Join the AppleInvestor Facebook Group for news and trade analysis") == []
    assert one(linker, "Read more at https://www.facebook.com/groups/traders now") == []
    # ...while the same words about the company still link
    assert one(linker, "Bullish on Facebook, like us on Twitter") == [("FB", "name")]
    assert one(linker, "Facebook group chats get ads, shares up") == [("FB", "name")]
    assert one(linker, "Microsoft news http://t.co/AbCd") == [("MSFT", "name")]


def test_shop_adverts_give_common_word_names_no_context(linker):
    # "deal" and "buy" in an advert are no finance cue: Amazon the shop is not linked without its suffix
    assert one(linker, "Check out this Amazon deal! #blackfriday") == []
    assert one(linker, "<<-- Shop Amazon's Gold Box for our Deal of the Day") == []
    assert one(linker, "Shop at Amazon.com Inc for the Deal of the Day") == [("AMZN", "name")]  # coinage, suffix
    assert one(linker, "Amazon closes its deal for Twitch") == [("AMZN", "name")]
    assert one(linker, "Amazon will now know how you shop offline, says a retail analyst") == [("AMZN", "name")]
