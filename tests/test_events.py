"""Event types: the taxonomy, the classifier on clear-cut and tie-break examples, its determinism, its score on the
held-out split of tests/data/events_eval.csv, and the per-(ticker, session) event features (no look-ahead)."""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import DataError
from signals.events import (
    EVAL_PATH,
    EVENT_TYPES,
    PRIORITY,
    EventClassifier,
    classify,
    evaluate,
    event_columns,
    event_features,
    read_eval_set,
)

TYPES = ["earnings", "guidance", "analyst_rating", "mergers_acquisitions", "legal_regulatory", "product_contract",
         "management_change", "capital_actions", "macro_market", "other"]
GUIDE = Path(__file__).parent / "data" / "EVENTS_LABELLING.md"

# Written for these tests (none is in the evaluation set); each is clear-cut under the labelling guide.
CLEAR_CUT = {
    "earnings": ["Intel quarterly profit beats analyst estimates", "$NFLX reports Q2 EPS of $0.42 vs $0.35 expected",
                 "Siemens net income fell 12% in the fourth quarter"],
    "guidance": ["Caterpillar cuts its full-year sales forecast", "$ADBE raises fiscal 2015 guidance",
                 "Nestle issues profit warning as demand slows"],
    "analyst_rating": ["Morgan Stanley downgrades $TSLA to underweight", "Barclays raises Disney price target to $120",
                       "Citi initiates coverage of Nike with a buy rating"],
    "mergers_acquisitions": ["Pfizer agrees to buy Hospira for $15 billion", "$YHOO in talks to acquire Tumblr",
                             "Oracle makes takeover bid for rival software maker"],
    "legal_regulatory": ["Google fined by EU regulators in antitrust case",
                         "Shareholders file class action lawsuit against Valeant", "SEC opens probe into $TSLA disclosures"],
    "product_contract": ["Samsung unveils the Galaxy S6 at Mobile World Congress", "Lockheed wins $4 billion Pentagon contract",
                         "Toyota recalls 1.2 million cars over airbag defect"],
    "management_change": ["Yahoo names Marissa Mayer chief executive", "Twitter CFO Anthony Noto steps down",
                          "Sony appoints new chairman"],
    "capital_actions": ["$KO raises quarterly dividend by 6%", "Board approves $10 billion share buyback",
                        "Alibaba prices its IPO at $68 a share"],
    "macro_market": ["Fed raises interest rates by a quarter point", "Oil prices fall below $40 a barrel",
                     "Eurozone unemployment climbs to record high"],
    "other": ["Earthquake strikes northern Japan, no tsunami warning", "$AAPL looking strong on the daily chart",
              "Our penny stock picks gained 400% this month, subscribe now"],
}


def test_taxonomy_has_every_required_type_with_a_definition_and_a_guide_section():
    assert list(EVENT_TYPES) == TYPES
    assert sorted(PRIORITY) == sorted(TYPES)
    guide = GUIDE.read_text(encoding="utf-8")
    for name, definition in EVENT_TYPES.items():
        assert definition.strip() and "\n" not in definition
        assert re.search(rf"^### {name}$", guide, re.MULTILINE), f"labelling guide lacks a section for {name}"


@pytest.mark.parametrize("label", TYPES)
def test_clear_cut_examples(label):
    assert list(classify(CLEAR_CUT[label])) == [label] * len(CLEAR_CUT[label])


@pytest.mark.parametrize("text, label", [
    # rule 1: the headline's main event wins
    ("Apple beats estimates, raises dividend", "earnings"),
    ("Apple raises dividend after record quarter", "capital_actions"),
    # rule 2: a rating action is itself the event
    ("Analyst downgrades $TWTR to sell after user growth stalls", "analyst_rating"),
    # rule 3: a regulator's decision on a deal is deal news
    ("EU approves Dow Chemical merger with DuPont", "mergers_acquisitions"),
    # market-wide move explained by macro news
    ("Stocks tumble as China's yuan slides", "macro_market"),
    # event words that report no event
    ("Vanguard Group Inc raises stake in Exxon Mobil shares", "other"),
    ("Facebook insider sells 66,615 shares", "other"),
    ("FB Facebook, Inc. Dividend http://t.co/abc $FB $GE #FB #stock", "other"),
    ("Greek prime minister resigns", "other"),
])
def test_tie_breaks_and_event_words_without_events(text, label):
    assert classify([text])[0] == label


