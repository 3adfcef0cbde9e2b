"""Regression rule: a linear model of the next session's return on the session features, learned walk-forward.

Long when the predicted return exceeds ``threshold``; short below ``-threshold`` when ``allow_short``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engine.config import NonNegativeNumber, PositiveInt
from engine.errors import ConfigError
from engine.features import resolve_feature_columns
from engine.strategy import Rule, labelled_rows, threshold_exposure


class RegressionRule(Rule):
    """Linear (``model: linear``) or ridge (``model: ridge``, penalty ``alpha``) regression of the label
    (next-session return) on ``features`` (names or ``prefix*``; ``*`` is every pre-open feature), imputing and
    standardising with training statistics only.

    >>> RegressionRule("ridge", 1.0, ["sentiment", "topic_*"], 0.0005, False, 100).fit(history, label).target(window)
    """

    name = "regression"
    learned = True

    # The annotations are the parameters' schema (engine.config checks strategy.* against them before a run).
    def __init__(self, model: Literal["linear", "ridge"], alpha: NonNegativeNumber, features: list[str],
                 threshold: float, allow_short: bool, min_train_rows: PositiveInt):
        self.model = model
        self.alpha = alpha
        self.features = list(features)
        self.threshold = threshold
        self.allow_short = allow_short
        self.min_train_rows = min_train_rows

    def fit(self, features: pd.DataFrame, label: pd.Series) -> "RegressionRule":
        if self.model == "linear":
            estimator = LinearRegression()
        elif self.model == "ridge":
            if self.alpha is None or self.alpha < 0:
                raise ConfigError(f"strategy.alpha: must be >= 0, got {self.alpha!r}")
            estimator = Ridge(alpha=self.alpha)
        else:
            raise ConfigError(f"strategy.model: must be 'linear' or 'ridge', got {self.model!r}")
        self.columns_ = resolve_feature_columns(self.features, features.columns, "strategy.features")
        labelled = labelled_rows(features, label)
        if labelled.sum() < self.min_train_rows:
            self.pipeline_ = None  # too little history: stay flat rather than fit noise
            return self
        values = features.loc[labelled, self.columns_].to_numpy(dtype="float64")
        usable = ~np.all(np.isnan(values), axis=0)
        self.usable_ = [c for c, keep in zip(self.columns_, usable) if keep]
        self.pipeline_ = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), estimator)
        self.pipeline_.fit(values[:, usable], label.to_numpy(dtype="float64")[labelled])
        return self

    def prediction(self, features: pd.DataFrame) -> pd.Series:
        if self.pipeline_ is None:
            return pd.Series(np.nan, index=features.index, name="prediction")
        values = self.pipeline_.predict(features[self.usable_].to_numpy(dtype="float64"))
        return pd.Series(values, index=features.index, name="prediction")

    def target(self, features: pd.DataFrame) -> pd.Series:
        return threshold_exposure(self.prediction(features), self.threshold, self.allow_short)

    def inputs(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model's columns: once fitted, those it used (a column without a value in training is left out);
        before, the columns that ``features`` patterns name."""
        if getattr(self, "pipeline_", None) is not None:
            return features[self.usable_]
        return features[resolve_feature_columns(self.features, features.columns, "strategy.features")]

    def learned_summary(self) -> pd.DataFrame | None:
        if self.pipeline_ is None:
            return None
        estimator = self.pipeline_[-1]
        return pd.DataFrame({"feature": self.usable_ + ["(intercept)"],
                             "coefficient": list(estimator.coef_) + [estimator.intercept_]})
