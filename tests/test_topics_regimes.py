"""Topics (LDA) and regimes (k-means): tokenisation, planted structure recovered, determinism, training-only
statistics and the configuration errors."""
from __future__ import annotations

import copy
import hashlib

import numpy as np
import pandas as pd
import pytest

from engine.cache import CACHE_STATS, SignalCache
from engine.errors import ConfigError
from engine.features import resolve_feature_columns
from engine.prefit import prefit_windows
from engine.providers import Slot, window_signals
from engine.walkforward import Window, window_rows
from signals.regimes import RegimeModel
from signals.topics import TopicModel, tokenize, training_sample

OIL = ["oil", "crude", "barrel", "opec", "refinery", "pipeline", "drilling", "petrol"]
FOOTBALL = ["goal", "striker", "league", "match", "coach", "stadium", "referee", "penalty"]
TOPIC_PARAMS = dict(num_topics=2, no_below=2, no_above=0.5, keep_n=None, passes=20, iterations=100,
                    random_state=0, chunksize=100, max_training_texts=None)


def planted_news(texts_per_group: int = 40, seed: int = 1) -> pd.DataFrame:
    """Aligned news: ticker OIL gets oil-vocabulary texts, ticker BALL football ones, one text per session,
    with stop words and noise that the tokeniser must drop."""
    rng = np.random.default_rng(seed)
    rows = []
    for ticker, pool in (("OIL", OIL), ("BALL", FOOTBALL)):
        for day in range(texts_per_group):
            words = rng.choice(pool, size=5, replace=False)
            text = f"RT @desk: The {' '.join(words)} of 2015 &amp; http://t.co/x1"
            stamp = pd.Timestamp("2015-01-01", tz="UTC") + pd.Timedelta(days=day, hours=12)
            rows.append((stamp, ticker, text, "test", stamp + pd.Timedelta(hours=9)))
    return pd.DataFrame(rows, columns=["timestamp", "ticker", "text", "source", "session"])


@pytest.fixture(scope="module")
def planted_model():
    news = planted_news()
    return news, TopicModel(**TOPIC_PARAMS).fit(news)


# --- tokenisation ---------------------------------------------------------------------------------------

def test_tokenize_drops_links_mentions_numbers_retweets_cashtags_and_keeps_accents():
    # zürich's -> zürich + "s" (too short); & and 5% have no letters; the link, @bob, RT and $AAPL go.
    assert tokenize("Zürich's café & crème brûlée rises 5% http://x.co @bob RT $AAPL") == [
        "zürich", "café", "crème", "brûlée", "rises"]


def test_tokenize_unicode_letters_entities_digits_and_hashtags():
    text = "Straße in München: 中国经济 grows &amp; ÜNÏCÖDÉ g20 3rd #Oil $BRK.B &#39;quote&#39; www.x.org/a"
    # "in" is a stop word; g20 and 3rd contain digits; #Oil keeps its word; entities and the link vanish.
    assert tokenize(text) == ["straße", "münchen", "中国经济", "grows", "ünïcödé", "oil", "quote"]


def test_tokenize_normalises_decomposed_accents_and_drops_fillers():
    decomposed = "Cafe\u0301 says BREAKING update: x y the Fed said"  # "e" + combining acute accent
    assert tokenize(decomposed) == ["café", "fed"]
    assert tokenize("12 345 @a http://b.c") == []


# --- topics --------------------------------------------------------------------------------------------

def test_planted_vocabularies_separate_into_the_two_topics(planted_model):
    news, model = planted_model
    frame = model.transform(news)
    assert list(frame.columns) == ["topic_0", "topic_1", "topics_count"]
    dominant = frame[["topic_0", "topic_1"]].to_numpy().argmax(axis=1)
    tickers = frame.index.get_level_values("ticker")
    oil_topics, ball_topics = set(dominant[tickers == "OIL"]), set(dominant[tickers == "BALL"])
    assert len(oil_topics) == 1 and len(ball_topics) == 1 and oil_topics != ball_topics
    words = model.top_words(5)
    assert set(words[oil_topics.pop()]) <= set(OIL)
    assert set(words[ball_topics.pop()]) <= set(FOOTBALL)


