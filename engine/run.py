"""``python -m engine.run``: the one place that wires data, signals, a rule, the backtest and the report.

A Hydra app; every config key is a ``key=value`` override (see conf/). Signal providers are built from their
configs (``engine.providers``): this module names none of them. Each run writes its own folder with report.html,
metrics.json, trades.csv, fills.csv, decisions.csv, equity.csv, signals.parquet, news.parquet, event_study.csv
(with the events provider) and the resolved config.yaml.
A user's mistake prints one line ``newsbt: error: ...`` and exits with status 2.
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (torch is imported later, on first use): on a few busy cores
# spinning threads made fine-tuning steps 5-10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import logging
import math
import re
import shutil
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import OmegaConfDumper

from engine._csv import write_csv
from engine.align import align_news, news_accounting, news_drop_report
from engine.cache import CACHE_STATS, SignalCache, fingerprint, memory_key, project_path
from engine.config import (
    compositions_remembered,
    discard_run_folder,
    preflight,
    report_and_exit,
    strategy_parameters,
    validate_config,
)
from engine.datasets import load_dataset
from engine.errors import NewsbtError
from engine.features import assemble_features, join_signals
from engine.progress import StageClock
from engine.providers import SignalPlan, build_providers, fixed_signals, item_scores, plan_providers
from engine.risk import apply_risk, check_risk
from engine.strategy import Rule, to_weights
from engine.walkforward import make_windows, walk_forward, window_frame

log = logging.getLogger("newsbt")


def make_rule(strategy_cfg: DictConfig) -> Rule:
    """Instantiate the rule named by ``strategy._target_`` with the other strategy keys as parameters, checked
    against the rule's constructor (``engine.config``)."""
    rule_class, params = strategy_parameters(OmegaConf.to_container(strategy_cfg, resolve=True))
    return rule_class(**params)


def backtest_bars(prices: pd.DataFrame, weights: pd.Series) -> pd.DataFrame:
    """Price bars indexed by (ticker, session) with the ``weight`` line."""
    bars = prices.drop(columns=["ticker", "timestamp"])
    bars.index = weights.index  # both are the sorted (ticker, session) grid
    return bars.assign(weight=weights.to_numpy())


# news.parquet: one row per (item, instrument it concerns) as aligned, these columns first, then the providers'
# per-item scores (e.g. sentiment).
NEWS_FILE_COLUMNS = ("item", "timestamp", "session", "ticker", "link_method", "source", "text")


@dataclass
class Decisions:
    """What the rule decided: exposures, the risk-adjusted weights and the learned parts' diagnostics."""

    exposure: pd.Series
    weights: pd.Series
    first_session: pd.Timestamp | None = None  # first session decided out of sample (learned rules)
    out_of_sample: pd.DataFrame | None = None
    learned: pd.DataFrame | None = None
    described: dict[str, pd.DataFrame] = field(default_factory=dict)  # windowed providers' describe(), by name
    in_sample_sharpe: float | None = None


@dataclass
class Inputs:
    """Everything a rule decides from: the dataset, its aligned news, the providers' plan, the session features,
    the cache; the outcomes (``DIAGNOSTIC_COLUMNS``, not known before each open) that only labels and reports
    read; and what the run reports about them (provider counts, ticker linking, per-item scores, stage times)."""

    dataset: Any
    aligned: pd.DataFrame  # one row per (item, instrument it concerns), with the session that may first use it
    plan: SignalPlan
    features: pd.DataFrame  # only columns known before each session's open
    outcomes: pd.DataFrame  # open high low close volume forward_return, same index as features
    cache: SignalCache
    provider_stats: dict[str, dict]  # slot -> the provider's counts when it computed (kept in the signal cache)
    linking: dict  # signals.linking.link_news's report
    items: pd.DataFrame  # the run's news.parquet: aligned items with their links and per-item scores
    clock: StageClock = field(default_factory=StageClock)


