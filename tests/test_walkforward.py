"""Walk-forward: window arithmetic, no learner ever sees a row at or after its decision session, and the
regression rule finds a planted signal out of sample but no edge in noise."""
import numpy as np
import pandas as pd
import pytest

from engine.backtest import run_backtest
import engine.cache
from engine.cache import SignalCache
from engine.errors import ConfigError
from engine.providers import Slot
from engine.signal import SignalProvider
from engine.strategy import Rule, to_weights
from engine.walkforward import make_windows, training_rows, walk_forward
from strategies.regression import RegressionRule

SESSIONS = pd.date_range("2020-01-01 14:30", periods=10, freq="D", tz="UTC")


def test_expanding_and_rolling_windows():
    expanding = make_windows(SESSIONS, train_sessions=4, step_sessions=3, mode="expanding")
    assert [(w.train_start, w.test_start, w.test_end) for w in expanding] == [
        (SESSIONS[0], SESSIONS[4], SESSIONS[6]), (SESSIONS[0], SESSIONS[7], SESSIONS[9])]
    rolling = make_windows(SESSIONS, train_sessions=4, step_sessions=3, mode="rolling")
    assert [w.train_start for w in rolling] == [SESSIONS[0], SESSIONS[3]]


@pytest.mark.parametrize("train,step,mode,key", [(0, 3, "expanding", "train_sessions"), (4, -1, "expanding", "step_sessions"),
                                                   (4, 3, "sideways", "mode"), (10, 3, "expanding", "train_sessions")])
def test_bad_windows_name_the_key(train, step, mode, key):
    with pytest.raises(ConfigError, match=f"walk_forward.{key}"):
        make_windows(SESSIONS, train, step, mode)


def planted_features(n_sessions=1500, strength=0.004, seed=7, tickers=("A",), drift=0.0003):
    """(features, outcomes): a pre-open ``signal`` that predicts the next open-to-open return with the given
    strength (0: noise), and the bars with that ``forward_return``."""
    rng = np.random.default_rng(seed)
    frames = []
    sessions = pd.bdate_range("2010-01-04", periods=n_sessions).tz_localize("UTC") + pd.Timedelta(hours=14, minutes=30)
    for ticker in tickers:
        signal = rng.standard_normal(n_sessions)
        forward = strength * signal + 0.01 * rng.standard_normal(n_sessions) + drift
        opens = 100 * np.concatenate([[1.0], np.cumprod(1 + forward[:-1])])
        closes = opens * (1 + 0.002 * rng.standard_normal(n_sessions))
        frames.append(pd.DataFrame({
            "ticker": ticker, "session": sessions, "open": opens, "close": closes,
            "high": np.maximum(opens, closes) * 1.001, "low": np.minimum(opens, closes) * 0.999, "volume": 1e6,
            "signal": signal, "forward_return": np.append(opens[1:] / opens[:-1] - 1, np.nan)}))
    grid = pd.concat(frames).set_index(["ticker", "session"]).sort_index()
    return grid[["signal"]], grid[["open", "high", "low", "close", "volume", "forward_return"]]


class SpyRule(Rule):
    learned = True
    seen = []

    def fit(self, features, label):
        SpyRule.seen.append((features.copy(), label.copy()))
        return self

    def target(self, features):
        return pd.Series(0.0, index=features.index)


def test_learners_never_see_their_decision_sessions_or_unrealised_labels():
    features, outcomes = planted_features(n_sessions=60, tickers=("A", "B"))
    windows = make_windows(features.index.get_level_values("session"), 20, 15, "expanding")
    SpyRule.seen = []
    walk_forward(features, outcomes["forward_return"], windows, SpyRule, progress=False)
    assert len(SpyRule.seen) == len(windows) == 3
    for window, (history, label) in zip(windows, SpyRule.seen):
        sessions = history.index.get_level_values("session")
        assert sessions.max() < window.test_start
        assert list(history.columns) == ["signal"] and label.index.equals(history.index)
        # The label of the last training session is realised at test_start's open: masked.
        last = sessions == sessions.max()
        assert label[last].isna().all()
        # Every earlier label is the true forward return of its row.
        expected = outcomes["forward_return"].reindex(history.index)[~last]
        assert label[~last].notna().all() and np.array_equal(label[~last].to_numpy(), expected.to_numpy())
    # Direct check of training_rows on one window too.
    rows, label = training_rows(features, outcomes["forward_return"], windows[1])
    assert rows.index.get_level_values("session").max() == windows[1].test_start - pd.offsets.BDay(1)
    assert label.isna().sum() == 2  # the last training session of each of the two tickers