def test_mixtures_sum_to_one_and_sessions_average_their_known_texts(planted_model):
    news, model = planted_model
    first_oil, first_ball = news["text"].iloc[0], news["text"].iloc[-1]
    session = pd.Timestamp("2016-01-04 14:30", tz="UTC")
    mixed = pd.DataFrame({
        "timestamp": session - pd.Timedelta(hours=1), "ticker": "MIX", "source": "test", "session": session,
        "text": [first_oil, first_ball, "12345 @nobody http://x.co RT"],  # the third has no known word
    })
    only_unknown = mixed.iloc[[2]].assign(ticker="NONE")
    frame = model.transform(pd.concat([news, mixed, only_unknown], ignore_index=True))
    topics = frame[["topic_0", "topic_1"]]
    assert np.allclose(topics.sum(axis=1), 1.0, atol=1e-6)
    assert "NONE" not in frame.index.get_level_values("ticker")
    row = frame.loc[("MIX", session)]
    assert row["topics_count"] == 2.0
    single = model.mixtures([first_oil, first_ball])
    assert np.allclose(row[["topic_0", "topic_1"]].to_numpy(), single.mean(axis=0), atol=1e-12)
    assert frame["topics_count"].drop(("MIX", session)).eq(1.0).all()


def test_inference_matches_gensim_get_document_topics(planted_model):
    news, model = planted_model
    texts = list(news["text"].iloc[::7])
    ours = model.mixtures(texts)

    class MeanStart:  # gensim starts each document at a Gamma(100, 1/100) draw; we start at its mean, 1
        def gamma(self, shape, scale, size):
            return np.full(size, shape * scale)

    lda = copy.deepcopy(model.model_)
    lda.random_state = MeanStart()
    for text, mixture in zip(texts, ours):
        expected = np.zeros(model.num_topics)
        for topic, probability in lda.get_document_topics(model.dictionary_.doc2bow(tokenize(text)),
                                                          minimum_probability=0):
            expected[topic] = probability
        assert np.allclose(mixture, expected, atol=1e-5)


def test_same_config_twice_gives_identical_frames_and_subsets_do_not_change_rows(planted_model):
    news, model = planted_model
    again = TopicModel(**TOPIC_PARAMS).fit(news)
    full = model.transform(news)
    pd.testing.assert_frame_equal(full, again.transform(news), check_exact=True)
    pd.testing.assert_frame_equal(full, model.transform(news), check_exact=True)
    assert again.top_words() == model.top_words()
    part = model.transform(news.iloc[5:12])  # each text is inferred alone: no dependence on the batch
    pd.testing.assert_frame_equal(part, full.loc[part.index], check_exact=True)


def test_fit_ignores_row_order_and_texts_repeated_across_tickers(planted_model):
    news, model = planted_model
    repeated = pd.concat([news, news.assign(ticker="COPY")]).sample(frac=1.0, random_state=3)
    other = TopicModel(**TOPIC_PARAMS).fit(repeated)
    assert other.n_texts_ == model.n_texts_ == news["text"].nunique()
    pd.testing.assert_frame_equal(other.transform(news), model.transform(news), check_exact=True)


def test_topic_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"signals\.topics\.num_topics"):
        TopicModel(**{**TOPIC_PARAMS, "num_topics": 0})
    with pytest.raises(ConfigError, match=r"signals\.topics\.no_below"):
        TopicModel(**{**TOPIC_PARAMS, "no_below": 500}).fit(planted_news(5))
    with pytest.raises(ConfigError, match=r"signals\.topics\.random_state"):
        TopicModel(**{**TOPIC_PARAMS, "random_state": None}).fit(planted_news(5))
    with pytest.raises(ConfigError, match=r"signals\.topics\.max_training_texts"):
        TopicModel(**{**TOPIC_PARAMS, "max_training_texts": 0}).fit(planted_news(5))


# --- the cap on training texts -------------------------------------------------------------------------

def smallest_digests(texts, count: int) -> set[str]:
    """A second implementation of the sample: the ``count`` texts whose 8-byte BLAKE2b digests sort first (bytes
    compare like the big-endian integers they spell)."""
    return set(sorted(texts, key=lambda text: hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest())[:count])


def test_training_sample_is_the_texts_with_the_smallest_digests_whatever_their_order():
    texts = pd.Series([f"headline number {word} of the day" for word in
                       ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]])
    expected = smallest_digests(texts, 4)
    sample = training_sample(texts, 4)
    assert sample.tolist() == [t for t in texts if t in expected]  # kept in the given order
    shuffled = texts.sample(frac=1.0, random_state=5)
    assert set(training_sample(shuffled, 4)) == expected
    assert training_sample(texts, None).tolist() == texts.tolist()
    assert training_sample(texts, 11).tolist() == texts.tolist()