def security_master(sources: list[str]):
    """The security master of ``data.securities``: built-in ``stocknet`` and ``indices`` and securities.csv
    paths (relative to the current directory), merged in order (the first name of a ticker wins)."""
    from engine.securities import index_master, read_securities_csv, stocknet_master

    master = None
    for source in sources:
        part = {"stocknet": stocknet_master, "indices": index_master}.get(source)
        part = part() if part is not None else read_securities_csv(Path(source).expanduser())
        master = part if master is None else master.merge(part)
    return master


def link_tickers(news: pd.DataFrame, prices: pd.DataFrame, data: dict) -> tuple[pd.DataFrame, dict]:
    """Apply ``data.news.link_tickers`` to loaded news (``signals.linking.link_news``): each item gets its number
    in ``item`` and, per row, how its ticker was known in ``link_method`` (``source``: the file's ticker;
    ``market``: market-wide; else the linking method); returns the news and the linking report.

    >>> news, report = link_tickers(dataset.news, dataset.prices, cfg_data)
    """
    from signals.linking import TickerLinker, link_news

    mode = (data.get("news") or {}).get("link_tickers", "off")
    news = news.assign(item=np.arange(len(news), dtype=np.int64))
    linker = None if mode == "off" else TickerLinker(security_master(list(data["securities"])),
                                                      universe=prices["ticker"].unique())
    linked, report = link_news(news, linker, mode)
    unlinked = linked["link_method"].eq("")
    linked["link_method"] = np.where(unlinked & linked["ticker"].eq(""), "market",
                                     np.where(unlinked, "source", linked["link_method"]))
    return linked, report


def _data_key(cfg: DictConfig) -> tuple[str, tuple[Path, ...], float]:
    """What the process's loaded data is keyed by (``_aligned_dataset``, ``_news_accounting``): the data config as
    JSON, the data roots and the latency."""
    return (json.dumps(OmegaConf.to_container(cfg.data, resolve=False), sort_keys=True),
            tuple(project_path(root) for root in cfg.paths.roots), cfg.latency_minutes)


@lru_cache(maxsize=4)
def _aligned_dataset(data_json: str, roots: tuple[Path, ...], latency_minutes: float):
    """Load, link and align once per process (the runs of a sweep in one worker share their data config):
    (dataset with the linked news, aligned news, linking report, seconds per stage)."""
    clock = StageClock()
    data = json.loads(data_json)
    with clock("load"):
        dataset = load_dataset(data, list(roots))
    with clock("link"):
        news, report = link_tickers(dataset.news, dataset.prices, data)
    with clock("align"):
        aligned = align_news(news, dataset.prices, latency_minutes)
    return replace(dataset, news=news), aligned, report, clock.seconds


@lru_cache(maxsize=4)
def _news_accounting(data_json: str, roots: tuple[Path, ...], latency_minutes: float) -> str:
    """news_accounting of the dataset ``_aligned_dataset`` holds, as JSON: once per process, like the dataset
    (it was a fifth of a screening run)."""
    dataset = _aligned_dataset(data_json, roots, latency_minutes)[0]
    return json.dumps(news_accounting(dataset, latency_minutes))


@dataclass
class _SignalFrames:
    """What ``build_inputs`` computed from one loaded dataset and signal config: the features with the fixed
    providers' columns, the outcomes, the providers' counts, the items with their scores, and the signal cache
    entries read for them (``CACHE_STATS`` labels)."""

    aligned: pd.DataFrame  # the very frame _aligned_dataset holds: an entry serves only runs given that object
    base_columns: list[str]
    features: pd.DataFrame
    outcomes: pd.DataFrame
    stats: dict[str, dict]
    items: pd.DataFrame
    reads: Counter


