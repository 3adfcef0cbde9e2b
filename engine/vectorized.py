"""The screening engine (``engine=vectorized``): the session rules of ``engine/execution.py`` without backtrader, a
loop over sessions and, within each, over the tickers, compiled with numba (``_simulate``). It takes the same bars
and settings and returns the same ``BacktestResult`` as backtrader's engine, fill for fill and bit for bit: every
amount is computed with backtrader's own float operations in backtrader's order (``BackBroker._execute``,
``Position.update``, ``BackBroker._get_value``), and every running sum is sequential. numba compiles these
without fastmath (no reordering, no fused multiply-adds) and with numpy's error model (a division by zero gives
inf or NaN, as numpy and backtrader's floats do, instead of raising).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit, types

from engine.execution import (
    CASH_HEADROOM,
    EXECUTION_COLUMNS,
    FILL_COLUMNS,
    BacktestResult,
    SessionGrid,
    Terms,
    VarWindow,
    backtest_terms,
    round_trips,
    session_grid,
)

_REBALANCE, _STOP = 0, 1
_KINDS = pd.array(["rebalance", "stop"], dtype="str")
# One row per execution, in order: its session row, kind, ticker code, executed, closed and opened units, fill
# price, closed and opened parts' commissions (``EXECUTION_COLUMNS`` less the labels, plus the kind).
_ROW, _KIND, _TICKER, _EXECUTED, _CLOSED, _OPENED, _PRICE, _CLOSED_COMMISSION, _OPENED_COMMISSION = range(9)


def run_vectorized(bars: pd.DataFrame, broker: dict, risk: dict | None = None) -> BacktestResult:
    """Backtest target weights exactly as ``engine.backtest.run_backtest`` does (same arguments, same result),
    without backtrader.

    >>> result = run_vectorized(bars, {"cash": 100_000, "commission_bps": 5, "slippage_bps": 2})
    """
    terms = backtest_terms(broker, risk)
    grid = session_grid(bars)
    market = _Market.build(grid, terms)
    sessions, count = market.opens.shape
    # C-ordered, writable arrays of one dtype each, so numba compiles (and caches) _simulate for one signature
    matrices = [np.require(matrix, dtype=bool if matrix.dtype == bool else np.float64, requirements="CW")
                for matrix in (market.opens, market.weights, market.tradable, market.denominators, market.buy_prices,
                               market.sell_prices, market.highs, market.lows, market.lowest, market.highest,
                               market.closes)]
    values, cashes, positions, var_scales, records, rejected, orders = _simulate(
        *matrices, int(market.first_trading),
        float(terms.cash), float(terms.commission_rate), float(terms.slippage_rate), bool(terms.fractional),
        float(terms.rebalance_band), bool(terms.stop_loss), float(terms.stop_loss or 0.0),
        terms.var_limit is not None, float(terms.var_limit or 0.0), int(terms.var_window_sessions),
        int(VarWindow(terms.var_limit, terms.var_window_sessions).rank), float(CASH_HEADROOM))
    fills, trades = _records(market, records)
    traded = np.zeros(count, dtype=bool)  # ever executed (else backtrader's size stays the integer 0)
    traded[records[:, _TICKER].astype(np.int64)] = True
    book = {"date": market.dates, "value": values, "cash": cashes}
    for ticker, name in enumerate(market.names):
        book[f"position_{name}"] = positions[:, ticker] if traded[ticker] else np.zeros(sessions, dtype=np.int64)
    return BacktestResult(book=pd.DataFrame(book), trades=trades, fills=fills, var_scales=var_scales.tolist(),
                          rejected_orders=int(rejected), orders=int(orders))


@dataclass
class _Market:
    """The bars as session x ticker matrices (NaN where a ticker has no bar), and what each session's fills
    read from them."""

    dates: pd.api.extensions.ExtensionArray  # ISO date of each session
    names: pd.api.extensions.ExtensionArray  # the tickers, in backtrader's feed order
    opens: np.ndarray
    weights: np.ndarray
    tradable: np.ndarray  # a bar and a weight (not NaN: hold)
    denominators: np.ndarray  # open * (1 + cost_rate), the sizing divisor
    buy_prices: np.ndarray  # a buy's fill at the open: slipped up, at most the high
    sell_prices: np.ndarray  # a sell's: slipped down, at least the low
    highs: np.ndarray
    lows: np.ndarray
    lowest: np.ndarray  # min(open, low): a long stop is reached at or above it
    highest: np.ndarray  # max(open, high): a short stop, at or below it
    closes: np.ndarray  # each ticker's last close (0 before its first bar, when it holds nothing)
    bars_seen: np.ndarray  # backtrader's len(data): the ticker's bars so far
    last_bar_rows: np.ndarray  # the session row of the ticker's latest bar so far
    first_trading: int  # backtrader calls next_open once every feed has had a bar: the session after that

    @classmethod
    def build(cls, grid: SessionGrid, terms: Terms) -> _Market:
        shape = (len(grid.calendar), len(grid.tickers))

        def matrix(column: str) -> np.ndarray:
            values = np.full(shape, np.nan)
            values[grid.rows, grid.codes] = grid.bars[column].to_numpy(dtype="float64")
            return values

        opens, highs, lows, weights = matrix("open"), matrix("high"), matrix("low"), matrix("weight")
        has_bar = np.zeros(shape, dtype=bool)
        has_bar[grid.rows, grid.codes] = True
        slippage = terms.slippage_rate
        buy_prices = sell_prices = opens
        if slippage:  # backtrader's slipped open (BackBroker._slip_up / _slip_down with slip_match)
            slipped_up, slipped_down = opens * (1 + slippage), opens * (1 - slippage)
            buy_prices = np.where(slipped_up <= highs, slipped_up, highs)
            sell_prices = np.where(slipped_down >= lows, slipped_down, lows)
        return cls(
            dates=pd.array(np.datetime_as_string(grid.calendar.to_numpy().astype("datetime64[D]")), dtype="str"),
            names=pd.array([str(ticker) for ticker in grid.tickers], dtype="str"),
            opens=opens,
            weights=weights,
            tradable=~np.isnan(opens) & ~np.isnan(weights),
            denominators=opens * (1 + terms.cost_rate),
            buy_prices=buy_prices,
            sell_prices=sell_prices,
            highs=highs,
            lows=lows,
            lowest=np.fmin(opens, lows),  # backtrader tests "open <= stop or low <= stop"
            highest=np.fmax(opens, highs),
            closes=pd.DataFrame(matrix("close")).ffill().fillna(0.0).to_numpy(),
            bars_seen=np.cumsum(has_bar, axis=0),
            last_bar_rows=np.maximum.accumulate(np.where(has_bar, np.arange(shape[0])[:, None], 0), axis=0),
            first_trading=int(np.max(np.argmax(has_bar, axis=0))) + 1,
        )


# --- the compiled session loop ----------------------------------------------------------------------------------
# The Account of backtrader's broker for stock-like instruments (no leverage, short sales credit the cash): cash,
# each ticker's size and average price. Every order executes whole at once: a reversal is two orders
# (engine/execution.py, step 1), so no order both closes and opens a position. The helpers have one signature each,
# given: numba would otherwise compile one version per constant argument (seconds each, on a first run).
_INTEGERS, _FLOATS, _RECORDS = types.int64[::1], types.float64[::1], types.float64[:, ::1]


@njit(types.float64(types.float64), cache=True, error_model="numpy")
def _sign(x):
    """numpy's sign of a float (NaN stays NaN)."""
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    return x if x != x else 0.0