def planted_windows_news() -> pd.DataFrame:
    """80 oil and football texts in the past (sessions of January-February 2015) and 20 texts with a vocabulary of
    their own from sessions after 2015-03-01, which a fit for a window starting then must never see."""
    news = planted_news()
    rng = np.random.default_rng(9)
    future = ["tariff", "customs", "quota", "embargo", "dumping", "subsidy", "import", "export"]
    rows = []
    for day in range(20):
        stamp = pd.Timestamp("2015-03-02", tz="UTC") + pd.Timedelta(days=day, hours=12)
        rows.append((stamp, "OIL", " ".join(rng.choice(future, size=5, replace=False)), "test",
                     stamp + pd.Timedelta(hours=9)))
    return pd.concat([news, pd.DataFrame(rows, columns=news.columns)], ignore_index=True)


WINDOW = Window(0, pd.Timestamp("2015-01-01", tz="UTC"), pd.Timestamp("2015-03-01", tz="UTC"),
                pd.Timestamp("2015-03-31", tz="UTC"))


def test_a_capped_fit_learns_from_the_sampled_past_texts_only_in_any_row_order():
    news = planted_windows_news()
    past = news[news["session"] < WINDOW.test_start]
    sampled = smallest_digests(past["text"].unique(), 30)
    params = {**TOPIC_PARAMS, "passes": 5}
    # the windowed fit with a cap of 30 equals an uncapped fit on exactly those 30 past texts
    expected = TopicModel(**params).fit(past[past["text"].isin(sampled)]).transform(news)
    capped = Slot("signals.topics", TopicModel(**{**params, "max_training_texts": 30}))
    frame = pd.DataFrame(index=pd.MultiIndex.from_arrays([[], pd.DatetimeIndex([], tz="UTC")],
                                                         names=["ticker", "session"]))
    output, described = window_signals(capped, WINDOW, frame, news, None)
    pd.testing.assert_frame_equal(output, expected, check_exact=True)
    shuffled, _ = window_signals(capped, WINDOW, frame, news.sample(frac=1.0, random_state=2), None)
    pd.testing.assert_frame_equal(shuffled, expected, check_exact=True)
    words = {word for line in described["words"] for word in line.split()}
    assert words <= set(OIL) | set(FOOTBALL)  # nothing of the future vocabulary
    uncapped, _ = window_signals(Slot("signals.topics", TopicModel(**params)), WINDOW, frame, news, None)
    assert not np.allclose(uncapped.to_numpy(), expected.to_numpy())  # the cap binds


def test_changing_the_cap_changes_the_window_cache_key(tmp_path):
    news = planted_windows_news()
    frame = pd.DataFrame(index=pd.MultiIndex.from_arrays([[], pd.DatetimeIndex([], tz="UTC")],
                                                         names=["ticker", "session"]))
    cache = SignalCache(tmp_path)
    for cap, outcome in ((30, "miss"), (30, "hit"), (31, "miss"), (None, "miss")):
        before = CACHE_STATS[f"topics-window.{outcome}"]
        window_signals(Slot("signals.topics", TopicModel(**{**TOPIC_PARAMS, "passes": 1, "max_training_texts": cap})),
                       WINDOW, frame, news, cache)
        assert CACHE_STATS[f"topics-window.{outcome}"] == before + 1, (cap, outcome)
    assert len(list((tmp_path / "signals").glob("topics-window-*.parquet"))) == 3


