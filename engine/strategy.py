"""The strategy base: a ``Rule`` turns session features into target exposures, learned only from the past.

A rule follows scikit-learn's contract: the constructor stores parameters, ``fit(features, label)`` learns
(state in attributes ending in ``_``) from sessions strictly before those it will decide, ``target(features)``
returns an exposure per (ticker, session) in [-1, 1] (NaN: keep the current position). ``features`` only ever
hold columns known before each session's open (``engine.features``); ``label`` is the next-session return
(``forward_return``) of the same rows, NaN where it was not yet realised when the rule was fitted.
``to_weights`` splits capital equally among the instruments with a non-zero exposure; the backtrader side
(``engine.backtest``) only reads the resulting weight line and trades it.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd


class Rule:
    """Base class of trading rules. ``learned`` rules are walked forward by the engine.

    >>> exposure = MyRule(threshold=0.1).fit(history, label).target(features)
    """

    name: str = "rule"
    learned: bool = False

    def fit(self, features: pd.DataFrame, label: pd.Series) -> "Rule":
        """Learn from past sessions' pre-open ``features`` and their ``label`` (the next-session return of each
        row, NaN where not yet realised); return self."""
        return self

    def target(self, features: pd.DataFrame) -> pd.Series:
        """Exposure per (ticker, session) row of ``features``: -1 short, 0 flat, 1 long, NaN hold."""
        raise NotImplementedError

    def prediction(self, features: pd.DataFrame) -> pd.Series | None:
        """A forecast of ``forward_return`` per row, for rules that make one (reported out of sample)."""
        return None

    def learned_summary(self) -> pd.DataFrame | None:
        """What the last ``fit`` learned, as a small frame saved with the run (e.g. the regime map)."""
        return None

    def inputs(self, features: pd.DataFrame) -> pd.DataFrame:
        """What the rule read to decide each row of ``features`` (same index), for the run's decisions.csv: the
        feature columns it uses (by default all of them), then any value it derived from them and compared
        with its threshold (e.g. the sentiment rule's ``sentiment_score``).

        >>> rule.inputs(features).loc[("AAPL", session)]  # sentiment 0.4, sentiment_score 0.1, ...
        """
        return features

    def news_window(self, features: pd.DataFrame) -> pd.DataFrame | None:
        """Which news fed each row's decision, for decisions.csv (same index as ``features``): ``since``, the
        first session whose news the row's inputs hold, and ``baseline``, the sentiment level the rule compared
        its news with (each headline's score counts as its difference from it; NaN: 0). None when the rule
        reads no news. By default a row's own session (its features hold the news aligned to it), baseline 0.

        >>> rule.news_window(features)["since"]
        """
        sessions = features.index.get_level_values("session")
        return pd.DataFrame({"since": sessions, "baseline": 0.0}, index=features.index)

    def params(self) -> dict[str, Any]:
        """The rule's parameters (constructor arguments)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}


def labelled_rows(features: pd.DataFrame, label: pd.Series) -> np.ndarray:
    """Boolean mask of the rows of ``features`` whose ``label`` is known; ``label`` must share their index.

    >>> known = labelled_rows(history, label)  # fit on history[known], label[known]
    """
    if not isinstance(label, pd.Series) or not label.index.equals(features.index):
        raise ValueError("the label must be a Series with the same (ticker, session) index as the features")
    return label.notna().to_numpy()


def threshold_exposure(score: pd.Series, threshold: float, allow_short: bool) -> pd.Series:
    """1 where ``score`` exceeds ``threshold``, -1 where it is below ``-threshold`` (when ``allow_short``),
    else 0 (NaN scores too).

    >>> threshold_exposure(predicted_return, 0.001, allow_short=True)
    """
    values = score.to_numpy(dtype="float64")
    exposure = np.where(values > threshold, 1.0, 0.0)
    if allow_short:
        exposure = np.where(values < -threshold, -1.0, exposure)
    return pd.Series(exposure, index=score.index, name="exposure")


def per_ticker(values: pd.Series, function: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """``values.groupby(level="ticker", sort=False).transform(function)``, the same numbers, for numeric values
    indexed by (ticker, session) with each ticker's rows together (the canonical order): ``function`` gets each ticker's
    values as a Series with a plain index, without pandas copying the (ticker, session) index for every group.
    Other orders go to pandas' own transform.

    >>> per_ticker(features["sentiment"], lambda s: s.rolling(5, min_periods=1).mean())
    """
    index = values.index
    codes = np.asarray(index.codes[index.names.index("ticker")]) if isinstance(index, pd.MultiIndex) else None
    starts = np.flatnonzero(np.diff(codes)) + 1 if codes is not None and len(codes) else None
    if starts is None or len(np.unique(codes)) != len(starts) + 1:
        return values.groupby(level="ticker", sort=False).transform(function)
    array = values.to_numpy()
    parts = [np.asarray(function(pd.Series(array[start:end], name=values.name)), dtype="float64")
             for start, end in zip([0, *starts], [*starts, len(array)])]
    return pd.Series(np.concatenate(parts), index=index, name=values.name)


def to_weights(exposure: pd.Series) -> pd.Series:
    """Portfolio weights from exposures: each session's capital is split equally among the instruments with a
    non-zero exposure (a weight is exposure / number active); NaN exposures stay NaN (hold).

    >>> to_weights(pd.Series([1, 1, 0], index=index))  # 0.5, 0.5, 0.0 on one session
    """
    sessions = exposure.index.get_level_values("session")
    active = exposure.fillna(0).ne(0).groupby(sessions).transform("sum").to_numpy()
    weights = exposure.to_numpy(dtype="float64") / np.where(active > 0, active, 1)
    return pd.Series(weights, index=exposure.index, name="weight")
