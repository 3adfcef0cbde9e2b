"""The vectorised engine (engine/vectorized.py) against backtrader's (engine/backtest.py): the same fills, book,
round trips, VaR scales and order counts, bit for bit, on small planted universes where each rule binds; and
``engine=vectorized`` through the whole pipeline (the CLI) on a tiny csv dataset, for every rule."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from engine.backtest import run_backtest
from engine.config import validate_config
from engine.errors import ConfigError
from engine.risk import apply_risk
from engine.run import run
from engine.vectorized import run_vectorized
from tests.conftest import ROOT, make_prices

BROKER = {"cash": 100_000, "commission_bps": 5, "slippage_bps": 2, "fractional": True, "rebalance_band": 0.02}


def universe(tickers=8, sessions=160, seed=0, hold=0.3, scale=1.0):
    """Random-walk bars with gaps at the open (some through any stop), weights in [-0.3, 0.4] (NaN: hold, some
    exact zeros). Every third ticker lists late, every fifth delists early, and about one bar in twenty is
    missing."""
    rng = np.random.default_rng(seed)
    stamps = (pd.bdate_range("2015-01-05", periods=sessions) + pd.Timedelta(hours=14, minutes=30)).tz_localize("UTC")
    frames = []
    for k in range(tickers):
        start = int(rng.integers(5, sessions // 5)) if k % 3 == 1 else 0
        end = sessions - (int(rng.integers(5, sessions // 5)) if k % 5 == 4 else 0)
        n = end - start
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.03, n)))
        opens = close * np.exp(rng.normal(0, 0.03, n))
        high = np.maximum(opens, close) * np.exp(np.abs(rng.normal(0, 0.01, n)))
        low = np.minimum(opens, close) * np.exp(-np.abs(rng.normal(0, 0.01, n)))
        weight = rng.uniform(-0.3, 0.4, n) * scale
        weight[rng.random(n) < hold] = np.nan
        weight[rng.random(n) < 0.1] = 0.0
        keep = rng.random(n) > 0.05
        keep[0] = True
        frames.append(pd.DataFrame({"ticker": f"T{k}", "session": stamps[start:end][keep], "open": opens[keep],
                                    "high": high[keep], "low": low[keep], "close": close[keep], "volume": 1e6,
                                    "weight": weight[keep]}))
    return pd.concat(frames).set_index(["ticker", "session"]).sort_index()


def cross_check(bars, broker, risk=None):
    """Both engines on the same bars: every output identical (so fills agree in date, ticker, size and price,
    and daily returns to far better than 1e-9). Returns backtrader's result."""
    expected = run_backtest(bars, broker, risk)
    got = run_vectorized(bars, broker, risk)
    for name in ("fills", "book", "trades"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(expected, name), check_exact=True, obj=name)
    assert got.var_scales == expected.var_scales
    assert (got.rejected_orders, got.orders) == (expected.rejected_orders, expected.orders)
    return expected


def stop_fills(result):
    return result.fills[result.fills["kind"] == "stop"]


def test_costs_band_stops_and_var_limit_on_a_staggered_universe_with_shorts():
    bars = universe()
    result = cross_check(bars, BROKER, {"stop_loss": 0.1, "var_limit": 0.03, "var_window_sessions": 20})
    # The fixture makes every rule bind: shorts, stops (some gapped through at the open), the VaR limit.
    positions = result.book.filter(like="position_")
    assert (positions < 0).any().any() and (positions > 0).any().any()
    stops = stop_fills(result).merge(bars.reset_index().assign(date=lambda f: f["session"].dt.strftime("%Y-%m-%d")),
                                     on=["date", "ticker"])
    assert len(stops) >= 5
    gapped = np.isclose(stops["price"], stops["open"] * (1 - 2e-4)) | np.isclose(stops["price"], stops["open"] * (1 + 2e-4))
    assert gapped.any() and not gapped.all()
    assert min(result.var_scales) < 1
    # Trading starts the session after the last late listing's first bar.
    first_fill = pd.Timestamp(result.fills["date"].min())
    last_listing = bars.reset_index().groupby("ticker")["session"].min().max()
    assert first_fill.date() == (last_listing + pd.offsets.BDay(1)).date()


