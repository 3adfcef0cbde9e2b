"""Risk limits: caps and volatility targeting on the weights, and the VaR limit inside the backtest."""
import numpy as np
import pandas as pd
import pytest

from engine.backtest import run_backtest
from engine.errors import ConfigError
from engine.risk import apply_risk
from tests.conftest import make_prices

INDEX = pd.MultiIndex.from_product([["A", "B"], pd.to_datetime(["2020-01-06", "2020-01-07"], utc=True)],
                                   names=["ticker", "session"])


def test_caps_and_volatility_targeting_by_hand():
    weights = pd.Series([0.5, 0.5, 0.5, np.nan], index=INDEX)
    features = pd.DataFrame({"volatility_20": [0.30, np.nan, 0.10, 0.20]}, index=INDEX)
    out = apply_risk(weights, features, {"target_volatility": 0.15, "max_leverage": 2.0, "max_position": 0.9,
                                         "max_gross_exposure": 1.0})
    # A on the 6th: 0.5 * 0.15/0.30 = 0.25; A on the 7th has no estimate yet: unscaled 0.5.
    # B on the 6th: 0.5 * min(0.15/0.10, 2) = 0.75; B on the 7th is NaN: hold stays NaN.
    # Gross on the 6th: 0.25 + 0.75 = 1.0 (at the cap); on the 7th 0.5 alone.
    assert out.tolist()[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert np.isnan(out.iloc[3])


def test_gross_exposure_cap_scales_every_weight_of_the_session():
    weights = pd.Series([0.8, 0.2, 0.8, 0.8], index=INDEX)
    out = apply_risk(weights, pd.DataFrame({"volatility_20": 0.2}, index=INDEX), {"max_gross_exposure": 1.0})
    # 6th: A 0.8 + B 0.8 = 1.6 -> each * 1/1.6 = 0.5; 7th: 0.2 + 0.8 = 1.0 unchanged.
    assert out.tolist() == pytest.approx([0.5, 0.2, 0.5, 0.8])


@pytest.mark.parametrize("key,value", [("stop_loss", 1.5), ("var_limit", -0.1), ("max_position", "big"), ("nonsense", 1)])
def test_bad_risk_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"risk.{key}"):
        apply_risk(pd.Series([1.0], index=INDEX[:1]), pd.DataFrame({"volatility_20": [0.1]}, index=INDEX[:1]), {key: value})


def test_var_limit_cuts_exposure_after_a_volatile_stretch():
    # 40 sessions: the first 25 swing +-5% a day (open to open), then calm +0.1%.
    moves = [0.05 if i % 2 else -0.05 for i in range(25)] + [0.001] * 15
    opens = 100 * np.cumprod([1.0] + [1 + m for m in moves[:-1]])
    prices = make_prices(pd.bdate_range("2020-01-06", periods=40), opens, opens).rename(columns={"timestamp": "session"})
    bars = prices.set_index(["ticker", "session"]).assign(weight=1.0)
    free = run_backtest(bars, {"cash": 10_000})
    limited = run_backtest(bars, {"cash": 10_000}, {"var_limit": 0.02, "var_window_sessions": 10})
    assert all(scale == 1.0 for scale in free.var_scales)
    # Opens equal closes, so prices move only overnight, and each open sizes the book on the previous close's
    # value. After a rise the book holds yesterday's value, 1/1.05 of today's; after a fall it would want
    # more than its cash and is fully invested (buys are fitted to the cash). So the daily returns alternate
    # +5% and -5%/1.05 = -4.76% (the first is 0: bought at the first open). The numpy "lower" 5% quantile of
    # 10 returns is the smallest: VaR 0.05/1.05, and from the 11th open on, exposure is cut to
    # 0.02 / (0.05/1.05) = 42%. (The old engine rejected the buys after each fall, and lost a little more.)
    assert limited.var_scales[:10] == [1.0] * 10
    assert min(limited.var_scales) == pytest.approx(0.02 / (0.05 / 1.05), rel=1e-6)
    assert limited.book["position_X"].iloc[20] < 0.5 * free.book["position_X"].iloc[20]


def test_var_scale_is_the_numpy_quantile_of_the_returns_known_before_each_open():
    # A second implementation: from the book's closing values, recompute each open's scale with numpy.
    rng = np.random.default_rng(7)
    closes = 100 * np.cumprod(1 + rng.normal(0, 0.02, 120))
    opens = closes * (1 + rng.normal(0, 0.005, 120))
    prices = make_prices(pd.bdate_range("2020-01-06", periods=120), opens, closes).rename(columns={"timestamp": "session"})
    weights = np.where(rng.random(120) < 0.5, 1.0, 0.5)
    bars = prices.set_index(["ticker", "session"]).assign(weight=weights)
    limit, window = 0.025, 20
    result = run_backtest(bars, {"cash": 10_000, "commission_bps": 5}, {"var_limit": limit, "var_window_sessions": window})
    values = result.book["value"].to_numpy()
    expected = []
    for session in range(1, len(values)):  # the first open traded is the second session's
        known = values[:session][-(window + 1):]
        if len(known) < window + 1:
            expected.append(1.0)
            continue
        var_95 = -np.quantile(known[1:] / known[:-1] - 1, 0.05, method="lower")
        expected.append(1.0 if var_95 <= limit else limit / var_95)
    assert 0 < sum(scale < 1 for scale in expected) < len(expected) - window  # the limit binds, not always
    assert result.var_scales == expected
