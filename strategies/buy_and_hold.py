"""Buy and hold: equal weight in every instrument from the first tradable open, never rebalanced (the benchmark)."""
from __future__ import annotations

import pandas as pd

from engine.strategy import Rule


class BuyAndHold(Rule):
    """Long every instrument; the engine enters once and never rebalances (``rebalances = False``).

    >>> BuyAndHold().target(features)  # 1.0 everywhere
    """

    name = "buy_and_hold"
    rebalances = False

    def target(self, features: pd.DataFrame) -> pd.Series:
        return pd.Series(1.0, index=features.index, name="exposure")

    def inputs(self, features: pd.DataFrame) -> pd.DataFrame:
        """Nothing: the rule is long whatever the features say."""
        return features[[]]

    def news_window(self, features: pd.DataFrame) -> None:
        return None