def test_missing_texts_are_other_and_confidence_says_how_a_label_was_reached():
    labels, confidence = classify(["Fed raises rates", None, float("nan"), "   ", b"Apple recalls chargers",
                                   "A quiet day in the park"], with_confidence=True)
    assert list(labels) == ["macro_market", "other", "other", "other", "product_contract", "other"]
    # 1.0: a pattern decided (blank texts are decided as `other`); NaN: nothing matched, `other` by default
    assert list(confidence[:5]) == [1.0] * 5 and math.isnan(confidence[5])


def test_a_label_depends_on_its_own_text_only():
    texts = [text for examples in CLEAR_CUT.values() for text in examples] + ["Pope visits Brazil"]
    together = classify(texts)
    alone = [classify([text])[0] for text in texts]
    reversed_order = classify(texts[::-1])[::-1]
    repeated = classify(texts + texts)
    assert list(together) == alone == list(reversed_order) == list(repeated[: len(texts)]) == list(repeated[len(texts):])
    assert list(classify(texts)) == list(together)  # the same call twice


def test_encoder_stage_is_deterministic_whatever_the_batching():
    """The optional MiniLM stage: the same labels and confidences for a text classified alone, with others, in
    other batch sizes or thread counts; items without a business word never reach it."""
    texts = ["Apple shouldn't buy Netflix, Hulu makes more sense", "Twitter finally lends a hand to advertisers",
             "Analysts say the stock could rise 40 percent", "Volcano erupts in Iceland", "Pope visits Brazil"]
    first = EventClassifier(encoder=True)
    labels, confidence = first.classify(texts, with_confidence=True)
    other = EventClassifier(encoder=True, batch_size=3, threads=1)
    for row, text in enumerate(texts):
        alone_labels, alone_confidence = other.classify([text], with_confidence=True)
        assert alone_labels[0] == labels[row]
        assert alone_confidence[0] == confidence[row] or (math.isnan(confidence[row]) and math.isnan(alone_confidence[0]))
    again, again_confidence = first.classify(texts[::-1], with_confidence=True)
    assert list(again[::-1]) == list(labels)
    np.testing.assert_array_equal(again_confidence[::-1], confidence)
    # no business word: not sent to the encoder, so `other` by default (NaN confidence)
    assert list(labels[3:]) == ["other", "other"] and np.isnan(confidence[3:]).all()
    assert not np.isnan(confidence[:3]).any()


# -- evaluation set --------------------------------------------------------------------------------------------
HELD_OUT_TARGET = 0.75  # issue 10's target for macro-F1 on held-out items
# What the classifier measured on the held-out split after round 5 (0.7525; EVENTS_PROVENANCE.md; README, "Event
# types"): it reaches the target, by a small margin. This floor fails on any regression.
HELD_OUT_FLOOR = 0.752


def test_evaluation_set_is_large_stratified_and_traceable():
    items = read_eval_set(EVAL_PATH)
    assert len(items) >= 400 and items["text"].str.strip().ne("").all()
    assert items["item"].is_unique and not items[["file", "row"]].duplicated().any()
    counts = items["label"].value_counts()
    for rare in ("mergers_acquisitions", "management_change", "capital_actions", "legal_regulatory"):
        assert counts[rare] >= 20, rare
    assert set(items["split"]) == {"dev", "test"}
    assert items["dataset"].isin(["djia-reddit-news", "stocknet-tweets-prices"]).all()