def test_parallel_window_fits_store_the_serial_fits_byte_for_byte(tmp_path):
    news = planted_windows_news()
    pairs = news[["ticker", "session"]].drop_duplicates()
    features = pd.DataFrame(index=pd.MultiIndex.from_frame(pairs, names=["ticker", "session"])).sort_index()
    start = pd.Timestamp("2015-01-01", tz="UTC")
    windows = [Window(i, start, pd.Timestamp(test, tz="UTC"), pd.Timestamp(end, tz="UTC")) for i, (test, end) in
               enumerate([("2015-01-15", "2015-01-31"), ("2015-02-01", "2015-02-14"), ("2015-02-15", "2015-02-28"),
                          ("2015-03-01", "2015-03-31")])]  # more windows than workers + 1: the queue refills
    slot = Slot("signals.topics", TopicModel(**{**TOPIC_PARAMS, "passes": 3}))
    serial = [window_signals(slot, w, window_rows(features, w), news, SignalCache(tmp_path / "serial"))[0]
              for w in windows]
    misses = CACHE_STATS["topics-window.miss"]
    assert prefit_windows([slot], windows, features, news, SignalCache(tmp_path / "parallel"), workers=2,
                          progress=False) == 4
    assert CACHE_STATS["topics-window.miss"] == misses + 4  # counted as computed, once each
    stored = {kind: {path.name: path.read_bytes() for path in (tmp_path / kind / "signals").iterdir()}
              for kind in ("serial", "parallel")}
    assert len(stored["serial"]) == 4 and stored["parallel"] == stored["serial"]  # same keys, same bytes
    hits = CACHE_STATS["topics-window.hit"]
    parallel = SignalCache(tmp_path / "parallel")
    for window, expected in zip(windows, serial):  # what the walk-forward then reads
        output, _ = window_signals(slot, window, window_rows(features, window), news, parallel)
        pd.testing.assert_frame_equal(output, expected, check_exact=True)
    assert CACHE_STATS["topics-window.hit"] == hits + 4
    # nothing cold is left, and one worker or no cache never starts a pool
    assert prefit_windows([slot], windows, features, news, parallel, workers=2) == 0
    assert prefit_windows([slot], windows, features, news, SignalCache(tmp_path / "one"), workers=1) == 0
    assert prefit_windows([slot], windows, features, news, None, workers=2) == 0
    assert not (tmp_path / "one").exists()


def test_real_headlines_rows_sum_to_one_and_do_not_depend_on_the_batch(shared_data):
    raw = pd.read_csv(shared_data / "djia-reddit-news" / "RedditNews.csv").iloc[::-1].head(2500)
    text = raw["News"].astype(str).str.strip().str.replace(r"^b(['\"])(.*)\1$", r"\2", regex=True)
    stamp = pd.to_datetime(raw["Date"], utc=True)
    news = pd.DataFrame({"timestamp": stamp, "ticker": "DJIA", "text": text, "source": "djia",
                         "session": stamp + pd.Timedelta(days=1, hours=13, minutes=30)}).reset_index(drop=True)
    model = TopicModel(num_topics=5, no_below=5, no_above=0.5, keep_n=5000, passes=1, iterations=50,
                       random_state=0, chunksize=2000, max_training_texts=None).fit(news.iloc[:2000])
    frame = model.transform(news)
    assert np.allclose(frame[model.topic_columns].sum(axis=1), 1.0, atol=1e-6)
    assert frame["topics_count"].sum() <= len(news) and frame["topics_count"].max() <= 50
    last_days = model.transform(news.iloc[2000:])
    pd.testing.assert_frame_equal(last_days, frame.loc[last_days.index], check_exact=True)
    assert all(len(words) == 8 for words in model.top_words().values())


# --- regimes -------------------------------------------------------------------------------------------

def session_index(count: int, ticker: str = "X") -> pd.MultiIndex:
    sessions = pd.date_range("2020-01-01 14:30", periods=count, freq="D", tz="UTC")
    return pd.MultiIndex.from_arrays([[ticker] * count, sessions], names=["ticker", "session"])


