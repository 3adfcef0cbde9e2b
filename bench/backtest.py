"""Backtest speed: bars per second of the cluster strategy (signals precomputed, default risk limits on) next to
a bare backtrader SMA crossover on the same bars and the same feed class, in the same run. Target: cluster
>= 0.9x the crossover.

Times are CPU seconds of this process (time.process_time), the two backtests alternating, best of --repeat:
on a machine shared with other work, wall time measures the neighbours as much as the code. The inputs built
beforehand (news, signals, models) are moved out of the garbage collector's sight (gc.freeze) and each run
starts after a collection, so neither backtest pays for scanning the other's or the inputs' objects.

    .venv/bin/python bench/backtest.py [--dataset stocknet] [--repeat 5]
"""
from __future__ import annotations

import argparse
import gc
import logging
import time

import backtrader as bt
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine.backtest import WeightFeed, run_backtest
from engine.cache import PROJECT_ROOT
from engine.run import backtest_bars, build_inputs, decide

TARGET = 0.9


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stocknet")
    parser.add_argument("--repeat", type=int, default=5)
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


if __name__ == "__main__":
    main()