def daily_returns(outcomes, exposure):
    bars = outcomes[["open", "high", "low", "close", "volume"]].assign(weight=to_weights(exposure.fillna(0.0)).to_numpy())
    book = run_backtest(bars, {"cash": 100_000, "commission_bps": 1, "slippage_bps": 0}).book
    return book["value"].pct_change().dropna()


def sharpe(returns):
    return returns.mean() / returns.std() * np.sqrt(252)


def regression_exposure(planted, windows):
    features, outcomes = planted
    rule = lambda: RegressionRule("linear", 0.0, ["signal"], 0.0, False, 50)  # noqa: E731
    return walk_forward(features, outcomes["forward_return"], windows, rule, progress=False)


def test_regression_beats_buy_and_hold_on_a_planted_signal_and_not_on_noise():
    planted = planted_features(strength=0.004)
    outcomes = planted[1]
    windows = make_windows(outcomes.index.get_level_values("session"), 500, 100, "expanding")
    result = regression_exposure(planted, windows)
    test = outcomes.index.get_level_values("session") >= windows[0].test_start
    oos = outcomes[test]
    # Out of sample the forecasts line up with the realised returns.
    predictions = result.out_of_sample["prediction"]
    assert np.corrcoef(predictions, oos["forward_return"].fillna(0))[0, 1] > 0.25
    strategy = daily_returns(oos, result.exposure[test])
    hold = daily_returns(oos, pd.Series(1.0, index=oos.index))
    assert sharpe(strategy) > sharpe(hold) + 1.0

    noise = planted_features(strength=0.0, seed=11, drift=0.0)
    assert_no_significant_edge(noise[1][test], regression_exposure(noise, windows).exposure[test])


def t_statistic(returns):
    """t of the mean daily return; a strategy that stays flat throughout has none (0)."""
    spread = returns.std()
    return 0.0 if spread == 0 else returns.mean() / spread * np.sqrt(len(returns))


def assert_no_significant_edge(outcomes, exposure):
    """Neither the strategy's own mean return nor its excess over buy-and-hold is significant at 5%."""
    strategy = daily_returns(outcomes, exposure)
    hold = daily_returns(outcomes, pd.Series(1.0, index=outcomes.index))
    assert abs(t_statistic(strategy)) < 2.0
    assert abs(t_statistic(strategy - hold)) < 2.0


def test_cluster_rule_maps_regimes_by_their_training_t_statistic():
    from strategies.cluster import ClusterRule

    index = pd.MultiIndex.from_product([["A"], pd.date_range("2020-01-01", periods=8, tz="UTC")],
                                       names=["ticker", "session"])
    history = pd.DataFrame({"regime": [0, 0, 0, 0, 1, 1, 1, 1.0]}, index=index)
    label = pd.Series([0.01, 0.02, 0.01, 0.02, -0.01, 0.01, -0.01, 0.01], index=index)
    rule = ClusterRule(min_t_stat=2.0, min_count=3, allow_short=False).fit(history, label)
    table = rule.learned_summary().set_index("regime")
    # Regime 0: mean 0.015, sample std 0.005774, t = 0.015 / (0.005774 / 2) = 5.196; regime 1: mean 0, t = 0.
    assert table.loc[0, "t_stat"] == pytest.approx(0.015 / (np.std([0.01, 0.02, 0.01, 0.02], ddof=1) / 2))
    assert table["position"].tolist() == [1.0, 0.0]
    window = pd.DataFrame({"regime": [1.0, 0.0, 2.0]}, index=index[:3])
    assert rule.target(window).tolist() == [0.0, 1.0, 0.0]  # an unseen regime stays flat
    assert rule.prediction(window).tolist() == pytest.approx([0.0, 0.015, 0.0])


def cluster_exposure(planted, windows):
    from engine.providers import Slot
    from signals.regimes import RegimeModel
    from strategies.cluster import ClusterRule

    features, outcomes = planted
    return walk_forward(features, outcomes["forward_return"], windows,
                        lambda: ClusterRule(min_t_stat=2.0, min_count=20, allow_short=False),
                        [Slot("signals.regimes", RegimeModel(2, ["signal"], 10, 0))], progress=False).exposure


