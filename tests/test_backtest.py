"""The backtrader wiring: fills at the open, costs, trade list and final value worked out by hand."""
import math

import pandas as pd
import pytest

from engine.backtest import run_backtest
from engine.strategy import to_weights
from tests.conftest import make_prices

DATES = pd.bdate_range("2020-01-06", periods=6)
OPENS = [100, 102, 101, 105, 104, 108]
CLOSES = [101, 101, 104, 104, 107, 109]
WEIGHTS = [0, 1, 1, 0, 1, 0]


def bars(weights=WEIGHTS, opens=OPENS, closes=CLOSES, ticker="X"):
    prices = make_prices(DATES, opens, closes, ticker=ticker).rename(columns={"timestamp": "session"})
    return prices.set_index(["ticker", "session"]).assign(weight=[float(w) for w in weights])


def trunc6(x):
    return math.trunc(x * 1e6) / 1e6


def test_final_value_and_trades_match_hand_computation():
    commission = 10 / 1e4
    result = run_backtest(bars(), {"cash": 10_000, "commission_bps": 10, "slippage_bps": 0, "rebalance_band": 0.02})
    # Independent arithmetic: buy at the 7 Jan open (102) with all equity net of commission, hold through
    # the 8th (the drift is inside the 2% band), sell at the 9 Jan open (105); again 104 -> 108.
    cash = 10_000.0
    size1 = trunc6(cash / (102 * (1 + commission)))
    cash -= size1 * 102 * (1 + commission)
    cash += size1 * 105 * (1 - commission)
    size2 = trunc6(cash / (104 * (1 + commission)))
    cash -= size2 * 104 * (1 + commission)
    cash += size2 * 108 * (1 - commission)
    assert result.book["value"].iloc[-1] == pytest.approx(cash, abs=1e-6)
    # Value at the 8 Jan close: the position marked at 104 plus the leftover cash.
    leftover = 10_000 - size1 * 102 * (1 + commission)
    assert result.book["value"].iloc[2] == pytest.approx(leftover + size1 * 104, abs=1e-6)
    trades = result.trades
    assert list(trades["opened"]) == ["2020-01-07", "2020-01-10"]
    assert list(trades["closed"]) == ["2020-01-09", "2020-01-13"]
    assert list(trades["entry_price"]) == [102, 104]
    assert list(trades["exit_price"]) == [105, 108]
    assert trades["size"].tolist() == pytest.approx([size1, size2])
    assert trades["pnl"].tolist() == pytest.approx([size1 * 3, size2 * 4])
    assert list(result.fills["date"]) == ["2020-01-07", "2020-01-09", "2020-01-10", "2020-01-13"]


def test_slippage_moves_fill_prices_against_the_trader():
    result = run_backtest(bars(), {"cash": 10_000, "commission_bps": 0, "slippage_bps": 50, "rebalance_band": 0.02})
    assert result.fills["price"].tolist() == pytest.approx([102 * 1.005, 105 * 0.995, 104 * 1.005, 108 * 0.995])


def test_without_band_the_drift_is_rebalanced_daily():
    result = run_backtest(bars(), {"cash": 10_000, "commission_bps": 10, "slippage_bps": 0, "rebalance_band": 0})
    assert list(result.fills["date"]) == ["2020-01-07", "2020-01-08", "2020-01-09", "2020-01-10", "2020-01-13"]


def test_nan_weight_holds_the_position():
    result = run_backtest(bars([0, 1, float("nan"), float("nan"), float("nan"), 0]), {"cash": 10_000})
    assert list(result.fills["date"]) == ["2020-01-07", "2020-01-13"]


def test_stop_loss_exits_intraday_and_stays_out_until_signal_resets():
    # Long from the 7 Jan open at 102, so a 5% stop sits at 96.9. Lows (one below min(open, close)):
    # 7th 100, 8th 97, 9th 98, ...: never at or below 96.9, so no stop fill.
    opens = [100, 102, 101, 99, 104, 108]
    closes = [101, 101, 98, 104, 107, 109]
    result = run_backtest(bars([0, 1, 1, 1, 1, 1], opens, closes), {"cash": 10_000}, {"stop_loss": 0.05})
    stop_fills = result.fills[result.fills["kind"] == "stop"]
    assert stop_fills.empty
    opens = [100, 102, 101, 96, 104, 108]
    closes = [101, 101, 98, 104, 107, 109]
    result = run_backtest(bars([0, 1, 1, 1, 1, 1], opens, closes), {"cash": 10_000}, {"stop_loss": 0.05})
    stop_fills = result.fills[result.fills["kind"] == "stop"]
    # 9 Jan opens at 96, below the 96.9 stop: filled at that open (a gap through the stop).
    assert list(stop_fills["date"]) == ["2020-01-09"]
    assert stop_fills["price"].iloc[0] == pytest.approx(96)
    # The rule stays long, so the position stays closed for the rest of the test.
    assert result.book["position_X"].iloc[-1] == 0


def test_equal_split_among_active_instruments():
    index = pd.MultiIndex.from_product([["A", "B", "C"], pd.to_datetime(["2020-01-06"], utc=True)],
                                       names=["ticker", "session"])
    weights = to_weights(pd.Series([1.0, -1.0, 0.0], index=index))
    assert weights.tolist() == [0.5, -0.5, 0.0]


def test_stop_loss_fills_at_the_stop_price_inside_the_bar():
    # Entry 102 at the 7 Jan open; the 9th opens 100 and trades down to a low of 96 (close 97): stop at 96.9.
    opens = [100, 102, 101, 100, 104, 108]
    closes = [101, 101, 98, 97, 107, 109]
    result = run_backtest(bars([0, 1, 1, 1, 0, 1], opens, closes), {"cash": 10_000}, {"stop_loss": 0.05})
    stop_fills = result.fills[result.fills["kind"] == "stop"]
    assert list(stop_fills["date"]) == ["2020-01-09"]
    assert stop_fills["price"].iloc[0] == pytest.approx(102 * 0.95)
    # The rule goes flat on the 10th and long again on the 13th: the stop no longer holds it out.
    assert result.fills["date"].iloc[-1] == "2020-01-13"
    assert result.book["position_X"].iloc[-1] > 0


def test_fully_invested_orders_fit_the_cash_with_commission_and_slippage():
    result = run_backtest(bars(), {"cash": 100_000, "commission_bps": 5, "slippage_bps": 2, "rebalance_band": 0.02})
    assert result.rejected_orders == 0
    assert len(result.fills) == 4
    assert result.book["cash"].min() >= 0