@njit(types.Tuple((_RECORDS, types.int64))(_RECORDS, types.int64, types.int64, types.int64, types.int64,
                                            *[types.float64] * 6), cache=True, error_model="numpy")
def _record(records, count, row, kind, ticker, executed, closed, opened, price, closed_commission, opened_commission):
    """Append one execution to ``records`` (grown by doubling); return (records, count)."""
    if count == records.shape[0]:
        grown = np.empty((2 * records.shape[0], records.shape[1]))
        grown[:count] = records[:count]
        records = grown
    entry = records[count]
    entry[0], entry[1], entry[2], entry[3], entry[4] = row, kind, ticker, executed, closed
    entry[5], entry[6], entry[7], entry[8] = opened, price, closed_commission, opened_commission
    return records, count + 1


@njit(types.Tuple((types.float64, types.boolean, _RECORDS, types.int64))(
    types.int64, types.int64, _INTEGERS, _FLOATS, _FLOATS, types.int64, types.int64, types.float64, _FLOATS, _FLOATS,
    types.float64, types.boolean, _RECORDS, types.int64), cache=True, error_model="numpy")
def _execute(row, kind, tickers, sizes, prices, start, stop, cash, size, price, commission, apply, records, count):
    """Orders ``start:stop`` filled in order, each at its price (``BackBroker._execute``): a ticker comes twice
    only for a reversal, its closing order (to flat), then its opening one (from flat). With ``apply`` False only
    test them; return (cash after them, whether they all fill, records, count): not when one opens or grows a
    position leaving the cash negative (BackBroker refuses it, "Margin") and no cash along the way is NaN
    (numpy's min, which propagates NaN, decided that before)."""
    short = False
    undefined = False
    for k in range(start, stop):
        ticker = tickers[k]
        again = k > start and ticker == tickers[k - 1]  # a reversal's opening order: after its closing one
        old_size = 0.0 if again else size[ticker]
        old_price = 0.0 if again else price[ticker]
        order_size, fill = sizes[k], prices[k]
        # Position.pseudoupdate: an order closes (shrinks) the position or opens (grows) it, never both here.
        direction = _sign(old_size) * _sign(order_size)  # > 0: grows, 0: opens, < 0: shrinks or closes
        if direction >= 0.0:
            closed, opened = 0.0, order_size
        else:
            closed, opened = order_size, 0.0
        # The cash, step by step as _execute changes it: + (the closed part's value at entry + its pnl),
        # - commission; - the opened part's value, - commission (a part of zero adds zero).
        unclosed = -closed
        closed_commission = abs(closed) * commission * fill
        opened_commission = abs(opened) * commission * fill
        cash = cash + (unclosed * old_price + unclosed * (fill - old_price))
        cash = cash + -closed_commission
        cash = cash + -(opened * fill)
        cash = cash + -opened_commission
        if cash != cash:
            undefined = True
        if opened != 0.0 and cash < 0.0:
            short = True
        if apply:
            # Position.update with the executed size.
            executed = closed + opened
            new_size = old_size + executed
            new_sign = _sign(new_size)
            grown = (old_price * old_size + executed * fill) / new_size
            # Closed: 0; opened from flat or reversed: the fill price; grown: the average; shrunk: unchanged.
            if new_sign == 0.0:
                new_price = 0.0
            elif direction > 0.0:
                new_price = grown
            elif new_sign == _sign(old_size):
                new_price = old_price
            else:
                new_price = fill
            size[ticker], price[ticker] = new_size, new_price
            records, count = _record(records, count, row, kind, ticker, executed, closed, opened, fill,
                                     closed_commission, opened_commission)
    return cash, not (short and not undefined), records, count


