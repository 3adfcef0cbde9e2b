"""Session features: the price grid joined with every signal provider's output, through the signal cache.

``assemble_features`` returns two frames with one row per (ticker, session) — every session of every instrument,
news or not. ``features`` holds only what was known before that session's open: it is all a rule, a regime model
or any other learner ever reads. ``outcomes`` holds ``DIAGNOSTIC_COLUMNS`` (the session's bar and
``forward_return``, see ``engine.align.session_grid``) for reports, and for the walk-forward, which hands
learners ``forward_return`` as a masked training label. ``check_feature_patterns`` refuses a config that names
a diagnostic as a feature; ``resolve_feature_columns`` turns feature patterns into column names.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import pandas as pd

from engine.align import DIAGNOSTIC_COLUMNS, session_grid
from engine.cache import SignalCache, fingerprint
from engine.errors import ConfigError, DataError
from engine.schema import canonical_signals
from engine.signal import SignalProvider

__all__ = ["DIAGNOSTIC_COLUMNS", "SessionFrames", "assemble_features", "check_feature_patterns", "check_pre_open",
           "feature_pattern_problem", "join_signals", "pattern_matches", "provider_signals", "resolve_feature_columns"]


class SessionFrames(NamedTuple):
    """``features`` (known before each session's open) and ``outcomes`` (``DIAGNOSTIC_COLUMNS``), same index."""

    features: pd.DataFrame
    outcomes: pd.DataFrame


def provider_signals(provider: SignalProvider, aligned: pd.DataFrame, cache: SignalCache) -> pd.DataFrame:
    """The provider's signals for ``aligned`` news, computed once per (provider config, news) and cached.

    >>> frame = provider_signals(LexiconSentiment(folder), aligned, SignalCache("data/cache"))
    """
    key = {"provider": provider.name, "params": provider.params(),
           "news": fingerprint(aligned[["ticker", "session", "text"]])}
    def compute() -> pd.DataFrame:
        frame = provider.transform(aligned)
        # The provider's counts (texts scored, empty, truncated...) travel with the cached frame.
        frame.attrs = {"stats": dict(getattr(provider, "stats_", {}) or {})}
        return frame

    return cached_output(provider, cache, key, compute)


def cached_output(provider: SignalProvider, cache: SignalCache, key: dict[str, Any],
                  compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``cache.get_or_compute(provider.name, key, compute)``, whose ``stats`` attrs are this run's: the counts of
    the computation when it ran here, else ``provider.cached_stats`` of them (a run that read the frame scored
    nothing and spent no time on it).

    >>> frame = cached_output(provider, cache, key, compute); frame.attrs["stats"]
    """
    computed = []

    def computing() -> pd.DataFrame:
        computed.append(True)
        return compute()

    frame = cache.get_or_compute(provider.name, key, computing)
    if not computed:  # a frame read for this caller (a kept one is handed out as a copy, its attrs with it)
        frame.attrs = {"stats": provider.cached_stats(dict(frame.attrs.get("stats", {})))}
    return frame


def check_pre_open(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """Return ``frame`` if none of its columns is a diagnostic (not known before the open), else raise.

    >>> check_pre_open(topic_frame, "topics signals")
    """
    leaked = [str(c) for c in frame.columns if c in DIAGNOSTIC_COLUMNS]
    if leaked:
        raise DataError(f"{what}: column {leaked[0]!r} is not known before the session's open "
                        f"(diagnostic columns: {', '.join(DIAGNOSTIC_COLUMNS)}); it may not sit beside the features")
    return frame


def assemble_features(prices: pd.DataFrame, signal_frames: list[pd.DataFrame]) -> SessionFrames:
    """Join signal frames onto the full (ticker, session) grid of pre-open features (counts become 0 where a
    session had no news); the diagnostics come back apart, as ``outcomes``.

    >>> features, outcomes = assemble_features(dataset.prices, [sentiment_frame])
    """
    grid = session_grid(prices)
    features = canonical_signals(grid.features)
    for number, frame in enumerate(signal_frames):
        features = join_signals(features, frame, f"signal frame {number}")
    return SessionFrames(features, canonical_signals(grid.outcomes))


def join_signals(features: pd.DataFrame, frame: pd.DataFrame | pd.Series, what: str) -> pd.DataFrame:
    """``features`` with a provider's signal columns joined on (ticker, session); a count column (``*_count``)
    is 0 where the provider had no row (no news that session). A diagnostic column is refused (``what`` names
    the frame), and so is a column ``features`` already has.

    >>> features = join_signals(features, topic_frame, "signals.topics")
    """
    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    check_pre_open(frame, what)
    clash = [str(c) for c in frame.columns if c in features.columns]
    if clash:
        raise DataError(f"{what}: column {clash[0]!r} is already a feature; two signals may not share a column name")
    # canonical_signals keeps an index already in canonical form (its levels checked, no row rebuilt)
    joined = features.join(canonical_signals(frame), how="left")
    for column in frame.columns:
        if str(column).endswith("_count"):
            joined[column] = joined[column].fillna(0.0)
    return joined


def _diagnostic_text(names: list[str], pattern: str | None = None) -> str:
    what = ", ".join(map(repr, names))
    said = what if pattern is None else f"{pattern!r} matches only {what}, which"
    return (f"{said} {'is' if pattern is not None or len(names) == 1 else 'are'} not known before the session's "
            f"open (diagnostic columns: {', '.join(DIAGNOSTIC_COLUMNS)})")


def feature_pattern_problem(patterns) -> str | None:
    """What is wrong with a config list of feature patterns (exact names, or prefixes ending in ``*``), as a
    message without its key, or None: not a non-empty list, a malformed pattern, a diagnostic named outright.

    >>> feature_pattern_problem(["sentiment", "close"])  # "'close' is not known before the session's open (...)"
    """
    if isinstance(patterns, str) or not hasattr(patterns, "__iter__"):
        return f"must be a non-empty list of column names or prefix* patterns, got {patterns!r}"
    patterns = [str(pattern) for pattern in patterns]
    if not patterns:
        return "must be a non-empty list of column names or prefix* patterns, got []"
    for pattern in patterns:
        if pattern in DIAGNOSTIC_COLUMNS:
            return _diagnostic_text([pattern])
        if not pattern or "*" in pattern[:-1]:
            return f"{pattern!r} is not a column name or prefix* pattern"
    return None


def check_feature_patterns(patterns, key: str) -> list[str]:
    """Validate a config list of feature patterns (exact names, or prefixes ending in ``*``) before any work;
    return them as strings. A diagnostic column named outright is a ConfigError naming ``key`` and the column.

    >>> check_feature_patterns(cfg.strategy.features, "strategy.features")
    """
    problem = feature_pattern_problem(patterns)
    if problem is not None:
        raise ConfigError(f"{key}: {problem}")
    return [str(pattern) for pattern in patterns]


def pattern_matches(pattern: str, column: str) -> bool:
    """True when feature ``pattern`` (a name, or ``prefix*``) selects ``column`` (diagnostics never).

    >>> pattern_matches("topic_*", "topic_3")
    True
    """
    if column in DIAGNOSTIC_COLUMNS:
        return False
    return column.startswith(pattern[:-1]) if pattern.endswith("*") else column == pattern


def _natural_key(name: str) -> list:
    """Sort key that puts topic_2 before topic_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def resolve_feature_columns(patterns, columns, key: str) -> list[str]:
    """The pre-open columns among ``columns`` that ``patterns`` select: exact names, and ``prefix*`` entries
    expanding to every column starting with ``prefix`` (natural order: topic_2 before topic_10; ``*`` is every
    feature); each name once, in pattern order. Diagnostic columns are never selected: a pattern that names or
    only matches diagnostics is a ConfigError naming ``key``, and so is one that matches nothing.

    >>> resolve_feature_columns(["topic_*", "volatility_20"], features.columns, "signals.regimes.features")
    """
    patterns = check_feature_patterns(patterns, key)
    names = [str(c) for c in columns if c not in DIAGNOSTIC_COLUMNS]
    resolved: list[str] = []
    for pattern in patterns:
        if pattern.endswith("*"):
            prefix = pattern[:-1]
            matches = sorted((c for c in names if pattern_matches(pattern, c)), key=_natural_key)
            diagnostics = [c for c in DIAGNOSTIC_COLUMNS if c.startswith(prefix)]
            if not matches and diagnostics:
                raise ConfigError(f"{key}: {_diagnostic_text(diagnostics, pattern)}")
            if not matches:
                raise ConfigError(f"{key}: no feature column matches {pattern!r} (features: {', '.join(names) or 'none'})")
        elif pattern in names:
            matches = [pattern]
        else:
            raise ConfigError(f"{key}: {pattern!r} is not a feature column (features: {', '.join(names) or 'none'})")
        resolved.extend(m for m in matches if m not in resolved)
    return resolved