@pytest.mark.parametrize("stop_loss", [None, 0.05])
@pytest.mark.parametrize("var_limit", [None, 0.01])
@pytest.mark.parametrize("caps", [False, True])
def test_each_risk_limit_on_and_off(stop_loss, var_limit, caps):
    bars = universe(seed=1, scale=2.0)
    if caps:  # applied to the weights before either engine (engine/risk.py): both get the same weight line
        closes = bars["close"].groupby(level="ticker")
        features = pd.DataFrame({"volatility_20": closes.transform(lambda c: c.pct_change().rolling(20).std().shift())
                                 * np.sqrt(252)})
        risk = {"max_position": 0.2, "max_gross_exposure": 1.0, "target_volatility": 0.15, "max_leverage": 1.0}
        capped = apply_risk(bars["weight"], features, risk)
        assert (capped.abs() < bars["weight"].abs()).any()
        bars = bars.assign(weight=capped.to_numpy())
    result = cross_check(bars, BROKER, {"stop_loss": stop_loss, "var_limit": var_limit, "var_window_sessions": 10})
    assert stop_fills(result).empty == (stop_loss is None)
    assert (min(result.var_scales) < 1) == (var_limit is not None)


def test_whole_units_without_band_or_slippage():
    broker = dict(BROKER, fractional=False, rebalance_band=0.0, slippage_bps=0)
    result = cross_check(universe(seed=2), broker, {"stop_loss": 0.05})
    sizes = result.fills["size"]
    assert len(sizes) > 100 and (sizes == sizes.round()).all()


def test_buys_scaled_to_the_cash():
    # Long-only weights summing to about 2: every session's buys want more than the cash.
    bars = universe(seed=3, hold=0.1)
    bars["weight"] = bars["weight"].abs() * 2
    result = cross_check(bars, dict(BROKER, rebalance_band=0.0), {"stop_loss": 0.1})
    assert (result.book["cash"] < 1e-6 * result.book["value"]).sum() > 20
    assert result.rejected_orders == 0


def hand_bars(rows: dict, weights: dict) -> pd.DataFrame:
    """(open, high, low, close) rows per ticker over consecutive sessions from 6 Jan 2020, with weights."""
    frames = []
    for ticker, bars in rows.items():
        dates = pd.bdate_range("2020-01-06", periods=len(bars))
        frame = make_prices(dates, [b[0] for b in bars], [b[3] for b in bars], ticker=ticker)
        frame["high"], frame["low"] = [b[1] for b in bars], [b[2] for b in bars]
        frames.append(frame.rename(columns={"timestamp": "session"}).assign(weight=[float(w) for w in weights[ticker]]))
    return pd.concat(frames).set_index(["ticker", "session"])


def test_a_short_sale_refused_for_want_of_cash():
    # B long half, A short half; A gaps from 100 to 250, through its stop: covering 50 units costs 12,500 of
    # the 10,000 cash, which goes negative. The next open, C's short sale would leave it negative still:
    # backtrader refuses the order (Margin), a reject in both engines, and C stays flat.
    flat = [(100, 101, 99, 100)] * 4
    rows = {"A": [(100, 101, 99, 100), (100, 101, 99, 100), (250, 251, 249, 250), (250, 251, 249, 250)],
            "B": flat, "C": flat}
    weights = {"A": [0, -0.5, -0.5, float("nan")], "B": [0, 0.5, float("nan"), float("nan")], "C": [0, 0, 0, -0.5]}
    result = cross_check(hand_bars(rows, weights), {"cash": 10_000}, {"stop_loss": 0.1})
    assert result.rejected_orders == 1
    assert list(stop_fills(result)["ticker"]) == ["A"]
    assert result.book["cash"].iloc[2] < 0
    assert result.book["position_C"].iloc[-1] == 0


