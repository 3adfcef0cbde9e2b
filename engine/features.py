"""Session features: the price grid joined with every signal provider's output, through the signal cache.

The result is one row per (ticker, session) — every session of every instrument, news or not — holding only
what was known before that session's open, plus the diagnostics ``open``, ``close`` and ``forward_return``
(see ``engine.align.session_grid``) that rules may use as training labels for past sessions only.
"""
from __future__ import annotations

import pandas as pd

from engine.align import session_grid
from engine.cache import SignalCache, fingerprint
from engine.schema import canonical_signals
from engine.signal import SignalProvider

# Columns that are not known before the session's open: never a feature of that session.
DIAGNOSTIC_COLUMNS = ("open", "close", "forward_return")


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

    return cache.get_or_compute(provider.name, key, compute)


def assemble_features(prices: pd.DataFrame, signal_frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Join signal frames onto the full (ticker, session) grid; counts become 0 where a session had no news.

    >>> features = assemble_features(dataset.prices, [sentiment_frame])
    """
    features = canonical_signals(session_grid(prices))
    for frame in signal_frames:
        features = features.join(canonical_signals(frame), how="left")
    for column in features.columns:
        if column.endswith("_count"):
            features[column] = features[column].fillna(0.0)
    return features