# sha256 of the test split's rows (all columns, as ``DataFrame.to_csv(index=False, lineterminator="\\n")`` writes them),
# taken from events_eval.csv before round 5 was added: later rounds add development items only, and the held-out
# items, their labels and their order never change.
TEST_SPLIT_SHA256 = "d0cae36b53e3958936e8097cf652a03cabba8f3044287888d3a71d9e999b3dc8"


def test_test_split_is_unchanged_and_later_rounds_are_development_items():
    items = read_eval_set(EVAL_PATH)
    test = items[items["split"] == "test"]
    assert len(test) == 444
    assert hashlib.sha256(test.to_csv(index=False, lineterminator="\n").encode("utf-8")).hexdigest() == TEST_SPLIT_SHA256
    later = items["selection"].str.match(r"(?:random|keyword)[345]\b")
    assert later.sum() == 1108 - 634 + 310 and (items.loc[later, "split"] == "dev").all()
    assert (items["selection"].str.match(r"(?:random|keyword)5\b").sum()) == 310


def test_every_item_is_the_text_at_its_file_and_row(shared_data):
    items = read_eval_set(EVAL_PATH)
    headlines = pd.read_csv(shared_data / "djia-reddit-news" / "RedditNews.csv", dtype=str, keep_default_na=False)

    def headline(raw: str) -> str:  # the loader's cleaning, written again: b'..' reprs undone, spaces squeezed
        raw = raw.strip()
        if raw[:2] in ("b'", 'b"') and raw[-1] == raw[1]:
            raw = re.sub(r"\\([\\'\"nrt])", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), raw[2:-1])
        return " ".join(raw.split())

    for item in items.itertuples():
        if item.dataset == "djia-reddit-news":
            assert headline(headlines["News"].iloc[int(item.row)]) == item.text, item.item
    for file, group in items[items["dataset"] == "stocknet-tweets-prices"].groupby("file"):
        tweets = pd.read_csv(shared_data / "stocknet-tweets-prices" / file, dtype=str, keep_default_na=False)
        rows = tweets.iloc[group["row"].astype(int)]
        assert [" ".join(text.split()) for text in rows["text"]] == group["text"].tolist(), file
        assert rows["id_str"].tolist() == group["tweet_id"].tolist(), file


def test_held_out_macro_f1():
    report = evaluate(repeats=1)
    assert report["held_out"] == "test" and report["n"] == (read_eval_set(EVAL_PATH)["split"] == "test").sum()
    assert report["macro_f1"] >= HELD_OUT_FLOOR
    assert report["macro_f1"] == pytest.approx(np.mean([v["f1"] for v in report["per_class"].values()]))


def test_held_out_macro_f1_reaches_the_target():
    assert HELD_OUT_FLOOR >= HELD_OUT_TARGET
    assert evaluate(repeats=1)["macro_f1"] >= HELD_OUT_TARGET


@pytest.mark.parametrize("text, expected", [
    # a cashtag right before a product or a deal size: "\b$" never matched after a space
    ("$AAPL watch will be big next year", "product_contract"),
    ("Watch us trade $GOOGL live: $GOOGL watch us now", "other"),
    ("WhatsApp founders celebrate the $19bn deal", "mergers_acquisitions"),
    # typographic apostrophes read as '
    ("Apple\u2019s Watch arrives in stores", "product_contract"),
    # an amount in yuan is no currency news; one company's shares moving is no market move; "in order for" no order
    ("Suspect says he owed her a debt of 100,000 yuan", "other"),
    ("China lets the yuan weaken against the dollar", "macro_market"),
    ("Microsoft Corporation Shares Surge on Strong Cloud Growth", "other"),
    ("Asian shares fall on China worries", "macro_market"),
    ("In order for the merger talks to succeed, trust is needed", "mergers_acquisitions"),
    ("Boeing wins orders for 50 jets", "product_contract"),
])
def test_patterns_read_cashtags_apostrophes_amounts_and_single_stocks(text, expected):
    assert classify([text])[0] == expected