# build_inputs' frames in this process, for the runs of a sweep's worker that share their data and signals but not
# their rule: keyed by a fingerprint of everything the frames are computed from (the data, signal and path config,
# each provider's params(), which cover the files a provider reads, e.g. its model or word lists) and kept only
# for the same loaded data (compared by identity while held). Handed out as copies (pandas copy-on-write): a run
# that changes its frames changes no other run's. The two most recent are kept.
_SIGNAL_FRAMES: OrderedDict[str, _SignalFrames] = OrderedDict()


def build_inputs(cfg: DictConfig, clock: StageClock | None = None) -> Inputs:
    """Load, link and align the data, build the signal providers and compute (or read from the cache) the
    fixed ones' features and per-item scores; ``clock`` (new if None) gets the seconds of each stage.

    >>> inputs = build_inputs(cfg); inputs.features.columns
    """
    clock = clock or StageClock()
    data_json, roots, _ = data_key = _data_key(cfg)
    cache_root = project_path(cfg.paths.cache)
    cache = SignalCache(cache_root)
    hits = _aligned_dataset.cache_info().hits
    dataset, aligned, linking, seconds = _aligned_dataset(*data_key)
    for stage, spent in seconds.items():  # nothing spent when this process had them already
        clock.add(stage, 0.0 if _aligned_dataset.cache_info().hits > hits else spent)
    signals = OmegaConf.to_container(cfg.signals, resolve=True)
    slots = build_providers(signals, roots, cache_root)
    key = fingerprint(data_json, [str(root) for root in roots], cfg.latency_minutes, str(cache_root), signals,
                      [(slot.key, slot.provider.name, slot.provider.params()) for slot in slots])
    known = _SIGNAL_FRAMES.get(key)
    if known is not None and known.aligned is aligned:
        _SIGNAL_FRAMES.move_to_end(key)
        plan = plan_providers(slots, known.base_columns)
        for slot in plan.fixed:  # nothing spent: read from this process's memory
            clock.add(slot.slot, 0.0)
        CACHE_STATS.update({f"{label.rpartition('.')[0]}.hit": count for label, count in known.reads.items()})
        providers = {slot.slot: slot.provider for slot in plan.fixed}  # counts of a run that computed nothing
        return Inputs(dataset, aligned, plan, known.features.copy(deep=False), known.outcomes.copy(deep=False), cache,
                      {slot: providers[slot].cached_stats(counts) for slot, counts in known.stats.items()}, linking,
                      known.items.copy(deep=False), clock)
    before = Counter(CACHE_STATS)
    grid = assemble_features(dataset.prices, [])
    plan = plan_providers(slots, list(grid.features.columns))
    features, stats = grid.features, {}
    items = aligned.copy()
    for slot in plan.fixed:
        with clock(slot.slot):
            frame = fixed_signals(slot, aligned, features, cache, items)  # items: per-item scores so far
            stats[slot.slot] = dict(frame.attrs.get("stats", {}))
            features = join_signals(features, frame, slot.key)
            if slot.provider.reads_news and slot.provider.item_columns:
                items = items.join(item_scores(slot, aligned, cache))
    _SIGNAL_FRAMES[key] = _SignalFrames(aligned, list(grid.features.columns), features, grid.outcomes,
                                        {slot: dict(counts) for slot, counts in stats.items()}, items,
                                        Counter(CACHE_STATS) - before)
    while len(_SIGNAL_FRAMES) > 2:
        _SIGNAL_FRAMES.popitem(last=False)
    return Inputs(dataset, aligned, plan, features.copy(deep=False), grid.outcomes.copy(deep=False), cache, stats,
                  linking, items.copy(deep=False), clock)


def make_walk_forward(cfg: DictConfig, features: pd.DataFrame) -> list:
    """The walk-forward windows of ``walk_forward.*`` over the feature sessions."""
    walk = cfg.walk_forward
    return make_windows(features.index.get_level_values("session"), walk.train_sessions, walk.step_sessions, walk.mode)