@njit(types.Tuple((types.float64, _RECORDS, types.int64))(
    types.int64, types.int64, _INTEGERS, _FLOATS, _FLOATS, types.int64, types.float64, _FLOATS, _FLOATS, types.float64,
    _INTEGERS, _RECORDS, types.int64), cache=True, error_model="numpy")
def _fill(row, kind, tickers, sizes, prices, number, cash, size, price, commission, tally, records, count):
    """Fill a session's ``number`` orders; a refused one goes with nothing of it executed (it closes nothing, so
    the cash and the position stay), and every later order's cash depends on that, so then they go one by one.
    ``tally``: [rejected, orders]. Return (cash, records, count)."""
    if number == 0:
        return cash, records, count
    tally[1] += number
    _, fills, records, count = _execute(row, kind, tickers, sizes, prices, 0, number, cash, size, price, commission,
                                        False, records, count)
    if fills:
        cash, _, records, count = _execute(row, kind, tickers, sizes, prices, 0, number, cash, size, price, commission,
                                           True, records, count)
        return cash, records, count
    if number == 1:
        tally[0] += 1
        return cash, records, count
    for k in range(number):
        _, fills, records, count = _execute(row, kind, tickers, sizes, prices, k, k + 1, cash, size, price,
                                            commission, False, records, count)
        if fills:
            cash, _, records, count = _execute(row, kind, tickers, sizes, prices, k, k + 1, cash, size, price,
                                               commission, True, records, count)
        else:
            tally[0] += 1
    return cash, records, count


