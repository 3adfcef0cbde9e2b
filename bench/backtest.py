"""Backtest speed: bars per second of the cluster strategy (signals precomputed, risk limits on) next to a
bare backtrader SMA crossover on the same bars, in the same run. Target: cluster >= 0.7x the crossover.

    .venv/bin/python bench/backtest.py [--dataset stocknet] [--repeat 3]
"""
from __future__ import annotations

import argparse
import logging
import time

import backtrader as bt
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine.backtest import WeightFeed, run_backtest
from engine.cache import PROJECT_ROOT
from engine.run import backtest_bars, build_inputs, decide


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


def best_of(repeat: int, function) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="stocknet")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["strategy=cluster", "signals.sentiment=lexicon", f"data={args.dataset}"])
    inputs = build_inputs(cfg)
    decisions = decide(cfg, inputs)
    bars = backtest_bars(inputs.dataset.prices, decisions.weights.fillna(0.0))
    broker = OmegaConf.to_container(cfg.broker, resolve=True)
    risk = OmegaConf.to_container(cfg.risk, resolve=True)
    cluster = best_of(args.repeat, lambda: run_backtest(bars, broker, risk))
    crossover = best_of(args.repeat, lambda: bare_crossover(bars))
    n = len(bars)
    print(f"bars: {n} ({bars.index.get_level_values('ticker').nunique()} tickers, dataset {args.dataset}), best of {args.repeat}")
    print(f"cluster strategy (newsbt, risk limits on): {n / cluster:10.0f} bars/s  ({cluster:.3f} s)")
    print(f"bare backtrader SMA crossover:             {n / crossover:10.0f} bars/s  ({crossover:.3f} s)")
    ratio = crossover / cluster
    print(f"ratio cluster / crossover: {ratio:.2f}x (target >= 0.70x){'' if ratio >= 0.7 else '  BELOW TARGET'}")


if __name__ == "__main__":
    main()