def rule_is_learned(cfg: DictConfig) -> bool:
    """Whether ``strategy._target_`` is a learned rule (walked forward, with the windowed providers)."""
    return bool(getattr(hydra.utils.get_class(cfg.strategy._target_), "learned", False))


def load_data(cfg: DictConfig) -> None:
    """Load, link and align the data of ``cfg`` in this process and count its news, as a run does first (kept for
    the process's later runs): a sweep's worker does it while another prepares the signals.

    >>> load_data(cfg)
    """
    key = _data_key(cfg)
    _aligned_dataset(*key)
    _news_accounting(*key)


def prepare_signals(cfg: DictConfig) -> None:
    """Compute and cache every signal a run of ``cfg`` reads: the fixed providers (and their per-item scores),
    and for a learned rule the windowed providers of every walk-forward window, so that the runs of a sweep
    sharing this signal config only read the cache.

    >>> prepare_signals(cfg)
    """
    inputs = build_inputs(cfg)
    if rule_is_learned(cfg) and inputs.plan.windowed:
        for window in make_walk_forward(cfg, inputs.features):
            window_frame(inputs.features, window, inputs.plan.windowed, inputs.aligned, inputs.cache)


def decide(cfg: DictConfig, inputs: Inputs) -> Decisions:
    """Run the configured rule over the (pre-open) features: directly, or walked forward with the windowed
    providers (topics, regimes), the label coming from the outcomes frame.

    >>> decisions = decide(cfg, build_inputs(cfg))
    """
    features = inputs.features
    rule = make_rule(cfg.strategy)
    risk = check_risk(OmegaConf.to_container(cfg.risk, resolve=True))
    if not rule.learned:
        exposure = rule.target(features)
        return Decisions(exposure, apply_risk(to_weights(exposure), features, risk))
    windows = make_walk_forward(cfg, features)
    result = walk_forward(features, inputs.outcomes["forward_return"], windows, lambda: make_rule(cfg.strategy),
                          inputs.plan.windowed, inputs.aligned, cache=inputs.cache, clock=inputs.clock)
    weights = apply_risk(to_weights(result.exposure), features, risk)
    return Decisions(result.exposure, weights, windows[0].test_start, result.out_of_sample, result.learned,
                     result.described, result.in_sample_sharpe)


def in_out_of_sample_sharpe(cfg: DictConfig, decisions: Decisions, returns: pd.Series, metrics: dict) -> dict:
    """In-sample and out-of-sample Sharpe, so a sweep shows overfitting. A learned rule's backtest is all out of
    sample; its in-sample figure is the mean over windows of the fitted rule's Sharpe on its training rows. A
    fixed rule is split at the walk-forward boundary: the first ``walk_forward.train_sessions`` sessions are
    in sample (where a sweep would tune it), the rest out of sample."""
    from reports.metrics import performance_metrics

    if decisions.first_session is not None:
        return {"in_sample_sharpe": decisions.in_sample_sharpe, "out_of_sample_sharpe": metrics["sharpe"]}
    train = int(cfg.walk_forward.train_sessions)
    if not 1 < train < len(returns) - 1:
        return {"in_sample_sharpe": None, "out_of_sample_sharpe": None}
    return {"in_sample_sharpe": performance_metrics(returns.iloc[:train])["sharpe"],
            "out_of_sample_sharpe": performance_metrics(returns.iloc[train:])["sharpe"]}


class _ConfigDumper(getattr(yaml, "CDumper", yaml.Dumper)):  # libyaml's emitter where PyYAML was built with it
    """OmegaConf's YAML dumper (its representer of strings: quoted where they would read back as a bool or a
    number) on libyaml's emitter, a quarter of the pure-Python one's time."""


_ConfigDumper.add_representer(str, OmegaConfDumper.str_representer)