def test_orders_refused_for_want_of_cash_beside_orders_that_fill():
    # Little cash, weights up to 1.2 long or short and tight stops: sessions where covering a gapped short leaves
    # the cash negative, and a short sale among that session's other orders would keep it so. backtrader refuses
    # each such order alone and fills the rest of the session's orders around it.
    result = cross_check(universe(seed=0, scale=4.0), dict(BROKER, cash=10_000), {"stop_loss": 0.05})
    assert result.rejected_orders > 1
    assert result.orders == len(result.fills) + result.rejected_orders


def test_a_reversal_scaled_to_the_cash_fills_whole_that_session():
    # Short 0.1 of 10,000 at 10 (-99.900099 units), then all in long at 43.5: the buy must be scaled to the cash.
    # As one order it would execute closed + opened = 99.900099 + 152.674957, a float 1.4e-14 short of its size,
    # and stay open for that remnant until the next open. As two orders (cover 99.900099 whole, then buy the
    # rest scaled) both fill on the 8th, and the short's round trip is closed there.
    bars = hand_bars({"X": [(10, 10, 10, 10), (10, 10, 10, 10), (43.5, 43.5, 43.5, 43.5), (43.5, 43.5, 43.5, 43.5)]},
                     {"X": [0, -0.1, 1, float("nan")]})
    result = cross_check(bars, {"cash": 10_000, "commission_bps": 10})
    assert list(result.fills["date"]) == ["2020-01-07", "2020-01-08", "2020-01-08"]
    assert result.fills["size"].iloc[1] == 99.900099  # the cover: exactly the short
    assert result.orders == 3 and result.rejected_orders == 0
    assert result.trades[["opened", "closed"]].values.tolist() == [["2020-01-07", "2020-01-08"]]
    assert result.book["position_X"].iloc[2] == result.fills["size"].iloc[2] > 0


def test_no_trades_gives_the_same_empty_frames():
    bars = universe(tickers=3, sessions=30).assign(weight=np.nan)
    result = cross_check(bars, BROKER, {"stop_loss": 0.1})
    assert result.fills.empty and result.trades.empty


def test_bad_broker_values_are_refused_alike():
    bars = universe(tickers=2, sessions=40)
    for engine in (run_backtest, run_vectorized):
        with pytest.raises(ConfigError, match="broker.commission_bps"):
            engine(bars, dict(BROKER, commission_bps=-1))


def test_the_engine_key_is_checked():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert compose("config").engine == "backtrader"
        with pytest.raises(ConfigError, match="engine: must be 'backtrader' or 'vectorized', got 'numpy'"):
            validate_config(compose("config", overrides=["engine=numpy"]))


# --- the whole pipeline --------------------------------------------------------------------------------------

GOOD, BAD = "strong profit gains beat expectations", "losses and litigation weak decline"
FILLERS = ["oil", "bank", "chip", "retail", "energy", "court", "merger", "factory", "consumer", "rates", "china", "europe"]


def write_dataset(folder: Path) -> None:
    """Three tickers (CCC listed 15 sessions late) whose moves follow the tone of their news before the open,
    with deep lows now and then (stops)."""
    rng = np.random.default_rng(4)
    dates = pd.bdate_range("2019-01-02", periods=200)
    prices, news = [], []
    for number, ticker in enumerate(["AAA", "BBB", "CCC"]):
        tone = rng.choice([1, -1], size=len(dates))
        moves = 0.01 * tone + 0.01 * rng.standard_normal(len(dates))
        opens = 50 * np.cumprod(np.concatenate([[1.0], 1 + moves[:-1]]))
        closes = opens * (1 + moves * 0.5)
        lows = np.minimum(opens, closes) * (1 - rng.uniform(0, 0.15, len(dates)))
        for i in range(15 if number == 2 else 0, len(dates)):
            day = f"{dates[i]:%Y-%m-%d}"
            prices.append((ticker, day, opens[i], max(opens[i], closes[i]) * 1.01, lows[i], closes[i], 1000))
            text = " ".join([GOOD if tone[i] > 0 else BAD, *rng.choice(FILLERS, size=3, replace=False)])
            news.append((f"{day} 08:00:00-05:00", ticker, text))
    pd.DataFrame(prices, columns=["ticker", "date", "open", "high", "low", "close", "volume"]).to_csv(
        folder / "prices.csv", index=False)
    pd.DataFrame(news, columns=["timestamp", "ticker", "text"]).to_csv(folder / "news.csv", index=False)


