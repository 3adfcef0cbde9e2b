"""The ``SignalProvider`` contract that every signal in ``signals/`` follows.

Modelled on scikit-learn's estimator: the constructor only stores parameters, ``fit`` learns from the past
(state ends in ``_``), ``transform`` applies. A provider declares what it ``needs`` (aligned news, or session
feature columns), the columns it ``produces`` and whether it is ``learned`` (fitted walk-forward, on training
windows only); ``engine.providers`` builds each one from its config's ``_target_``, orders them by those
declarations and caches each output. News arrive already aligned to sessions by ``engine.align`` (a ``session``
column: the first session whose decision may use the item), so a provider cannot see an item earlier than the
alignment allows; session features hold only columns known before each open (``engine.features``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

NEWS = "news"  # in ``needs``: the provider reads aligned news items rather than session features


@dataclass(frozen=True)
class ProviderContext:
    """What the engine hands a provider whose constructor takes a ``context`` parameter (never a config key):
    ``key``, its config path (``signals.sentiment``: errors name keys under it), the data roots and the cache
    folder, both resolved.

    >>> LexiconSentiment("loughran-mcdonald-wordlists", ProviderContext("signals.sentiment", (root,), cache))
    """

    key: str
    data_roots: tuple[Path, ...]
    cache_root: Path

    def find_folder(self, relative: str, key: str) -> Path:
        """The first ``root/relative`` folder of the data roots; a ConfigError naming ``self.key``.``key`` and
        the roots tried.

        >>> context.find_folder("loughran-mcdonald-wordlists", "wordlists")
        """
        from engine.errors import ConfigError

        for root in self.data_roots:
            if (root / relative).is_dir():
                return root / relative
        raise ConfigError(f"{self.key}.{key}: folder {relative!r} not found under any data root "
                          f"({', '.join(map(str, self.data_roots))})")


class SignalProvider:
    """Base class: turns aligned news (or earlier session features) into per-(ticker, session) signal columns.

    Declarations the engine reads:

    - ``needs``: ``(NEWS,)`` (the default) to read aligned news items (``timestamp ticker text source session``),
      or column names / ``prefix*`` patterns of session features (price features and other providers' columns)
      to read those. The engine runs providers after the ones whose columns they need; a cycle is a ConfigError.
    - ``produces`` (the ``columns`` attribute): the float columns ``transform`` returns, known at construction.
    - ``learned``: fitted per walk-forward window on the window's training rows (or news) only, then applied
      to the window; a provider that is not learned is computed once over all the data. Learned providers
      (and those needing their columns) feed learned rules, which are the ones walked forward.
    - ``item_columns``: columns with a value per news item (``item_scores``), kept in the run's ``news.parquet``:
      produced columns (each item's own value, the default ``item_scores``), or, where ``item_scores`` is
      overridden, other per-item values (e.g. a label: the event type of each item).
    - ``item_needs`` (news readers): other providers' ``item_columns`` it reads beside each item (e.g. each
      item's ``sentiment``): the engine joins them onto the aligned news it hands over and runs this provider
      after theirs. Per-item values exist for providers computed once over all the data, so a provider with
      ``item_needs`` may not be learned.
    - ``reads_sessions`` (news readers): True to be called as ``transform(news, sessions=index)``, ``index``
      the (ticker, session) index of every session of the instruments (the price grid of the data transformed:
      all of it, or a walk-forward window's rows), e.g. to count sessions without news.

    Subclasses set ``name`` (the cache's name for their output) and those declarations, store their config in
    ``__init__`` and implement ``transform``; learned providers also implement ``fit``. ``params()`` returns
    what identifies the output for the cache.

    >>> frame = provider.fit(aligned_news_before_window).transform(aligned_news_in_window)
    """

    name: str = "signal"
    needs: tuple[str, ...] = (NEWS,)
    columns: tuple[str, ...] = ()
    learned: bool = False
    item_columns: tuple[str, ...] = ()
    item_needs: tuple[str, ...] = ()
    reads_sessions: bool = False

    @property
    def produces(self) -> tuple[str, ...]:
        """The columns ``transform`` returns (``columns``)."""
        return tuple(self.columns)

    @property
    def reads_news(self) -> bool:
        """True when the provider reads aligned news items, False when it reads session features."""
        return NEWS in self.needs

    def fit(self, inputs: pd.DataFrame) -> "SignalProvider":
        """Learn from ``inputs`` (aligned news, or session feature rows, all before the sessions to be
        transformed); return self."""
        return self

    def transform(self, inputs: pd.DataFrame) -> pd.DataFrame | pd.Series:
        """Return a signals frame indexed by (ticker, session) with the ``produces`` columns (a Series for a
        single column, named by it): from news, one row per session that has at least one item (or per session
        of ``sessions``, for a provider that ``reads_sessions``); from features, one row per row of ``inputs``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The provider's configuration, as it keys the cache (everything that changes the output; by default its
        public attributes except ``context``, which says where files are, not what they hold)."""
        return {k: v for k, v in vars(self).items()
                if not k.endswith("_") and not k.startswith("_") and k != "context"}

    def cached_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """This run's counts when it read the provider's output from the cache: ``stats`` are the counts of the run
        that computed it. By default the same (counts of the data, such as texts read); a provider whose counts
        also say what the computation did (texts scored, seconds spent) says here what reading them did."""
        return dict(stats)

    def describe(self) -> pd.DataFrame | None:
        """What a fitted learned provider shows in the run folder (``<name>.csv``, one block per walk-forward
        window), e.g. each topic's top words; None for nothing."""
        return None

    def item_scores(self, news: pd.DataFrame) -> pd.DataFrame:
        """The ``item_columns`` of each row of ``news`` (same index; NaN where the item has none): by default
        ``transform`` with every item alone in its (ticker, session), where a per-session mean is the item's
        own value. Override when that is not what a column means.

        >>> provider.item_scores(aligned)["sentiment"]
        """
        columns = list(self.item_columns)
        if not columns or news.empty:
            return pd.DataFrame({column: pd.Series(float("nan"), index=news.index) for column in columns})
        alone = news.assign(ticker=[str(number) for number in range(len(news))])
        frame = self.transform(alone)
        frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
        values = frame.reset_index(level="session", drop=True)[columns]
        values = values.reindex(alone["ticker"].to_numpy())
        values.index = news.index
        return values.astype("float64")