def blobs(centres: list[tuple[float, float]], sizes: list[int], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Shuffled Gaussian blobs (sd 0.3) in columns a, b; returns the frame and each row's blob number."""
    rng = np.random.default_rng(seed)
    points = np.vstack([rng.normal(centre, 0.3, size=(size, 2)) for centre, size in zip(centres, sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(truth))
    return pd.DataFrame(points[order], columns=["a", "b"], index=session_index(len(truth))), truth[order]


def test_planted_blobs_recovered_with_canonical_labels():
    # Blob first-feature means 3, -4, 0 -> regimes 2, 0, 1 (sorted by the mean of feature "a").
    frame, truth = blobs([(3.0, 0.0), (-4.0, 2.0), (0.0, -3.0)], [30, 20, 25])
    expected = np.array([2, 0, 1])[truth]
    for seed in (0, 1, 7):
        regimes = RegimeModel(n_regimes=3, features=["a", "b"], n_init=4, random_state=seed).fit(frame)
        labels = regimes.transform(frame)
        assert labels.name == "regime" and labels.dtype == "float64" and labels.index.equals(frame.index)
        assert np.array_equal(labels.to_numpy(), expected.astype(float))
    assert list(regimes.regime_map()["a"].round(0)) == [-4.0, 0.0, 3.0]


def test_transform_standardises_with_the_training_rows_only():
    # Training x: thirty 0s and ten 10s -> mean 2.5, population std sqrt(18.75); "flat" has std 0 -> scale 1.
    train = pd.DataFrame({"x": [0.0] * 30 + [10.0] * 10, "flat": 7.0}, index=session_index(40))
    regimes = RegimeModel(n_regimes=2, features=["x", "flat"], n_init=3, random_state=0).fit(train)
    assert regimes.columns_ == ["x", "flat"]
    assert np.allclose(regimes.mean_, [2.5, 7.0]) and np.allclose(regimes.scale_, [np.sqrt(18.75), 1.0])
    # Centres in standardised x: (0-2.5)/4.33 = -0.577 (regime 0), (10-2.5)/4.33 = 1.732 (regime 1).
    # x=2.5 (A's mean) -> 0 -> regime 0; x=9 -> 1.50 -> regime 1; NaN counts as the training mean -> regime 0.
    # Standardising with this frame's own mean (~20) would put x=9 below the mean and in regime 0.
    later = pd.DataFrame({"x": [2.5, 9.0, 40.0, 50.0, np.nan], "flat": [7.0, 7.0, 7.0, 7.0, np.nan]},
                         index=session_index(5, "Y"))
    assert regimes.transform(later).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_prefix_features_resolve_in_natural_order():
    columns = pd.Index(["topics_count", "topic_10", "return_1", "topic_2", "topic_0", "topic_1"])
    assert resolve_feature_columns(["topic_*", "return_1", "topic_2"], columns, "signals.regimes.features") == [
        "topic_0", "topic_1", "topic_2", "topic_10", "return_1"]
    frame = pd.DataFrame(np.arange(30.0).reshape(6, 5) % 7, columns=["topic_1", "topic_0", "topics_count", "v", "w"],
                         index=session_index(6))
    regimes = RegimeModel(n_regimes=2, features=["topic_*"], n_init=2, random_state=0).fit(frame)
    assert regimes.columns_ == ["topic_0", "topic_1"]


def test_regime_config_errors_name_the_feature_and_key():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 1.0]}, index=session_index(2))
    with pytest.raises(ConfigError, match=r"signals\.regimes\.features.*'volatility_20'"):
        RegimeModel(n_regimes=2, features=["a", "volatility_20"], n_init=2, random_state=0).fit(frame)
    with pytest.raises(ConfigError, match=r"signals\.regimes\.features.*'topic_\*'"):
        RegimeModel(n_regimes=2, features=["topic_*"], n_init=2, random_state=0).fit(frame)
    with pytest.raises(ConfigError, match=r"signals\.regimes\.n_regimes"):
        RegimeModel(n_regimes=3, features=["a"], n_init=2, random_state=0).fit(frame)
    fitted = RegimeModel(n_regimes=2, features=["a", "b"], n_init=2, random_state=0).fit(frame)
    with pytest.raises(ConfigError, match=r"signals\.regimes\.features.*'b'"):
        fitted.transform(frame[["a"]])


def test_a_run_with_cached_regimes_does_not_import_scikit_learn():
    """Importing the regime provider (as the config check does) leaves sklearn unloaded: only a fit needs KMeans
    (its import was about a second of every warm run)."""
    import subprocess
    import sys

    code = ("import sys, signals.regimes, signals.topics, engine.providers; "
            "print('sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_only_a_topic_fit_imports_gensim_and_its_stop_words_are_gensims():
    """Building the topic provider and reading its params() (every run does) leaves gensim unloaded (its import
    was about two seconds of each run and sweep worker); the stop words written out in signals/topics.py are the
    pinned gensim's own, so the tokeniser (and its digest in the cache keys) is unchanged."""
    import subprocess
    import sys

    from gensim.parsing.preprocessing import STOPWORDS

    from signals.topics import GENSIM_STOPWORDS, STOP_WORDS

    code = ("import sys, signals.topics as topics; topics.TopicModel(num_topics=2, no_below=1, no_above=1.0, "
            "keep_n=None, passes=1, iterations=5, random_state=0, chunksize=10, max_training_texts=None).params(); "
            "print('gensim' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert GENSIM_STOPWORDS == STOPWORDS and len(STOPWORDS) == 337
    assert {"rt", "says"} <= STOP_WORDS and "the" in STOP_WORDS