def overrides(folder: Path, strategy: str) -> list[str]:
    return ["data=csv", f"data.prices.path={folder}/prices.csv", f"data.news.path={folder}/news.csv",
            "signals/sentiment=lexicon", "report.enabled=false", f"strategy={strategy}",
            "walk_forward.train_sessions=60", "walk_forward.step_sessions=30", "signals.topics.num_topics=3",
            "signals.topics.passes=1", "signals.topics.no_below=2", f"paths.cache={folder}/cache"]


@pytest.mark.parametrize("strategy", ["sentiment", "regression", "cluster"])
def test_the_cli_with_engine_vectorized_writes_what_backtrader_writes(strategy, tmp_path):
    write_dataset(tmp_path)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        expected = run(compose("config", overrides=overrides(tmp_path, strategy)), tmp_path / "backtrader")
    done = subprocess.run([sys.executable, "-m", "engine.run", *overrides(tmp_path, strategy), "engine=vectorized",
                           f"paths.runs={tmp_path}/runs"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stderr
    (run_dir,) = [path for path in (tmp_path / "runs").iterdir() if path.is_dir()]
    fills = pd.read_csv(run_dir / "fills.csv")
    assert len(fills) > 20 and (fills["size"] < 0).any()
    for name in ("fills.csv", "trades.csv", "equity.csv"):
        assert (run_dir / name).read_text() == (tmp_path / "backtrader" / name).read_text(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics.pop("engine"), expected.pop("engine")) == ("vectorized", "backtrader")
    for numbers in (metrics, expected):  # how long it took, and where, are no numbers of the run's
        for key in ("elapsed_seconds", "stage_seconds", "run_dir"):
            numbers.pop(key, None)
    assert metrics == expected


def test_a_process_builds_the_signal_frames_once_per_data_and_signals(tmp_path, monkeypatch):
    # A sweep's worker runs many rules over the same data and signals: the second run reads the frames the first
    # built (counted as the same cache reads), a run's edit of its frames reaches no other run, and a change of a
    # provider's parameters builds them again.
    from collections import Counter

    from engine import run as run_module
    from engine.cache import CACHE_STATS
    from engine.run import build_inputs

    monkeypatch.setattr(run_module, "_SIGNAL_FRAMES", type(run_module._SIGNAL_FRAMES)())
    computed = []
    real_fixed_signals = run_module.fixed_signals

    def fixed_signals(slot, *args, **kwargs):
        computed.append(slot.key)
        return real_fixed_signals(slot, *args, **kwargs)

    monkeypatch.setattr(run_module, "fixed_signals", fixed_signals)
    write_dataset(tmp_path)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = compose("config", overrides=overrides(tmp_path, "sentiment"))
        other = compose("config", overrides=[*overrides(tmp_path, "sentiment"), "signals.events.novelty_sessions=7"])
    first = build_inputs(config)
    assert computed == ["signals.sentiment", "signals.events"]
    before = Counter(CACHE_STATS)
    second = build_inputs(config)
    assert computed == ["signals.sentiment", "signals.events"]  # nothing built again
    assert Counter(CACHE_STATS) - before == Counter({"lexicon.hit": 1, "lexicon-items.hit": 1, "events.hit": 1,
                                                     "events-items.hit": 1})
    for name in ("features", "outcomes", "items"):
        pd.testing.assert_frame_equal(getattr(second, name), getattr(first, name), check_exact=True)
    assert second.provider_stats == first.provider_stats
    expected = first.features["sentiment"].copy()
    second.features.loc[second.features.index[0], "sentiment"] = 99.0  # one run's edits
    second.items["text"] = ""
    third = build_inputs(config)
    pd.testing.assert_series_equal(third.features["sentiment"], expected)
    assert (third.items["text"] != "").all()
    build_inputs(other)
    assert computed[2:] == ["signals.sentiment", "signals.events"]