# Text both YAML emitters write alike: printable characters of the Basic Multilingual Plane (libyaml escapes
# others, C1 controls, line separators and the byte-order mark among them, where PyYAML's emitter writes them
# as they are), in keys shorter than 100 characters (libyaml writes longer keys as simple keys, PyYAML not).
_PLAIN_YAML_TEXT = re.compile("[\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd]*")


def _plain_yaml(node: Any) -> bool:
    if isinstance(node, dict):
        return all(not isinstance(key, str) or (len(key) < 100 and _PLAIN_YAML_TEXT.fullmatch(key))
                   for key in node) and all(_plain_yaml(value) for value in node.values())
    if isinstance(node, list):
        return all(_plain_yaml(value) for value in node)
    return not isinstance(node, str) or _PLAIN_YAML_TEXT.fullmatch(node) is not None


def config_yaml(cfg: DictConfig) -> str:
    """``OmegaConf.to_yaml(cfg, resolve=True)``: the same text (a test compares them), written by libyaml's emitter
    (a quarter of the time) when every key and string is text both emitters write alike, else by OmegaConf.

    >>> (run_dir / "config.yaml").write_text(config_yaml(cfg))
    """
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if not _plain_yaml(container):
        return OmegaConf.to_yaml(cfg, resolve=True)
    return yaml.dump(container, Dumper=_ConfigDumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


_BENCHMARKS: dict[bytes, np.ndarray] = {}  # _benchmark_values' results in this process, by their inputs' memory_key


def _benchmark_values(backtest, bars: pd.DataFrame, broker: dict) -> np.ndarray:
    """The buy-and-hold benchmark's daily book values: ``backtest(bars, broker)``, computed once per process
    for the same engine, broker settings and bars (every run of a sweep over rule parameters has the same
    benchmark); the key covers the bars' exact content (``memory_key``), so other bars or settings compute their
    own."""
    key = memory_key(f"{backtest.__module__}.{backtest.__qualname__}", broker, bars)
    if key not in _BENCHMARKS:
        if len(_BENCHMARKS) >= 8:
            _BENCHMARKS.pop(next(iter(_BENCHMARKS)))
        _BENCHMARKS[key] = backtest(bars, broker).book["value"].to_numpy().copy()
    return _BENCHMARKS[key].copy()


def run(cfg: DictConfig, run_dir: Path, files: str = "all", validated: bool = False) -> dict[str, Any]:
    """Run one backtest described by ``cfg`` and write its outputs to ``run_dir``; return the metrics. ``files``:
    ``all``, or ``light`` (a sweep's screen, ``hydra.launcher.run_files``): the same metrics and config, equity,
    trades and fills, without signals.parquet, news.parquet, event_study.csv and decisions.csv. ``validated``:
    ``cfg`` is this very config already checked by ``validate_config`` (a sweep checks every job before any runs).

    >>> metrics = run(cfg, Path("runs/example"))
    """
    from reports.metrics import performance_metrics

    started = time.perf_counter()
    if not validated:
        validate_config(cfg)
    clock = StageClock()
    inputs = build_inputs(cfg, clock)
    dataset, features, outcomes = inputs.dataset, inputs.features, inputs.outcomes
    before = sum(clock.seconds.values())
    decision_started = time.perf_counter()
    decisions = decide(cfg, inputs)
    # decide's own time, without the windowed providers it ran (their seconds are under their slots)
    clock.add("decisions", time.perf_counter() - decision_started - (sum(clock.seconds.values()) - before))

    # Learned rules trade from their first out-of-sample session; the session before it primes the feeds
    # (backtrader never trades a feed's first bar). The benchmark covers the same sessions.
    sessions = features.index.get_level_values("session")
    keep = np.ones(len(features), dtype=bool)
    if decisions.first_session is not None:
        unique = sessions.unique().sort_values()
        prime = unique[max(unique.get_loc(decisions.first_session) - 1, 0)]
        keep = np.asarray(sessions >= prime)
    prices = dataset.prices[keep]
    weights = decisions.weights[keep]
    broker = OmegaConf.to_container(cfg.broker, resolve=True)
    risk = OmegaConf.to_container(cfg.risk, resolve=True)
    rule_rebalances = getattr(hydra.utils.get_class(cfg.strategy._target_), "rebalances", True)
    strategy_broker = dict(broker, rebalance_band=broker["rebalance_band"] if rule_rebalances else math.inf)
    from strategies.buy_and_hold import BuyAndHold

    # cfg.engine: backtrader's engine, or the vectorised one that reproduces its fills bit for bit (each imported
    # only for its runs: backtrader's import, numba's import and its compilation on a first run)
    if cfg.engine == "vectorized":
        from engine.vectorized import run_vectorized as backtest
    else:
        from engine.backtest import run_backtest as backtest
    with clock("backtest"):
        result = backtest(backtest_bars(prices, weights), strategy_broker, risk)
        hold = to_weights(BuyAndHold().target(features[keep]))
        benchmark_values = _benchmark_values(backtest, backtest_bars(prices, hold),
                                             dict(broker, rebalance_band=math.inf))

    equity = pd.DataFrame({"date": result.book["date"], "value": result.book["value"]})
    equity["returns"] = equity["value"].pct_change().fillna(equity["value"].iloc[0] / broker["cash"] - 1)
    equity["benchmark_value"] = benchmark_values
    equity["benchmark_returns"] = equity["benchmark_value"].pct_change().fillna(
        equity["benchmark_value"].iloc[0] / broker["cash"] - 1)
    returns = pd.Series(equity["returns"].to_numpy(), index=pd.DatetimeIndex(equity["date"]))
    benchmark_returns = pd.Series(equity["benchmark_returns"].to_numpy(), index=returns.index)
    metrics = performance_metrics(returns, benchmark=benchmark_returns, trades=len(result.trades))
    metrics["engine"] = cfg.engine
    metrics.update(
        final_value=float(equity["value"].iloc[-1]),
        sessions=int(len(equity)),
        # news_items, news_aligned, news_dropped (by reason)
        **json.loads(_news_accounting(*_data_key(cfg))),
        news_linking=inputs.linking,  # data.news.link_tickers: items considered, linked (by method), unlinked
        fills=int(len(result.fills)),
        stop_fills=int((result.fills["kind"] == "stop").sum()),
        rejected_orders=int(result.rejected_orders),
        sessions_var_limited=int(sum(scale < 1 for scale in result.var_scales)),
    )
    metrics.update(in_out_of_sample_sharpe(cfg, decisions, returns, metrics))
    for slot, stats in inputs.provider_stats.items():  # e.g. sentiment_texts, sentiment_precision
        metrics.update({f"{slot}_{key}": value for key, value in stats.items()})
    # signals.parquet shows the outcomes (the session's bar, forward_return) beside what was decided before it.
    signals_out = pd.concat([outcomes[keep], features[keep]], axis=1).assign(
        exposure=decisions.exposure[keep].to_numpy(), target=weights.to_numpy())
    extra_files: dict[str, pd.DataFrame] = {}
    if decisions.out_of_sample is not None and len(decisions.out_of_sample):
        signals_out = signals_out.join(decisions.out_of_sample, how="left")
        if "prediction" in decisions.out_of_sample:
            from reports.metrics import forecast_metrics

            predictions = signals_out[signals_out["prediction"].notna()]
            predictions = pd.DataFrame({
                "ticker": predictions.index.get_level_values("ticker"),
                "session": predictions.index.get_level_values("session"),
                "prediction": predictions["prediction"].to_numpy(),
                "realized": predictions["forward_return"].to_numpy(),
            })
            extra_files["predictions.csv"] = predictions
            metrics.update({f"oos_{k}": v for k, v in forecast_metrics(predictions).items()})
    if decisions.learned is not None and len(decisions.learned):
        name = "regime_map.csv" if "regime" in decisions.learned else "coefficients.csv"
        extra_files[name] = decisions.learned
    for name, described in decisions.described.items():  # e.g. topics.csv: each window's top words per topic
        extra_files[f"{name}.csv"] = described[["window_start", *[c for c in described if c != "window_start"]]]

    run_dir = Path(run_dir)
    stage = run_dir / ".incomplete"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        # every CSV as pandas' to_csv writes it (index=False), byte for byte, faster (engine._csv)
        extra_files = {"equity.csv": equity, "trades.csv": result.trades, "fills.csv": result.fills, **extra_files}
        for name, frame in extra_files.items():  # predictions.csv: a row per ticker-session out of sample
            write_csv(frame, stage / name)
        (stage / "config.yaml").write_text(config_yaml(cfg))
        if files != "light":  # the detail files (most of a vectorised run's time): no metric reads them
            # dictionary pages for the labels only: most float columns hardly repeat, and parquet fills a dictionary
            # page for each before falling back to plain values (half the write time at 500 tickers)
            labels = ["ticker", *[str(c) for c, kind in signals_out.dtypes.items() if kind.kind != "f"]]
            signals_out.to_parquet(stage / "signals.parquet", use_dictionary=labels)
            inputs.items[list(NEWS_FILE_COLUMNS) + [c for c in inputs.items if c not in NEWS_FILE_COLUMNS]].to_parquet(
                stage / "news.parquet", index=False)
            # event_study.csv (with the events provider on): the returns around each event type, over every session
            # of the data (signals.parquet of a learned rule holds only the sessions it traded); describes, never decides
            from reports.event_study import write_event_study

            write_event_study(stage, inputs.items, outcomes)
            with clock("decisions"):  # decisions.csv: each fill, what the rule read before that open, its news
                from reports.decisions import write_decisions

                rule, decided_from = make_rule(cfg.strategy), features
                if decisions.out_of_sample is not None:  # a learned rule also read its windows' provider columns
                    decided_from = features.join(decisions.out_of_sample.drop(columns="prediction", errors="ignore"))
                write_decisions(stage, rule.inputs(decided_from), rule.news_window(decided_from))
        if cfg.report.enabled:
            from reports.tearsheet import write_tearsheet

            with clock("report"):
                # the tear sheet reads metrics.json: written first, then again with the report's seconds
                (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
                write_tearsheet(stage, title=f"newsbt: {cfg.strategy.name} on {cfg.data.name}")
        metrics["stage_seconds"] = clock.rounded()
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for path in stage.iterdir():
            path.replace(run_dir / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    metrics["elapsed_seconds"] = round(time.perf_counter() - started, 2)
    metrics["run_dir"] = str(run_dir)
    return metrics


def summary_line(metrics: dict[str, Any]) -> str:
    """The short printed summary of a run."""
    def pct(key):
        value = metrics.get(key)
        return "n/a" if value is None else f"{100 * value:.2f}%"

    sharpe = metrics.get("sharpe")
    return (
        f"CAGR {pct('cagr')} | Sharpe {'n/a' if sharpe is None else f'{sharpe:.2f}'} | max drawdown "
        f"{pct('max_drawdown')} | VaR 95% {pct('var_95')} | trades {metrics.get('trades')} | "
        f"benchmark CAGR {pct('benchmark_cagr')} Sharpe "
        f"{'n/a' if metrics.get('benchmark_sharpe') is None else format(metrics['benchmark_sharpe'], '.2f')}"
    )


def linking_line(report: dict[str, Any]) -> str:
    """The printed line of ``data.news.link_tickers`` (``metrics.json`` ``news_linking``).

    >>> linking_line(metrics["news_linking"])  # 'ticker linking (fill-missing): 500 items considered, 120 linked ...'
    """
    methods = ", ".join(f"{method} {count:,}" for method, count in report["by_method"].items())
    return (f"ticker linking ({report['mode']}): {report['considered']:,} items considered, {report['linked']:,} "
            f"linked ({methods}), {report['unlinked']:,} unlinked; {report['rows_in']:,} news rows became "
            f"{report['rows_out']:,}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its INFO lines drown the run's own output
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, run_dir)
    except NewsbtError as error:
        discard_run_folder(run_dir)  # only what this run created: never a folder, or a file, that was there before
        report_and_exit(error)
    print(summary_line(metrics))
    news_line, news_warning = news_drop_report(metrics)
    print(news_line)
    if news_warning:
        print(f"newsbt: warning: {news_warning}", file=sys.stderr)
    linking = metrics.get("news_linking") or {}
    if linking.get("mode", "off") != "off":
        print(linking_line(linking))
    if "sentiment_texts" in metrics:
        print(f"texts: {metrics['sentiment_texts']} aligned, {metrics.get('sentiment_unique_texts')} distinct, "
              f"{metrics.get('sentiment_empty', 0)} empty, {metrics.get('sentiment_truncated', 0)} truncated, "
              f"{metrics.get('sentiment_undecodable', 0)} undecodable"
              + (f"; scored in {metrics['sentiment_precision']} on {metrics.get('sentiment_device')}"
                 if metrics.get("sentiment_precision") else ""))
    print(f"report: {run_dir / 'report.html'}" if cfg.report.enabled else f"run folder: {run_dir} (report.enabled=false)")
    runs_root = project_path(cfg.paths.runs)
    if runs_root.is_dir():
        from reports.index import write_index

        try:  # the index is a convenience: a failure to write it never fails the finished run
            print(f"index: {write_index(runs_root, project_path(cfg.paths.sweeps))}")
        except (NewsbtError, OSError) as error:
            print(f"newsbt: warning: runs index not written: {error}", file=sys.stderr)


class _OutputToAClosedPipe:
    """``sys.stdout`` or ``sys.stderr`` of the command: once its reader has gone (``python -m engine.run ... |
    head``), the stream's descriptor is pointed at /dev/null and the work goes on, its results written as usual,
    instead of a BrokenPipeError traceback at the next progress line and a sweep stopped half-way."""

    def __init__(self, stream):
        self._stream = stream

    def _quietly(self, action, *args):
        try:
            return action(*args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            return action(*args)  # the same output, to /dev/null now

    def write(self, text: str) -> int:
        return self._quietly(self._stream.write, text)

    def flush(self) -> None:
        self._quietly(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def cli(argv: list[str] | None = None) -> None:
    """``python -m engine.run [-m] key=value ...``: the whole config (every job of a sweep) is validated before
    Hydra creates any folder; a mistake prints one line ``newsbt: error: <key>: <what is wrong>``, exit status 2.

    >>> cli(["strategy=regression", "strategy.threshold=0.001"])
    """
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    with compositions_remembered():  # the preflight's composition is Hydra's too
        try:
            preflight(sys.argv[1:])
        except NewsbtError as error:
            report_and_exit(error)
        main()


def leave_process() -> None:
    """Flush logging and the output streams, then end this process at once (status 0), without tearing down each
    module and object it holds (half a second or more for a process holding a dataset's frames, numba's compiled
    code or torch). For a process whose work is all written: a sweep's worker (an exit handler registered first,
    so that every handler registered later has run) and the command (``exit_without_teardown``)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written to it anyway
            pass
    os._exit(0)


def exit_without_teardown() -> None:
    """End the command once its work is done and written: join its threads, run every exit handler (as a normal
    exit does: logging flushed, temporary files removed), then ``leave_process``."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    leave_process()


if __name__ == "__main__":
    sys.stdout, sys.stderr = _OutputToAClosedPipe(sys.stdout), _OutputToAClosedPipe(sys.stderr)
    cli()
    exit_without_teardown()
