"""``python -m engine.run``: the one place that wires data, signals, a rule, the backtest and the report.

A Hydra app; every config key is a ``key=value`` override (see conf/). Each run writes its own folder with
report.html, metrics.json, trades.csv, fills.csv, equity.csv, signals.parquet and the resolved config.yaml.
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
import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from engine.align import align_news, news_accounting, news_drop_report
from engine.backtest import run_backtest
from engine.cache import SignalCache, project_path
from engine.config import discard_run_folder, preflight, report_and_exit, strategy_parameters, validate_config
from engine.datasets import load_dataset
from engine.errors import ConfigError, NewsbtError
from engine.features import assemble_features, provider_signals
from engine.signal import SignalProvider
from engine.risk import apply_risk, check_risk
from engine.strategy import Rule, to_weights
from engine.walkforward import make_windows, walk_forward, windowed_provider

log = logging.getLogger("newsbt")


def find_folder(relative: str, roots: list[Path], key: str) -> Path:
    """The first ``root/relative`` folder that exists, or a ConfigError naming ``key`` and the roots tried."""
    for root in roots:
        if (root / relative).is_dir():
            return root / relative
    raise ConfigError(f"{key}: folder {relative!r} not found under any data root ({', '.join(map(str, roots))})")


def make_sentiment_provider(cfg: DictConfig, roots: list[Path]) -> SignalProvider:
    """The sentiment provider chosen by ``signals.sentiment`` (trains the transformer model on first use)."""
    kind = cfg.signals.sentiment
    if kind == "lexicon":
        from signals.lexicon import LexiconSentiment

        return LexiconSentiment(find_folder(cfg.signals.lexicon.wordlists, roots, "signals.lexicon.wordlists"))
    if kind == "transformer":
        from signals.finetune import ensure_model
        from signals.transformer import TransformerSentiment

        settings = cfg.signals.transformer
        training = settings.training
        model_dir = ensure_model(project_path(settings.model_dir), base=settings.base_model, data_roots=roots,
                                 recipe=training.recipe, precision=training.precision, device=training.device)
        return TransformerSentiment(
            model_dir=model_dir,
            cache_root=project_path(cfg.paths.cache),
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            precision=settings.precision,
            threads=settings.threads,
            device=settings.device,
        )
    raise ConfigError(f"signals.sentiment: unknown provider {kind!r} (known: transformer, lexicon)")


def make_rule(strategy_cfg: DictConfig) -> Rule:
    """Instantiate the rule named by ``strategy._target_`` with the other strategy keys as parameters, checked
    against the rule's constructor (``engine.config``)."""
    rule_class, params = strategy_parameters(OmegaConf.to_container(strategy_cfg, resolve=True))
    return rule_class(**params)


def backtest_bars(prices: pd.DataFrame, weights: pd.Series) -> pd.DataFrame:
    """Price bars indexed by (ticker, session) with the ``weight`` line."""
    bars = prices.rename(columns={"timestamp": "session"}).set_index(["ticker", "session"])
    bars.index = weights.index  # both are the sorted (ticker, session) grid
    return bars.assign(weight=weights.to_numpy())


@dataclass
class Decisions:
    """What the rule decided: exposures, the risk-adjusted weights and the learned parts' diagnostics."""

    exposure: pd.Series
    weights: pd.Series
    first_session: pd.Timestamp | None = None  # first session decided out of sample (learned rules)
    out_of_sample: pd.DataFrame | None = None
    learned: pd.DataFrame | None = None
    topic_words: pd.DataFrame | None = None
    in_sample_sharpe: float | None = None


@dataclass
class Inputs:
    """Everything a rule decides from: the dataset, its aligned news, the session features, the cache; and the
    outcomes (``DIAGNOSTIC_COLUMNS``, not known before each open) that only labels and reports read."""

    dataset: Any
    aligned: pd.DataFrame
    provider: SignalProvider
    features: pd.DataFrame  # only columns known before each session's open
    outcomes: pd.DataFrame  # open high low close volume forward_return, same index as features
    cache: SignalCache
    sentiment_stats: dict  # the provider's text counts when it scored them (kept in the signal cache)


