"""Backtest speed: bars per second of the cluster strategy (signals precomputed, default risk limits on) next to
a bare backtrader SMA crossover on the same bars and the same feed class, in the same run. Target: cluster
>= 0.9x the crossover. Then the vectorised engine (engine/vectorized.py) against backtrader's: the largest
difference between their fills (date, ticker, size, price) and daily returns on djia and stocknet (cluster and
regression, lexicon sentiment, default config; target: none above 1e-9 relative), and its speed-up on a
synthetic 100-ticker x 2,520-session universe (target >= 50x).

Times are CPU seconds of this process (time.process_time), the two backtests alternating, best of --repeat:
on a machine shared with other work, wall time measures the neighbours as much as the code. The inputs built
beforehand (news, signals, models) are moved out of the garbage collector's sight (gc.freeze) and each run
starts after a collection, so neither backtest pays for scanning the other's or the inputs' objects.

    .venv/bin/python bench/backtest.py [--dataset stocknet] [--repeat 5] [--speed-repeat 2]
"""
from __future__ import annotations

import argparse
import gc
import logging
import time

import backtrader as bt
import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine.backtest import WeightFeed, run_backtest
from engine.cache import PROJECT_ROOT
from engine.risk import apply_risk
from engine.run import backtest_bars, build_inputs, decide
from engine.vectorized import run_vectorized

TARGET = 0.9
SPEED_TARGET = 50.0  # vectorised engine: backtrader seconds / vectorised seconds
AGREEMENT = 1e-9  # largest relative difference allowed between the engines' fills and daily returns


class SmaCross(bt.Strategy):
    """The textbook crossover: long when the 10-bar SMA is above the 30-bar SMA, flat otherwise."""

    def __init__(self):
        self.crosses = {d: bt.ind.CrossOver(bt.ind.SMA(d, period=10), bt.ind.SMA(d, period=30)) for d in self.datas}

    def next(self):
        for data, cross in self.crosses.items():
            if cross[0] > 0:
                self.order_target_percent(data=data, target=0.9 / len(self.datas))
            elif cross[0] < 0:
                self.order_target_percent(data=data, target=0.0)


def bare_crossover(bars) -> None:
    cerebro = bt.Cerebro(stdstats=False, runonce=True, preload=True)
    cerebro.broker.setcash(100_000)
    cerebro.broker.setcommission(commission=5 / 1e4)
    for ticker, frame in bars.groupby(level="ticker"):
        frame = frame.droplevel("ticker")
        frame = frame[["open", "high", "low", "close", "volume", "weight"]].set_axis(frame.index.date)
        frame.index = frame.index.astype("datetime64[ns]")
        cerebro.adddata(WeightFeed(dataname=frame), name=str(ticker))
    cerebro.addstrategy(SmaCross)
    cerebro.run()