@njit(cache=True, error_model="numpy")
def _simulate(opens, weights, tradable, denominators, buy_prices, sell_prices, highs, lows, lowest, highest, closes,
              first_trading, cash, commission, slippage, fractional, band_rate, use_stop, stop_loss, use_var,
              var_limit, var_sessions, var_rank, headroom):
    """The backtest over the session x ticker matrices of ``_Market``: (book values, cash, positions per session,
    the VaR scales from the first trading session, the executions (``_ROW`` ...), rejected orders, orders)."""
    sessions, count = opens.shape
    size, price = np.zeros(count), np.zeros(count)
    stopped = np.zeros(count)  # sign of the exposure a stop took each ticker out of
    any_stopped = False
    values, cashes = np.empty(sessions), np.empty(sessions)
    positions = np.empty((sessions, count))
    var_scales = np.empty(max(sessions - first_trading, 0))
    # The VaR window (engine.execution.VarWindow): the last var_sessions returns, and the same kept sorted.
    window_returns = np.empty(sessions)
    window_start, window_end = 0, 0
    sorted_returns = np.empty(var_sessions + 1)
    scale = 1.0
    tickers = np.empty(2 * count, dtype=np.int64)  # a session's orders: sells, then buys
    order_sizes, order_prices = np.empty(2 * count), np.empty(2 * count)
    closing = np.empty(2 * count, dtype=np.bool_)  # the order closes a reversal's position
    target, change = np.empty(count), np.empty(count)
    ordered = np.zeros(count, dtype=np.bool_)
    records = np.empty((64, 9))
    recorded = 0
    tally = np.zeros(2, dtype=np.int64)  # rejected, orders
    value = cash
    last_value = 0.0
    has_last = False
    for row in range(sessions):
        if row >= first_trading:
            var_scales[row - first_trading] = scale
            any_order = False
            if any_stopped:
                any_stopped = False
                for k in range(count):
                    if tradable[row, k] and stopped[k] != 0.0:
                        if _sign(weights[row, k]) != stopped[k]:
                            stopped[k] = 0.0
                    any_stopped = any_stopped or stopped[k] != 0.0
            for k in range(count):
                weight = weights[row, k]
                if tradable[row, k] and stopped[k] != 0.0 and _sign(weight) == stopped[k]:
                    weight = 0.0  # stay out until the rule leaves that side
                wanted = weight * scale * value / denominators[row, k]
                wanted = np.trunc(wanted * 1e6) / 1e6 if fractional else np.trunc(wanted)  # toward zero
                target[k] = wanted
                change[k] = wanted - size[k]  # 0 for a zero weight on no position (a bar's open is positive)
                # An order where the change is not zero, unless inside the band with the position keeping its sign.
                inside_band = abs(change[k]) * opens[row, k] < band_rate * value and wanted * size[k] > 0.0
                ordered[k] = tradable[row, k] and change[k] != 0.0 and not inside_band
                any_order = any_order or ordered[k]
            if any_order:
                # The session's rebalances at the open: the sells, then the buys fitted to the cash
                # (engine/execution.py, step 2), each in ticker order, a reversal as two orders (close, then open).
                number, sells = 0, 0
                for side in range(2):  # 0: the sells, 1: the buys
                    selling = side == 0
                    if not selling:
                        sells = number
                    for k in range(count):
                        if ordered[k] and ((change[k] < 0.0) if selling else (change[k] > 0.0)):
                            fill = sell_prices[row, k] if selling else buy_prices[row, k]
                            if target[k] * size[k] < 0.0:  # a reversal: its closing order, then its opening one
                                tickers[number], order_sizes[number] = k, -size[k]
                                order_prices[number], closing[number] = fill, True
                                number += 1
                                tickers[number], order_sizes[number] = k, target[k]
                            else:
                                tickers[number], order_sizes[number] = k, change[k]
                            order_prices[number], closing[number] = fill, False
                            number += 1
                if number > sells:
                    # The cash the buys may spend, and their cost, with TargetWeightStrategy._fit_to_cash's sums.
                    available = cash
                    for k in range(sells):
                        available = available + -(order_sizes[k] * order_prices[k] * (1 - commission))
                    closing_cost, cost = 0.0, 0.0  # Python's sums, sequential from 0
                    for k in range(sells, number):
                        if closing[k]:
                            closing_cost += order_sizes[k] * order_prices[k] * (1 + commission)
                        else:
                            cost += order_sizes[k] * order_prices[k] * (1 + commission)
                    budget = available - headroom * value
                    if closing_cost + cost > budget and cost != 0.0:
                        spend = budget - closing_cost
                        if 0.0 > spend:  # Python's max(spend, 0.0)
                            spend = 0.0
                        ratio = spend / cost
                        kept = sells
                        for k in range(sells, number):
                            scaled = order_sizes[k]  # a reversal's closing buy stays whole
                            if not closing[k]:
                                scaled = scaled * ratio
                                scaled = np.trunc(scaled * 1e6) / 1e6 if fractional else np.trunc(scaled)
                            if scaled > 0.0:
                                tickers[kept], order_sizes[kept] = tickers[k], scaled
                                order_prices[kept], closing[kept] = order_prices[k], closing[k]
                                kept += 1
                        number = kept
                cash, records, recorded = _fill(row, _REBALANCE, tickers, order_sizes, order_prices, number, cash, size,
                                                price, commission, tally, records, recorded)
            if use_stop:
                # The stops the session's bar reaches, in ticker order (StopLossBroker._stop_out and backtrader's
                # stop matching), each from its position's entry (engine/execution.py, step 3). NaN prices (no bar)
                # compare false. Each stop sells (buys) the whole position: all of it closes, nothing opens, so the
                # cash can't run short and the order fills exactly, in _execute's float steps.
                for k in range(count):
                    held = size[k]
                    long_stop, short_stop = price[k] * (1 - stop_loss), price[k] * (1 + stop_loss)
                    long = held > 0.0
                    if not ((long and lowest[row, k] <= long_stop) or (held < 0.0 and highest[row, k] >= short_stop)):
                        continue
                    stop = long_stop if long else short_stop
                    gap = opens[row, k] <= stop if long else opens[row, k] >= stop  # through the stop at the open
                    fill = opens[row, k] if gap else stop
                    if slippage != 0.0:
                        if long:
                            down = fill * (1 - slippage)
                            fill = down if down >= lows[row, k] else lows[row, k]
                        else:
                            up = fill * (1 + slippage)
                            fill = up if up <= highs[row, k] else highs[row, k]
                    entry = price[k]
                    closed = -held
                    closed_commission = abs(closed) * commission * fill
                    cash = cash + (held * entry + held * (fill - entry))
                    cash = cash + -closed_commission
                    size[k], price[k] = 0.0, 0.0
                    tally[1] += 1
                    records, recorded = _record(records, recorded, row, _STOP, k, closed, closed, 0.0, fill,
                                                closed_commission, 0.0)
                    stopped[k] = _sign(held)
                    any_stopped = True
        # The book value: cash plus the positions at the session's closes (a ticker without a bar: its last close),
        # summed in ticker order as BackBroker._get_value sums them (a long position: its cost, then its gain).
        held_any = False
        for k in range(count):
            held_any = held_any or size[k] != 0.0
        if held_any:
            total = 0.0
            for k in range(count):
                worth = size[k] * closes[row, k]
                unrealized = size[k] * (closes[row, k] - price[k])
                if worth > 0.0:
                    part, gain = worth - unrealized, unrealized
                else:
                    part, gain = worth, -0.0
                total = part if k == 0 else total + part
                total = total + gain
            value = cash + total
        else:
            value = cash + 0.0
        values[row], cashes[row] = value, cash
        positions[row] = size
        if row + 1 >= first_trading:  # backtrader's next(): every feed has had a bar
            if use_var and has_last:
                # VarWindow.add: bisect.insort (right of equals), drop the oldest (bisect_left), the k-th smallest
                daily = value / last_value - 1
                window_returns[window_end] = daily
                window_end += 1
                held_count = window_end - window_start - 1  # sorted entries before this one
                low, high = 0, held_count
                while low < high:
                    middle = (low + high) // 2
                    if daily < sorted_returns[middle]:
                        high = middle
                    else:
                        low = middle + 1
                sorted_returns[low + 1:held_count + 1] = sorted_returns[low:held_count].copy()
                sorted_returns[low] = daily
                if window_end - window_start > var_sessions:
                    oldest = window_returns[window_start]
                    window_start += 1
                    low, high = 0, held_count + 1
                    while low < high:
                        middle = (low + high) // 2
                        if sorted_returns[middle] < oldest:
                            low = middle + 1
                        else:
                            high = middle
                    if low > held_count:
                        raise IndexError("list assignment index out of range")  # as VarWindow's del would
                    sorted_returns[low:held_count] = sorted_returns[low + 1:held_count + 1].copy()
                if window_end - window_start == var_sessions:
                    var_95 = -sorted_returns[var_rank]
                    scale = 1.0 if var_95 <= var_limit else var_limit / var_95
            last_value = value
            has_last = True
    return values, cashes, positions, var_scales, records[:recorded], tally[0], tally[1]


