"""Walk-forward learning: one scheme of windows shared by every learned part (LDA, KMeans, the rules).

For each window the learned parts are fitted on sessions strictly before ``test_start``, then decide the window's
sessions. Learners read only pre-open features (``engine.features``); a rule gets the label (``forward_return``,
from the outcomes frame) as a separate Series, masked unless the next open, which realises it, is also before
``test_start``; windowed signal providers never see it. Their outputs are cached per window
(``engine.providers.window_signals``), so a sweep over rule parameters never refits them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from engine.cache import SignalCache
from engine.config import WalkForward, check_section
from engine.errors import ConfigError
from engine.features import check_pre_open, join_signals
from engine.prefit import prefit_windows
from engine.progress import Progress, StageClock
from engine.schema import canonical_signals
from engine.strategy import Rule, to_weights


@dataclass(frozen=True)
class Window:
    """Sessions [train_start, test_start) train the models that decide sessions [test_start, test_end]."""

    index: int
    train_start: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def make_windows(sessions: pd.DatetimeIndex, train_sessions: int, step_sessions: int, mode: str) -> list[Window]:
    """Windows over the sorted unique ``sessions``: the first trains on ``train_sessions`` sessions, each
    decides the next ``step_sessions``; ``mode`` "expanding" keeps all history, "rolling" the last
    ``train_sessions``.

    >>> make_windows(sessions, train_sessions=500, step_sessions=63, mode="expanding")
    """
    check_section(WalkForward, {"train_sessions": train_sessions, "step_sessions": step_sessions, "mode": mode},
                  "walk_forward")
    sessions = pd.DatetimeIndex(sessions).unique().sort_values()
    if train_sessions >= len(sessions):
        raise ConfigError(
            f"walk_forward.train_sessions: {train_sessions} leaves nothing to test (the data has {len(sessions)} sessions)"
        )
    windows = []
    for number, start in enumerate(range(train_sessions, len(sessions), step_sessions)):
        first = 0 if mode == "expanding" else start - train_sessions
        end = min(start + step_sessions, len(sessions)) - 1
        windows.append(Window(number, sessions[first], sessions[start], sessions[end]))
    return windows


def sessions_of(frame: pd.DataFrame) -> pd.DatetimeIndex:
    """The session level of a (ticker, session) indexed frame."""
    return pd.DatetimeIndex(frame.index.get_level_values("session"))


def past_rows(features: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The rows a learner may see for ``window``: sessions in [train_start, test_start).

    >>> history = past_rows(features, window)
    """
    sessions = sessions_of(features)
    return features[(sessions >= window.train_start) & (sessions < window.test_start)]


def training_rows(features: pd.DataFrame, label: pd.Series, window: Window) -> tuple[pd.DataFrame, pd.Series]:
    """What a rule is fitted on for ``window``: ``past_rows`` of the (pre-open) ``features``, and ``label``
    (indexed like ``features``) on the same rows, NaN where it is realised at or after ``test_start``'s open.

    >>> history, history_label = training_rows(features, outcomes["forward_return"], window)
    """
    history = past_rows(features, window)
    next_session = pd.Series(sessions_of(history), index=history.index).groupby(level="ticker").shift(-1)
    realised = (next_session.notna() & (next_session < window.test_start)).to_numpy()
    known = label.reindex(history.index).astype("float64")
    return history, known.where(realised).rename("label")


def window_rows(features: pd.DataFrame, window: Window) -> pd.DataFrame:
    """Rows from ``train_start`` through ``test_end``: what a window's fitted models transform."""
    sessions = sessions_of(features)
    return features[(sessions >= window.train_start) & (sessions <= window.test_end)]


@dataclass
class WalkForwardResult:
    """Out-of-sample exposures and what each window learned.

    ``exposure``: per (ticker, session), NaN before the first test session; ``out_of_sample``: the features
    each window's models produced for its own test sessions (topics, regime, prediction); ``learned``: one
    frame per window from ``rule.learned_summary()`` (e.g. the regime map), with ``window_start``; ``described``:
    each windowed provider's ``describe()`` of every fit (e.g. topic words), with ``window_start``."""

    exposure: pd.Series
    out_of_sample: pd.DataFrame
    learned: pd.DataFrame
    windows: list[Window] = field(default_factory=list)
    in_sample_sharpe: float | None = None  # mean over windows of the fitted rule's Sharpe on its own training rows
    described: dict[str, pd.DataFrame] = field(default_factory=dict)  # provider name -> describe() per window