# Round 5 (EVENTS_PROVENANCE.md): fixes found on development errors, each right in general; texts written for this test.
@pytest.mark.parametrize("text, expected", [
    # "launch", "unveil", "introduce" are product news only where a company is named: states launch missiles,
    # missions and cabinets (a company launching still counts)
    ("North Korea prepares another missile launch", "other"),
    ("Prime minister unveils new cabinet", "other"),
    ("India launches its first Mars mission", "other"),
    ("Samsung unveils a new Galaxy phone", "product_contract"),
    # people charged with a crime are crime news; a company charged is legal news
    ("Man charged with murder after Paris shooting", "other"),
    ("Carmaker charged with fraud over emissions tests", "legal_regulatory"),
    ("Police hold four drug-company managers on suspicion of bribery", "legal_regulatory"),
    # a contract won is no court award, however many words sit between the amount and "contract"
    ("Lockheed wins $900 million Navy radar support contract", "product_contract"),
    # rigging a benchmark is fraud
    ("Traders tried to rig the Libor benchmark, emails show", "legal_regulatory"),
    # more ways to say that the market moved or that the economy is the subject
    ("Stocks tank on growth fears", "macro_market"),
    ("Wall St pares gains in afternoon trade", "macro_market"),
    ("Asian stocks drift as traders wait", "macro_market"),
    ("Dow, S&P end at record highs", "macro_market"),
    ("The country faces economic ruin", "macro_market"),
    ("Income inequality widens in Britain", "macro_market"),
    # executive pay is `other` (guide) even next to an economic word
    ("Bank bosses' bonuses climb despite bailout", "other"),
    # commercial deals, hypothetical takeovers, activist stakes, product names with a version, new devices
    ("Spotify signs deal with Uber for in-car music", "product_contract"),
    ("$GOOG could just buy $TWTR and fix its social problem", "mergers_acquisitions"),
    ("Icahn ups $AAPL stake", "mergers_acquisitions"),
    ("Jailbreak for iOS9 is out", "product_contract"),
    ("Ford tests an autonomous car in the snow", "product_contract"),
    # a state's currency is no product; economy ministers are politicians; a fortune in yuan is no currency news
    ("Palestinian Authority introduces its own currency", "macro_market"),
    ("Economy minister resigns amid graft scandal", "other"),
    ("Spain moves science policy to the Ministry of Economy", "other"),
    ("Tycoon's fortune tops 500 million yuan", "other"),
    # a broker's round-up of rating actions
    ("Monday's analyst moves: $AAPL, $GE", "analyst_rating"),
])
def test_round_5_pattern_fixes(text, expected):
    assert classify([text])[0] == expected


def test_evaluate_scores_worked_out_by_hand(tmp_path):
    # 6 test items whose labels the patterns give for sure (clear-cut examples above), two labelled "wrong" on
    # purpose: a guidance item labelled earnings, an `other` item labelled macro_market.
    rows = [
        ("Intel quarterly profit beats analyst estimates", "earnings"),
        ("Caterpillar cuts its full-year sales forecast", "earnings"),  # predicted guidance
        ("Sony appoints new chairman", "management_change"),
        ("Fed raises interest rates by a quarter point", "macro_market"),
        ("Earthquake strikes northern Japan, no tsunami warning", "macro_market"),  # predicted other
        ("Our penny stock picks gained 400% this month, subscribe now", "other"),
    ]
    path = tmp_path / "eval.csv"
    pd.DataFrame({"item": [f"T{i}" for i in range(6)], "text": [r[0] for r in rows], "label": [r[1] for r in rows],
                  "split": "test", "selection": "random"}).to_csv(path, index=False)
    report = evaluate(path, repeats=1)
    per_class = report["per_class"]
    # earnings: 1 true of 1 predicted, 1 of 2 labelled; macro_market: 1 of 1, 1 of 2; other: 1 of 2, 1 of 1;
    # guidance: 0 of 1 predicted, no support; management_change: 1 of 1.
    assert per_class["earnings"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert per_class["macro_market"]["recall"] == 0.5 and per_class["macro_market"]["precision"] == 1.0
    assert per_class["other"]["precision"] == 0.5 and per_class["other"]["recall"] == 1.0
    assert per_class["guidance"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["accuracy"] == pytest.approx(4 / 6)
    # averaged over the 4 types with support: earnings 2/3, management 1, macro 2/3, other 2/3
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 2 / 3) / 4)
    assert report["splits"]["dev"]["n"] == 0 and report["splits"]["random"]["n"] == 6