def _records(market: _Market, records: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fills and the round trips (``engine.execution.round_trips`` of the executions, in order)."""
    if not len(records):
        return _like_backtrader(pd.DataFrame(columns=FILL_COLUMNS), "date"), _like_backtrader(
            round_trips({name: [] for name in EXECUTION_COLUMNS}), "opened", "closed")
    sessions, tickers = records[:, _ROW].astype(np.int64), records[:, _TICKER].astype(np.int64)
    kinds = records[:, _KIND].astype(np.int64)
    executed, closed, opened = records[:, _EXECUTED], records[:, _CLOSED], records[:, _OPENED]
    fill_prices = records[:, _PRICE]
    closed_commissions, opened_commissions = records[:, _CLOSED_COMMISSION], records[:, _OPENED_COMMISSION]
    # Order.execute: an order filled at once reports that execution (OrderData.addbit from nothing).
    sizes, prices, commissions = executed, (executed * fill_prices) / executed, closed_commissions + opened_commissions
    dates = market.dates[market.last_bar_rows[sessions, tickers]]  # backtrader dates a fill by its feed's bar
    names = market.names[tickers]
    fills = pd.DataFrame({"date": dates, "ticker": names, "size": sizes, "price": prices,
                          "commission": commissions, "kind": _KINDS[kinds]}, columns=FILL_COLUMNS)
    executions = {"ticker": names, "session": dates, "bar": market.bars_seen[sessions, tickers], "closed": closed,
                  "opened": opened, "price": fill_prices, "closed_commission": closed_commissions,
                  "opened_commission": opened_commissions}
    return fills, _like_backtrader(round_trips(executions), "opened", "closed")


def _like_backtrader(frame: pd.DataFrame, *dated: str) -> pd.DataFrame:
    """An empty frame with the column types run_backtest gives it (its dating of an empty column makes it
    float64)."""
    if frame.empty:
        for column in dated:
            frame[column] = []
    return frame