@lru_cache(maxsize=4)
def _aligned_dataset(data_json: str, roots: tuple[Path, ...], latency_minutes: float):
    """Load and align once per process: the runs of a sweep in one worker share their data config."""
    dataset = load_dataset(json.loads(data_json), list(roots))
    return dataset, align_news(dataset.news, dataset.prices, latency_minutes)


def build_inputs(cfg: DictConfig) -> Inputs:
    """Load the data, align the news and compute (or read from the cache) the sentiment features."""
    roots = [project_path(root) for root in cfg.paths.roots]
    cache = SignalCache(project_path(cfg.paths.cache))
    data_json = json.dumps(OmegaConf.to_container(cfg.data, resolve=False), sort_keys=True)
    dataset, aligned = _aligned_dataset(data_json, tuple(roots), cfg.latency_minutes)
    provider = make_sentiment_provider(cfg, roots)
    sentiment = provider_signals(provider, aligned, cache)
    stats = dict(sentiment.attrs.get("stats", {}))
    features, outcomes = assemble_features(dataset.prices, [sentiment])
    return Inputs(dataset, aligned, provider, features, outcomes, cache, stats)


def make_walk_forward(cfg: DictConfig, features: pd.DataFrame) -> list:
    """The walk-forward windows of ``walk_forward.*`` over the feature sessions."""
    walk = cfg.walk_forward
    return make_windows(features.index.get_level_values("session"), walk.train_sessions, walk.step_sessions, walk.mode)


def topic_frames(cfg: DictConfig, aligned: pd.DataFrame, windows: list, cache: SignalCache):
    """Per window, the topic mixtures of an LDA fitted before it (cached), and the top words of each fit."""
    from signals.topics import TopicModel

    params = {k: v for k, v in OmegaConf.to_container(cfg.signals.topics, resolve=True).items() if k != "enabled"}
    fitted = windowed_provider(lambda: TopicModel(**params), aligned, windows, cache)
    words = pd.DataFrame(
        [{"window_start": window.test_start.date().isoformat(), "topic": int(topic),
          "words": text if isinstance(text, str) else " ".join(text)}
         for window in windows for topic, text in fitted[window.index][1].get("top_words", {}).items()]
    )
    return {index: frame for index, (frame, _) in fitted.items()}, words


def prepare_signals(cfg: DictConfig) -> None:
    """Compute and cache every signal a run of ``cfg`` reads (sentiment; topics per window for learned rules),
    so that the runs of a sweep sharing this signal config only read the cache."""
    inputs = build_inputs(cfg)
    learned = getattr(hydra.utils.get_class(cfg.strategy._target_), "learned", False)
    if learned and cfg.signals.topics.enabled:
        topic_frames(cfg, inputs.aligned, make_walk_forward(cfg, inputs.features), inputs.cache)