def best_of(repeat: int, functions: dict) -> dict:
    """The least CPU time of each function over ``repeat`` rounds, the functions alternating."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeat):
        for name, function in functions.items():
            gc.collect()
            started = time.process_time()
            function()
            best[name] = min(best[name], time.process_time() - started)
    return best


def relative_difference(left, right) -> float:
    """The largest |left - right| / max(|left|, |right|) over matching values (0 where both are 0)."""
    left, right = np.asarray(left, dtype="float64"), np.asarray(right, dtype="float64")
    if not left.size:
        return 0.0
    scale = np.maximum(np.abs(left), np.abs(right))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmax(np.where(scale > 0, np.abs(left - right) / scale, 0.0)))


def compare_engines(bars, broker: dict, risk: dict) -> str:
    """Both engines on the same bars: how far apart their fills and daily returns are, as one line."""
    expected, got = run_backtest(bars, broker, risk), run_vectorized(bars, broker, risk)
    keys = ["date", "ticker", "kind"]
    if len(got.fills) != len(expected.fills) or not got.fills[keys].equals(expected.fills[keys]):
        return f"FILLS DIFFER: {len(got.fills)} vs {len(expected.fills)} fills, or their dates, tickers or kinds"
    fills = max(relative_difference(got.fills[column], expected.fills[column]) for column in ("size", "price"))
    returns = relative_difference(got.book["value"].pct_change().iloc[1:], expected.book["value"].pct_change().iloc[1:])
    flag = "" if max(fills, returns) <= AGREEMENT else f"  ABOVE {AGREEMENT:g}"
    return (f"{len(expected.fills):6d} fills ({int((expected.fills['kind'] == 'stop').sum())} stops) alike in date, "
            f"ticker and kind; largest relative difference: size/price {fills:.1e}, daily returns {returns:.1e}{flag}")


def strategy_bars(dataset: str, strategy: str):
    """The bars and weights engine.run backtests for ``strategy`` on ``dataset`` (lexicon sentiment, default
    config; a learned rule from the session before its first out-of-sample one), and its broker and risk."""
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"strategy={strategy}", "signals/sentiment=lexicon", f"data={dataset}"])
    inputs = build_inputs(cfg)
    decisions = decide(cfg, inputs)
    sessions = inputs.features.index.get_level_values("session")
    keep = np.ones(len(sessions), dtype=bool)
    if decisions.first_session is not None:
        unique = sessions.unique().sort_values()
        keep = np.asarray(sessions >= unique[max(unique.get_loc(decisions.first_session) - 1, 0)])
    bars = backtest_bars(inputs.dataset.prices[keep], decisions.weights[keep])
    return bars, OmegaConf.to_container(cfg.broker, resolve=True), OmegaConf.to_container(cfg.risk, resolve=True)


def synthetic_universe(risk: dict, tickers: int = 100, sessions: int = 2520, seed: int = 0) -> pd.DataFrame:
    """Random-walk daily bars (overnight gaps, intraday ranges) for ``tickers`` over ``sessions``, with random
    target weights in [-1, 1] redrawn every session, half of them NaN (hold), through the weight caps of
    ``risk`` (engine.risk.apply_risk), as engine.run would give them."""
    rng = np.random.default_rng(seed)
    stamps = (pd.bdate_range("2010-01-04", periods=sessions) + pd.Timedelta(hours=14, minutes=30)).tz_localize("UTC")
    shape = (sessions, tickers)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, shape), axis=0))
    previous = np.vstack([close[:1], close[:-1]])
    opens = previous * np.exp(rng.normal(0, 0.01, shape))
    high = np.maximum(opens, close) * np.exp(np.abs(rng.normal(0, 0.01, shape)))
    low = np.minimum(opens, close) * np.exp(-np.abs(rng.normal(0, 0.01, shape)))
    weight = rng.uniform(-1, 1, shape)
    weight[rng.random(shape) < 0.5] = np.nan
    index = pd.MultiIndex.from_product([[f"S{k:03d}" for k in range(tickers)], stamps], names=["ticker", "session"])
    bars = pd.DataFrame({"open": opens.T.ravel(), "high": high.T.ravel(), "low": low.T.ravel(),
                         "close": close.T.ravel(), "volume": 1e6, "weight": weight.T.ravel()}, index=index)
    returns = bars["close"].groupby(level="ticker").pct_change()
    features = pd.DataFrame({"volatility_20": returns.groupby(level="ticker").transform(
        lambda r: r.rolling(20).std().shift()) * np.sqrt(252)})
    return bars.assign(weight=apply_risk(bars["weight"], features, risk).to_numpy())


def engine_figures(speed_repeat: int) -> None:
    """Print the engines' agreement on the real datasets and the vectorised engine's speed-up."""
    print("engine=vectorized against backtrader (same bars, weights, broker and risk):")
    for dataset in ("djia", "stocknet"):
        for strategy in ("cluster", "regression"):
            bars, broker, risk = strategy_bars(dataset, strategy)
            print(f"  {dataset:8s} {strategy:10s} {compare_engines(bars, broker, risk)}")
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config")
    broker = OmegaConf.to_container(cfg.broker, resolve=True)
    risk = OmegaConf.to_container(cfg.risk, resolve=True)
    bars = synthetic_universe(risk)
    print(f"  {'synthetic':19s} {compare_engines(bars, broker, risk)}")
    gc.collect()
    times = best_of(speed_repeat, {"backtrader": lambda: run_backtest(bars, broker, risk),
                                   "vectorized": lambda: run_vectorized(bars, broker, risk)})
    ratio = times["backtrader"] / times["vectorized"]
    print(f"speed, synthetic 100 tickers x 2,520 sessions (seed 0, default broker and risk limits; CPU time, best of "
          f"{speed_repeat}): backtrader {times['backtrader']:.2f} s, vectorized {times['vectorized']:.3f} s: "
          f"{ratio:.0f}x (target >= {SPEED_TARGET:.0f}x){'' if ratio >= SPEED_TARGET else '  BELOW TARGET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stocknet")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--speed-repeat", type=int, default=2, help="rounds of the vectorised engine's speed-up")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["strategy=cluster", "signals/sentiment=lexicon", f"data={args.dataset}"])
    inputs = build_inputs(cfg)
    decisions = decide(cfg, inputs)
    bars = backtest_bars(inputs.dataset.prices, decisions.weights.fillna(0.0))
    broker = OmegaConf.to_container(cfg.broker, resolve=True)
    risk = OmegaConf.to_container(cfg.risk, resolve=True)
    result = run_backtest(bars, broker, risk)
    gc.collect()
    gc.freeze()
    times = best_of(args.repeat, {"cluster": lambda: run_backtest(bars, broker, risk),
                                  "crossover": lambda: bare_crossover(bars)})
    n = len(bars)
    stops = int((result.fills["kind"] == "stop").sum())
    print(f"bars: {n} ({bars.index.get_level_values('ticker').nunique()} tickers, dataset {args.dataset}), "
          f"CPU time, best of {args.repeat}")
    print(f"cluster strategy (newsbt, risk limits on): {n / times['cluster']:10.0f} bars/s  ({times['cluster']:.3f} s)"
          f"  {result.orders} orders, {len(result.fills)} fills ({stops} stops), {result.rejected_orders} rejected")
    print(f"bare backtrader SMA crossover:             {n / times['crossover']:10.0f} bars/s  ({times['crossover']:.3f} s)")
    ratio = times["crossover"] / times["cluster"]
    print(f"ratio cluster / crossover: {ratio:.2f}x (target >= {TARGET:.2f}x){'' if ratio >= TARGET else '  BELOW TARGET'}")
    gc.unfreeze()
    engine_figures(args.speed_repeat)


if __name__ == "__main__":
    main()
