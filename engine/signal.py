"""The ``SignalProvider`` contract that every signal in ``signals/`` follows.

Modelled on scikit-learn's estimator: the constructor only stores parameters, ``fit`` learns from the past
(state ends in ``_``), ``transform`` applies. Providers receive news already aligned to sessions by
``engine.align`` (a ``session`` column: the first session whose decision may use the item), so a provider
cannot see an item earlier than the alignment allows.
"""
from __future__ import annotations

from typing import Any

import pandas as pd


class SignalProvider:
    """Base class: turns aligned news into per-(ticker, session) signal columns.

    Subclasses set ``name`` and ``columns``, store their config in ``__init__`` and implement ``transform``;
    learned providers also implement ``fit``. ``params()`` returns what identifies the output for the cache.

    >>> frame = provider.fit(aligned_news_before_window).transform(aligned_news_in_window)
    """

    name: str = "signal"
    columns: tuple[str, ...] = ()

    def fit(self, news: pd.DataFrame) -> "SignalProvider":
        """Learn from ``news`` (aligned, all published before the sessions to be transformed); return self."""
        return self

    def transform(self, news: pd.DataFrame) -> pd.DataFrame:
        """Return a signals frame indexed by (ticker, session) with ``self.columns``, one row per session
        that has at least one news item."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The provider's configuration, as it keys the cache (everything that changes the output)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}