def test_evaluation_set_errors_name_the_row(tmp_path):
    path = tmp_path / "eval.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["other", "earnigns"], "split": ["dev", "test"],
                  "selection": ["random", "random"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 3: label 'earnigns' is not one of"):
        read_eval_set(path)
    with pytest.raises(DataError, match="file not found"):
        read_eval_set(tmp_path / "missing.csv")


# -- features ----------------------------------------------------------------------------------------------------
OPENS = pd.to_datetime(["2015-03-02 14:30", "2015-03-03 14:30", "2015-03-04 14:30", "2015-03-05 14:30",
                        "2015-03-06 14:30"], utc=True)


def _aligned(rows):
    """Aligned news from (ticker, session index, event, sentiment) tuples."""
    return pd.DataFrame({"ticker": [r[0] for r in rows], "session": OPENS[[r[1] for r in rows]],
                         "event": [r[2] for r in rows], "sentiment": [r[3] for r in rows],
                         "text": "t", "timestamp": OPENS[[r[1] for r in rows]] - pd.Timedelta(hours=1)})


ITEMS = [("X", 0, "earnings", 0.5), ("X", 0, "earnings", -0.1), ("X", 0, "other", 0.2), ("X", 1, "legal_regulatory", -0.8),
         ("X", 3, "earnings", 0.3), ("X", 4, "earnings", np.nan), ("X", 4, "earnings", 0.1), ("Y", 2, "macro_market", 0.4)]
PRICES = pd.DataFrame({"ticker": ["X"] * 5 + ["Y"] * 5, "timestamp": list(OPENS) * 2})


def test_event_features_worked_out_by_hand():
    frame = event_features(_aligned(ITEMS), PRICES, novelty_sessions=2)
    assert list(frame.columns) == event_columns(with_sentiment=True)
    assert len(frame) == 10 and frame.index.names == ["ticker", "session"]
    x = frame.loc["X"]
    assert list(x["event_earnings_count"]) == [2, 0, 0, 1, 2]
    np.testing.assert_allclose(x["event_earnings_sentiment"], [0.2, np.nan, np.nan, 0.3, 0.1])  # NaN score skipped
    # novel: first of its type in the last 2 sessions; at the 4th session the previous two had none
    assert list(x["event_earnings_novel"]) == [1, 0, 0, 1, 0]
    assert list(x["event_legal_regulatory_count"]) == [0, 1, 0, 0, 0]
    assert list(x["event_legal_regulatory_novel"]) == [0, 1, 0, 0, 0]
    assert list(x["event_other_novel"]) == [1, 0, 0, 0, 0]
    assert x["event_macro_market_count"].sum() == 0
    y = frame.loc["Y"]
    assert list(y["event_macro_market_count"]) == [0, 0, 1, 0, 0] and list(y["event_macro_market_novel"]) == [0, 0, 1, 0, 0]
    # a longer window remembers the first session's earnings
    longer = event_features(_aligned(ITEMS), PRICES, novelty_sessions=3).loc["X"]
    assert list(longer["event_earnings_novel"]) == [1, 0, 0, 0, 0]


def test_shared_calendar_and_no_sentiment_column():
    aligned = _aligned(ITEMS)
    assert event_features(aligned, list(OPENS)).equals(event_features(aligned, PRICES))
    plain = event_features(aligned.drop(columns="sentiment"), PRICES)
    assert list(plain.columns) == event_columns(with_sentiment=False)
    assert plain["event_earnings_count"].equals(event_features(aligned, PRICES)["event_earnings_count"])
    # no news: every session of every priced ticker, all zeros; with a shared calendar there is no ticker at all
    quiet = event_features(aligned.iloc[0:0], PRICES)
    assert len(quiet) == 10 and (quiet.filter(like="_count") == 0).all().all() and (quiet.filter(like="_novel") == 0).all().all()
    assert event_features(aligned.iloc[0:0], list(OPENS)).empty


def test_a_future_item_never_changes_an_earlier_row():
    base = event_features(_aligned(ITEMS), PRICES, novelty_sessions=2)
    with_future = event_features(_aligned(ITEMS + [("X", 2, "earnings", -0.9)]), PRICES, novelty_sessions=2)
    cut = OPENS[2]
    earlier = base.index.get_level_values("session") < cut
    pd.testing.assert_frame_equal(base[earlier], with_future[earlier])
    assert with_future.loc[("X", cut), "event_earnings_count"] == 1 and base.loc[("X", cut), "event_earnings_count"] == 0
    assert with_future.loc[("X", OPENS[3]), "event_earnings_novel"] == 0  # later rows may change; here they do
    # cutting news and calendar at every session leaves every earlier row as computed from everything
    for position in range(len(OPENS)):
        kept = [row for row in ITEMS if row[1] <= position]
        prices = PRICES[PRICES["timestamp"] <= OPENS[position]]
        part = event_features(_aligned(kept), prices, novelty_sessions=2)
        pd.testing.assert_frame_equal(part, base[base.index.get_level_values("session") <= OPENS[position]])


def test_features_of_news_aligned_by_the_engine_join_the_session_grid():
    from engine.align import align_news, session_grid
    from engine.schema import canonical_signals
    from tests.conftest import make_news, make_prices

    prices = make_prices(["2020-01-06", "2020-01-07", "2020-01-08"], [100, 101, 102], [101, 102, 103])
    news = make_news([("2020-01-06 18:00-05:00", "X", "Apple raises quarterly dividend by 10%"),
                      ("2020-01-07 08:00-05:00", "", "Fed raises interest rates"),  # market-wide: reaches X
                      ("2020-01-08 07:00-05:00", "X", "Pope visits Brazil")])
    aligned = align_news(news, prices)
    features = event_features(aligned.assign(event=classify(aligned["text"])), prices)
    assert features.index.equals(canonical_signals(session_grid(prices).features).index)
    assert list(features["event_capital_actions_count"]) == [0, 1, 0]  # after the close: the next session
    assert list(features["event_macro_market_count"]) == [0, 1, 0]  # before the open: that session
    assert list(features["event_other_count"]) == [0, 0, 1]


def test_event_feature_errors():
    aligned = _aligned(ITEMS)
    with pytest.raises(DataError, match=r"row 1: event 'earning' is not one of"):
        event_features(aligned.assign(event=["earnings", "earning"] + list(aligned["event"][2:])), PRICES)
    with pytest.raises(DataError, match="lacks column"):
        event_features(aligned.drop(columns="event"), PRICES)
    late = aligned.copy()
    late.loc[0, "session"] = pd.Timestamp("2015-03-09 13:30", tz="UTC")
    with pytest.raises(DataError, match=r"row 0: session .* is not a session of ticker 'X'"):
        event_features(late, PRICES)
    with pytest.raises(DataError, match="novelty_sessions"):
        event_features(aligned, PRICES, novelty_sessions=0)


def test_the_rules_digest_is_read_once_per_process(monkeypatch):
    """params() (read by every run of a sweep, for its cache keys) names the rules by this process's events.py,
    hashed as it was imported: no read of the file per call."""
    from signals import events
    from signals.events import EventSignals

    expected = hashlib.sha256(Path(events.__file__).read_bytes()).hexdigest()[:16]

    def no_read(self):
        raise AssertionError(f"read {self}")

    monkeypatch.setattr(Path, "read_bytes", no_read)
    assert EventSignals("sentiment", 20).params() == {"provider": "events", "sentiment": "sentiment",
                                                       "novelty_sessions": 20, "rules": expected}