def window_frame(features: pd.DataFrame, window: Window, providers: Sequence = (), news: pd.DataFrame | None = None,
                 cache: SignalCache | None = None, clock: StageClock | None = None
                 ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The rows a window's rule is fitted on and decides (``window_rows``), with the columns of the windowed
    ``providers`` (``engine.providers.Slot``, in plan order) joined on, each fitted on the window's past only;
    and what each fit ``describe()``s, by provider name.

    >>> frame, described = window_frame(features, window, plan.windowed, aligned, cache)
    """
    from engine.providers import window_signals

    frame = window_rows(features, window)
    described = {}
    for slot in providers:
        started = time.perf_counter()
        output, description = window_signals(slot, window, frame, news, cache)
        frame = join_signals(frame, output, f"{slot.key} (window {window.index})")
        if description is not None:
            described[slot.provider.name] = description
        if clock is not None:
            clock.add(slot.slot, time.perf_counter() - started)
    return frame, described


def walk_forward(
    features: pd.DataFrame,
    label: pd.Series,
    windows: list[Window],
    rule_factory: Callable[[], Rule],
    providers: Sequence = (),
    news: pd.DataFrame | None = None,
    progress: bool = True,
    cache: SignalCache | None = None,
    clock: StageClock | None = None,
) -> WalkForwardResult:
    """Fit and apply the learned stack window by window (see the module docstring); return the decisions.
    ``features`` hold only pre-open columns (a diagnostic column is refused); ``label`` is the next-session
    return per (ticker, session), e.g. ``outcomes["forward_return"]``; ``providers`` are the plan's windowed
    providers (``engine.providers.SignalPlan.windowed``), fitted per window on its past (news readers on
    ``news``) before the rule; ``clock`` adds each provider's seconds under its slot.

    >>> result = walk_forward(features, outcomes["forward_return"], windows, lambda: RegressionRule(**params))
    """
    features = canonical_signals(check_pre_open(features, "walk-forward features"))
    label = canonical_signals(label.rename("label").to_frame())["label"].reindex(features.index)
    exposures, out_of_sample, learned, in_sample_sharpes = [], [], [], []
    described: dict[str, list[pd.DataFrame]] = {}
    prefit_windows(providers, windows, features, news, cache, clock=clock, progress=progress)  # cold fits, in parallel
    with Progress(len(windows), "walk-forward", unit="windows", enabled=progress) as shown:
        for window in windows:
            frame, descriptions = window_frame(features, window, providers, news, cache, clock)
            for name, description in descriptions.items():
                described.setdefault(name, []).append(
                    description.assign(window_start=window.test_start.date().isoformat()))
            history, history_label = training_rows(frame, label, window)
            rule = rule_factory().fit(history, history_label)
            in_sample_sharpes.append(in_sample_sharpe(rule, history, history_label))
            in_test = sessions_of(frame) >= window.test_start
            exposures.append(rule.target(frame)[in_test])
            produced = frame.loc[in_test, [c for c in frame.columns if c not in features.columns]]
            prediction = rule.prediction(frame)
            if prediction is not None:
                produced = produced.assign(prediction=prediction[in_test].to_numpy())
            out_of_sample.append(produced)
            summary = rule.learned_summary()
            if summary is not None:
                learned.append(summary.assign(window_start=window.test_start.date().isoformat()))
            shown.update()
    exposure = pd.concat(exposures).reindex(features.index)
    return WalkForwardResult(
        exposure=exposure,
        out_of_sample=pd.concat(out_of_sample) if out_of_sample else pd.DataFrame(index=features.index[:0]),
        learned=pd.concat(learned, ignore_index=True) if learned else pd.DataFrame(),
        windows=windows,
        in_sample_sharpe=float(np.nanmean(in_sample_sharpes)) if np.isfinite(in_sample_sharpes).any() else None,
        described={name: pd.concat(frames, ignore_index=True) for name, frames in described.items()},
    )


def in_sample_sharpe(rule: Rule, history: pd.DataFrame, label: pd.Series, periods_per_year: int = 252) -> float:
    """Annualised Sharpe of the fitted rule's own decisions on its training rows whose ``label`` is known (gross
    of costs): the in-sample figure that out-of-sample results are compared with."""
    known = label.reindex(history.index).notna().to_numpy()
    if not known.any():
        return float("nan")
    labelled = history[known]
    weights = to_weights(rule.target(labelled).fillna(0.0))
    earned = weights.to_numpy() * label.reindex(labelled.index).to_numpy(dtype="float64")
    daily = pd.Series(earned, index=labelled.index).groupby(level="session").sum()
    spread = daily.std()
    return float(daily.mean() / spread * np.sqrt(periods_per_year)) if spread > 0 else float("nan")