def decide(cfg: DictConfig, inputs: Inputs) -> Decisions:
    """Run the configured rule over the (pre-open) features: directly, or walked forward with topics and
    regimes, the label coming from the outcomes frame.

    >>> decisions = decide(cfg, build_inputs(cfg))
    """
    features = inputs.features
    rule = make_rule(cfg.strategy)
    risk = check_risk(OmegaConf.to_container(cfg.risk, resolve=True))
    if not rule.learned:
        exposure = rule.target(features)
        return Decisions(exposure, apply_risk(to_weights(exposure), features, risk))
    windows = make_walk_forward(cfg, features)
    provider_frames, topic_words = None, None
    if cfg.signals.topics.enabled:
        provider_frames, topic_words = topic_frames(cfg, inputs.aligned, windows, inputs.cache)
    regime_factory = None
    if cfg.signals.regimes.enabled:
        from signals.regimes import RegimeModel

        regime_params = {k: v for k, v in OmegaConf.to_container(cfg.signals.regimes, resolve=True).items() if k != "enabled"}
        regime_factory = lambda: RegimeModel(**regime_params)  # noqa: E731
    result = walk_forward(features, inputs.outcomes["forward_return"], windows, lambda: make_rule(cfg.strategy),
                          provider_frames, regime_factory, cache=inputs.cache)
    weights = apply_risk(to_weights(result.exposure), features, risk)
    return Decisions(result.exposure, weights, windows[0].test_start, result.out_of_sample, result.learned,
                     topic_words, result.in_sample_sharpe)


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


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one backtest described by ``cfg`` and write its outputs to ``run_dir``; return the metrics.

    >>> metrics = run(cfg, Path("runs/example"))
    """
    from reports.metrics import performance_metrics

    started = time.perf_counter()
    validate_config(cfg)
    inputs = build_inputs(cfg)
    dataset, aligned, features, outcomes = inputs.dataset, inputs.aligned, inputs.features, inputs.outcomes
    decisions = decide(cfg, inputs)

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
    result = run_backtest(backtest_bars(prices, weights), strategy_broker, risk)
    from strategies.buy_and_hold import BuyAndHold

    hold = to_weights(BuyAndHold().target(features[keep]))
    benchmark = run_backtest(backtest_bars(prices, hold), dict(broker, rebalance_band=math.inf))

    equity = pd.DataFrame({"date": result.book["date"], "value": result.book["value"]})
    equity["returns"] = equity["value"].pct_change().fillna(equity["value"].iloc[0] / broker["cash"] - 1)
    equity["benchmark_value"] = benchmark.book["value"].to_numpy()
    equity["benchmark_returns"] = equity["benchmark_value"].pct_change().fillna(
        equity["benchmark_value"].iloc[0] / broker["cash"] - 1)
    returns = pd.Series(equity["returns"].to_numpy(), index=pd.DatetimeIndex(equity["date"]))
    benchmark_returns = pd.Series(equity["benchmark_returns"].to_numpy(), index=returns.index)
    metrics = performance_metrics(returns, benchmark=benchmark_returns, trades=len(result.trades))
    metrics.update(
        final_value=float(equity["value"].iloc[-1]),
        sessions=int(len(equity)),
        **news_accounting(dataset, cfg.latency_minutes),  # news_items, news_aligned, news_dropped (by reason)
        fills=int(len(result.fills)),
        stop_fills=int((result.fills["kind"] == "stop").sum()),
        rejected_orders=int(result.rejected_orders),
        sessions_var_limited=int(sum(scale < 1 for scale in result.var_scales)),
    )
    metrics.update(in_out_of_sample_sharpe(cfg, decisions, returns, metrics))
    metrics.update({f"sentiment_{key}": value for key, value in inputs.sentiment_stats.items()})
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
    if decisions.topic_words is not None and len(decisions.topic_words):
        extra_files["topics.csv"] = decisions.topic_words

    run_dir = Path(run_dir)
    stage = run_dir / ".incomplete"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        equity.to_csv(stage / "equity.csv", index=False)
        result.trades.to_csv(stage / "trades.csv", index=False)
        result.fills.to_csv(stage / "fills.csv", index=False)
        for name, frame in extra_files.items():
            frame.to_csv(stage / name, index=False)
        signals_out.to_parquet(stage / "signals.parquet")
        (stage / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if cfg.report.enabled:
            from reports.tearsheet import write_tearsheet

            write_tearsheet(stage, title=f"newsbt: {cfg.strategy.name} on {cfg.data.name}")
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
    if "sentiment_texts" in metrics:
        print(f"texts: {metrics['sentiment_texts']} aligned, {metrics.get('sentiment_unique_texts')} distinct, "
              f"{metrics.get('sentiment_empty', 0)} empty, {metrics.get('sentiment_truncated', 0)} truncated, "
              f"{metrics.get('sentiment_undecodable', 0)} undecodable"
              + (f"; scored in {metrics['sentiment_precision']} on {metrics.get('sentiment_device')}"
                 if metrics.get("sentiment_precision") else ""))
    print(f"report: {run_dir / 'report.html'}")


def cli(argv: list[str] | None = None) -> None:
    """``python -m engine.run [-m] key=value ...``: the whole config (every job of a sweep) is validated before
    Hydra creates any folder; a mistake prints one line ``newsbt: error: <key>: <what is wrong>``, exit status 2.

    >>> cli(["strategy=regression", "strategy.threshold=0.001"])
    """
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        preflight(sys.argv[1:])
    except NewsbtError as error:
        report_and_exit(error)
    main()


if __name__ == "__main__":
    cli()