def test_cluster_rule_beats_buy_and_hold_on_a_planted_regime_and_not_on_noise():
    planted = planted_features(strength=0.004)
    outcomes = planted[1]
    windows = make_windows(outcomes.index.get_level_values("session"), 500, 100, "expanding")
    test = outcomes.index.get_level_values("session") >= windows[0].test_start
    exposure = cluster_exposure(planted, windows)
    strategy = daily_returns(outcomes[test], exposure[test])
    hold = daily_returns(outcomes[test], pd.Series(1.0, index=outcomes[test].index))
    assert sharpe(strategy) > sharpe(hold) + 1.0

    noise = planted_features(strength=0.0, seed=11, drift=0.0)
    assert_no_significant_edge(noise[1][test], cluster_exposure(noise, windows)[test])


class TrainingMean(SignalProvider):
    """A learned feature reader: each window's output is the mean ``signal`` of its training rows."""

    name = "training-mean"
    needs = ("signal",)
    columns = ("signal_mean",)
    learned = True
    fits = []

    def fit(self, inputs):
        self.mean_ = float(inputs["signal"].mean())
        TrainingMean.fits.append(self.mean_)
        return self

    def transform(self, inputs):
        return pd.Series(self.mean_, index=inputs.index, name="signal_mean")


def test_a_cached_window_is_computed_again_when_one_value_of_its_inputs_changes(tmp_path, monkeypatch):
    hashed = []  # pandas hashing a window's rows (the cache key); each content once per process
    real = pd.util.hash_pandas_object
    monkeypatch.setattr(pd.util, "hash_pandas_object", lambda *a, **k: hashed.append(len(a[0])) or real(*a, **k))
    monkeypatch.setattr(engine.cache, "_ROW_HASHES", type(engine.cache._ROW_HASHES)())
    monkeypatch.setattr(engine.cache, "_MEMOISE_NUMBERS", [True])  # as in a sweep's worker (keep_in_memory)
    features, outcomes = planted_features(n_sessions=60, tickers=("A", "B"))
    windows = make_windows(features.index.get_level_values("session"), 20, 15, "expanding")
    slots, cache = [Slot("signals.mean", TrainingMean())], SignalCache(tmp_path)

    def means(frame):
        TrainingMean.fits = []
        result = walk_forward(frame, outcomes["forward_return"], windows, SpyRule, slots, cache=cache, progress=False)
        return result.out_of_sample["signal_mean"].groupby(level="session").first().unique().tolist()

    def training_means(frame):  # worked out without the provider: the mean signal before each test start
        sessions = frame.index.get_level_values("session")
        return [float(frame["signal"][(sessions >= w.train_start) & (sessions < w.test_start)].mean()) for w in windows]

    before = means(features)
    assert before == training_means(features) and len(TrainingMean.fits) == 3 and len(hashed) == 3
    assert means(features) == training_means(features) and TrainingMean.fits == []  # every window from the cache
    assert len(hashed) == 3  # and the same rows were not hashed again
    # One value edited in place: a session the second window decides and the third trains on. The first
    # window's rows (train_start through test_end) do not hold it: read from the cache; the others computed again.
    session = features.index.get_level_values("session")[features.index.get_level_values("ticker") == "A"][40]
    assert windows[0].test_end < session <= windows[1].test_end
    features.loc[("A", session), "signal"] += 1.0
    edited = means(features)
    assert edited == training_means(features) and len(TrainingMean.fits) == 2 and len(hashed) == 5
    assert edited[:2] == before[:2] and edited[2] != before[2]


@pytest.mark.parametrize("order", ["canonical", "interleaved"])
def test_per_ticker_gives_pandas_groupby_transform_bit_for_bit(order):
    from engine.strategy import per_ticker

    rng = np.random.default_rng(7)
    sessions = pd.bdate_range("2020-01-01", periods=40)
    index = pd.MultiIndex.from_product([["AAA", "BBB", "CCC"], sessions], names=["ticker", "session"])
    values = pd.Series(rng.normal(size=len(index)), index=index, name="sentiment")
    values[rng.random(len(index)) < 0.3] = np.nan  # sessions without news
    if order == "interleaved":  # each ticker's rows apart: pandas' own transform
        values = values.swaplevel().sort_index().swaplevel()
    for function in (lambda s: s.rolling(5, min_periods=1).mean(),
                     lambda s: s.shift(3).rolling(10, min_periods=5).mean()):
        expected = values.groupby(level="ticker", sort=False).transform(function)
        got = per_ticker(values, function)
        pd.testing.assert_series_equal(got, expected, check_exact=True)
        assert got.index.equals(values.index)
