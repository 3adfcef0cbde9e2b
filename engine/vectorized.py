"""The screening engine (``engine=vectorized``): the session rules of ``engine/backtest.py`` in numpy, a Python
loop over sessions with each session's work done on arrays over the tickers. It takes the same bars and settings
and returns the same ``BacktestResult`` as backtrader's engine, fill for fill and bit for bit: every amount is
computed with backtrader's own float operations in backtrader's order (``BackBroker._execute``,
``Position.update``, ``BackBroker._get_value``), and running sums are sequential (``numpy.cumsum``), never
pairwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.backtest import (
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


def run_vectorized(bars: pd.DataFrame, broker: dict, risk: dict | None = None) -> BacktestResult:
    """Backtest target weights exactly as ``engine.backtest.run_backtest`` does (same arguments, same result),
    without backtrader.

    >>> result = run_vectorized(bars, {"cash": 100_000, "commission_bps": 5, "slippage_bps": 2})
    """
    terms = backtest_terms(broker, risk)
    grid = session_grid(bars)
    market = _Market.build(grid, terms)
    sessions, count = market.opens.shape
    account = _Account(terms, market, count)
    var_window = VarWindow(terms.var_limit, terms.var_window_sessions)
    fractional, band_rate, stop_loss = terms.fractional, terms.rebalance_band, terms.stop_loss
    opens, weights, tradable, denominators = market.opens, market.weights, market.tradable, market.denominators
    stopped = np.zeros(count)  # sign of the exposure a stop took each ticker out of
    any_stopped = False
    var_scales: list[float] = []
    values, cashes = np.empty(sessions), np.empty(sessions)
    positions = np.empty((sessions, count))
    value = terms.cash
    last_value = None
    with np.errstate(invalid="ignore", divide="ignore"):
        for row in range(sessions):
            if row >= market.first_trading:
                scale = var_window.scale
                var_scales.append(scale)
                weight, active = weights[row], tradable[row]
                if any_stopped:
                    held = active & (stopped != 0)
                    same_side = held & (np.sign(weight) == stopped)
                    weight = np.where(same_side, 0.0, weight)  # stay out until the rule leaves that side
                    stopped[held & ~same_side] = 0.0
                    any_stopped = bool(stopped.any())
                size = account.size
                target = weight * scale * value / denominators[row]
                target = np.trunc(target * 1e6) / 1e6 if fractional else np.trunc(target)  # toward zero
                change = target - size  # 0 for a zero weight on no position (a bar's open is positive)
                # An order where the change is not zero, unless inside the band with the position keeping its sign.
                inside_band = (np.abs(change) * opens[row] < band_rate * value) & (target * size > 0)
                order = active & (change != 0.0) & ~inside_band
                if order.any():
                    account.rebalance(row, target, change, order, value)
                if stop_loss:
                    stops = account.stop_out(row)
                    if stops is not None:
                        stopped[stops[0]] = stops[1]
                        any_stopped = True
            value = account.value(row)
            values[row], cashes[row] = value, account.cash
            positions[row] = account.size
            if row + 1 >= market.first_trading:  # backtrader's next(): every feed has had a bar
                if terms.var_limit is not None and last_value is not None:
                    var_window.add(value / last_value - 1)
                last_value = value

    fills, trades = account.records()
    book = {"date": market.dates, "value": values, "cash": cashes}
    for ticker, name in enumerate(market.names):
        # backtrader's position size of a ticker never traded is the integer 0
        book[f"position_{name}"] = positions[:, ticker] if account.traded[ticker] else np.zeros(sessions, dtype=np.int64)
    return BacktestResult(book=pd.DataFrame(book), trades=trades, fills=fills, var_scales=var_scales,
                          rejected_orders=account.rejected, orders=account.orders)


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
            dates=pd.array([moment.date().isoformat() for moment in grid.calendar], dtype="str"),
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


class _Account:
    """Cash, positions (size and average price) and the executions of one backtest, changed as backtrader's
    ``BackBroker`` changes them for stock-like instruments (no leverage, short sales credit the cash). Every
    order executes whole at once: a reversal is two orders (engine/backtest.py, step 1), so no order both closes
    and opens a position.
    """

    def __init__(self, terms: Terms, market: _Market, count: int):
        self.terms = terms
        self.market = market
        self.cash = terms.cash
        self.size = np.zeros(count)
        self.price = np.zeros(count)
        self.traded = np.zeros(count, dtype=bool)  # ever executed (else backtrader's size stays the integer 0)
        self.rejected = 0
        self.orders = 0
        self._records: list[tuple] = []
        self._value_steps = np.empty((count, 2))

    def rebalance(self, row: int, target: np.ndarray, change: np.ndarray, order: np.ndarray, value: float) -> None:
        """Fill the session's rebalances at the open: the sells, then the buys fitted to the cash (engine/backtest.py,
        step 2), each in ticker order, a reversal as two orders (close, then open)."""
        market = self.market
        reverses = order & (target * self.size < 0)
        sells, sell_sizes, _ = self._orders(order & (change < 0), reverses, target, change)
        buys, buy_sizes, closing = self._orders(order & (change > 0), reverses, target, change)
        sell_prices, buy_prices = market.sell_prices[row, sells], market.buy_prices[row, buys]
        if buys.size:
            # The cash the buys may spend, and their cost, with TargetWeightStrategy._fit_to_cash's sums.
            commission = self.terms.commission_rate
            cash = self.cash
            if sells.size:
                running = np.empty(1 + sells.size)
                running[0] = cash
                np.negative(sell_sizes * sell_prices * (1 - commission), out=running[1:])
                cash = float(running.cumsum()[-1])
            costs = buy_sizes * buy_prices * (1 + commission)
            # Python's sums, as backtrader's engine: 0 (an int) when there is nothing to add
            closing_cost, cost = sum(costs[closing].tolist()), sum(costs[~closing].tolist())
            budget = cash - CASH_HEADROOM * value
            if closing_cost + cost > budget and cost:
                scaled = buy_sizes * (max(budget - closing_cost, 0.0) / cost)
                scaled = np.trunc(scaled * 1e6) / 1e6 if self.terms.fractional else np.trunc(scaled)
                scaled = np.where(closing, buy_sizes, scaled)  # a reversal's closing buy stays whole
                keep = scaled > 0
                buys, buy_sizes, buy_prices, closing = buys[keep], scaled[keep], buy_prices[keep], closing[keep]
        self.execute(row, np.concatenate((sells, buys)), np.concatenate((sell_sizes, buy_sizes)),
                     np.concatenate((sell_prices, buy_prices)), _REBALANCE)

    def _orders(self, side: np.ndarray, reverses: np.ndarray, target: np.ndarray, change: np.ndarray) -> tuple:
        """The orders of one side (sells or buys) in ticker order: (tickers, sizes, closes a reversal's position),
        each reversal as its closing order (``-size``) followed by its opening one (``target``)."""
        tickers = side.nonzero()[0]
        split = reverses[tickers]
        if not split.any():
            return tickers, change[tickers], np.zeros(tickers.size, dtype=bool)
        counts = 1 + split
        first = np.cumsum(counts) - counts  # each ticker's first order
        tickers = np.repeat(tickers, counts)
        sizes = change[tickers]
        closing = np.zeros(tickers.size, dtype=bool)
        closing[first[split]] = True
        sizes[first[split]] = -self.size[tickers[first[split]]]
        sizes[first[split] + 1] = target[tickers[first[split] + 1]]
        return tickers, sizes, closing

    def execute(self, row: int, tickers: np.ndarray, sizes: np.ndarray, prices: np.ndarray, kind: int) -> None:
        """Fill one order per entry, in the given order, each at its price (``BackBroker._execute``). A ticker
        comes twice only for a reversal: its closing order (to flat), then its opening one (from flat)."""
        count = tickers.size
        if not count:
            return
        self.orders += count
        old_size, old_price = self.size[tickers], self.price[tickers]
        again = np.zeros(count, dtype=bool)
        again[1:] = tickers[1:] == tickers[:-1]  # a reversal's opening order: after its closing one, from flat
        if again.any():
            old_size[again], old_price[again] = 0.0, 0.0
        commission = self.terms.commission_rate
        # Position.pseudoupdate: an order closes (shrinks) the position or opens (grows) it, never both here.
        old_sign = np.sign(old_size)
        direction = old_sign * np.sign(sizes)  # > 0: grows, 0: opens, < 0: shrinks or closes
        same = direction >= 0
        closed = np.where(same, 0.0, sizes)
        opened = np.where(same, sizes, 0.0)
        # The cash, step by step as _execute changes it: + (the closed part's value at entry + its pnl),
        # - commission; - the opened part's value, - commission (a part of zero adds zero).
        running = np.empty(1 + 4 * count)
        running[0] = self.cash
        steps = running[1:].reshape(count, 4)
        unclosed = -closed
        steps[:, 0] = unclosed * old_price + unclosed * (prices - old_price)
        closed_commission = np.abs(closed) * commission * prices
        np.negative(closed_commission, out=steps[:, 1])
        np.negative(opened * prices, out=steps[:, 2])
        opened_commission = np.abs(opened) * commission * prices
        np.negative(opened_commission, out=steps[:, 3])
        running.cumsum(out=running)
        after_open = running[4::4]
        if after_open.min() < 0.0 and (after_open[opened != 0] < 0.0).any():
            self._execute_short_of_cash(row, tickers, sizes, prices, kind, running)
            return
        self.cash = float(running[-1])
        executed = closed + opened
        self._move(tickers, old_size, old_price, executed, prices, direction > 0, again)
        self._records.append((row, kind, tickers, executed, closed, opened, prices, closed_commission,
                              opened_commission))

    def _execute_short_of_cash(self, row, tickers, sizes, prices, kind, running) -> None:
        """Orders among which one opens (or grows) a position and would leave the cash negative: BackBroker._execute
        refuses it ("nullify") and reports it as Margin (no fill; backtrader's engine counts a reject). Every later
        order's cash depends on that, so they go one by one."""
        if tickers.size > 1:
            for k in range(tickers.size):
                self.execute(row, tickers[k:k + 1], sizes[k:k + 1], prices[k:k + 1], kind)
            self.orders -= tickers.size
            return
        self.rejected += 1  # nothing of it executes: it closes nothing, so the cash and the position stay

    def _move(self, tickers, old_size, old_price, executed, prices, grows, again) -> None:
        """Position.update with the executed size (``grows``: it adds to the position; ``again``: a ticker's second
        order of the batch, applied after its first)."""
        new_size = old_size + executed
        old_sign, new_sign = np.sign(old_size), np.sign(new_size)
        grown = (old_price * old_size + executed * prices) / new_size
        # Closed: 0; opened from flat or reversed: the fill price; grown: the average; shrunk: unchanged.
        new_price = np.where(new_sign == 0, 0.0, np.where(grows, grown, np.where(new_sign == old_sign, old_price, prices)))
        first = ~again
        self.size[tickers[first]] = new_size[first]
        self.price[tickers[first]] = new_price[first]
        if again.any():
            self.size[tickers[again]] = new_size[again]
            self.price[tickers[again]] = new_price[again]

    def stop_out(self, row: int):
        """Fill the stops the session's bar reaches, in ticker order (StopLossBroker._stop_out and backtrader's
        stop matching); return (the tickers stopped out, the side each left), or None."""
        market, size, price, stop_loss = self.market, self.size, self.price, self.terms.stop_loss
        # Every position's stop, from its entry (engine/backtest.py, step 3). NaN prices (no bar) compare false.
        long_stop, short_stop = price * (1 - stop_loss), price * (1 + stop_loss)
        hit = ((size > 0) & (market.lowest[row] <= long_stop)) | ((size < 0) & (market.highest[row] >= short_stop))
        if not hit.any():
            return None
        tickers = hit.nonzero()[0]
        opens, highs, lows = market.opens[row, tickers], market.highs[row, tickers], market.lows[row, tickers]
        sides = np.sign(size[tickers])
        long = sides > 0
        stop = np.where(long, long_stop[tickers], short_stop[tickers])
        gap = np.where(long, opens <= stop, opens >= stop)  # through the stop at the open: filled at the open
        trigger = np.where(gap, opens, stop)
        slippage = self.terms.slippage_rate
        fill = trigger
        if slippage:
            down, up = trigger * (1 - slippage), trigger * (1 + slippage)
            fill = np.where(long, np.where(down >= lows, down, lows), np.where(up <= highs, up, highs))
        # Each stop sells (buys) the whole position: all of it closes, nothing opens, so the cash can't run short
        # and the order fills exactly; this is execute() with those parts, in the same float steps.
        size, entry = self.size[tickers], self.price[tickers]
        sizes = -size
        closed_commission = np.abs(sizes) * self.terms.commission_rate * fill
        running = np.empty(1 + 2 * tickers.size)
        running[0] = self.cash
        running[1::2] = size * entry + size * (fill - entry)
        np.negative(closed_commission, out=running[2::2])
        self.cash = float(running.cumsum()[-1])
        self.size[tickers] = 0.0
        self.price[tickers] = 0.0
        self.orders += tickers.size
        nothing = np.zeros(tickers.size)
        self._records.append((row, _STOP, tickers, sizes, sizes, nothing, fill, closed_commission, nothing))
        return tickers, sides

    def value(self, row: int) -> float:
        """Cash plus the positions at the session's closes (a ticker without a bar: its last close), summed in
        ticker order as BackBroker._get_value sums them."""
        size = self.size
        if not size.any():
            return self.cash + 0.0
        closes = self.market.closes[row]
        worth = size * closes
        unrealized = size * (closes - self.price)
        long = worth > 0
        steps = self._value_steps
        steps[:, 0] = np.where(long, worth - unrealized, worth)  # a long position: its cost, then its gain
        steps[:, 1] = np.where(long, unrealized, -0.0)
        return self.cash + float(steps.ravel().cumsum()[-1])

    def records(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The fills and the round trips (``engine.backtest.round_trips`` of the executions, in order)."""
        market = self.market
        if not self._records:
            return _like_backtrader(pd.DataFrame(columns=FILL_COLUMNS), "date"), _like_backtrader(
                round_trips({name: [] for name in EXECUTION_COLUMNS}), "opened", "closed")
        counts = [record[2].size for record in self._records]
        sessions = np.repeat([record[0] for record in self._records], counts)
        kinds = np.repeat([record[1] for record in self._records], counts)
        (tickers, executed, closed, opened, fill_prices, closed_commissions,
         opened_commissions) = (np.concatenate(part) for part in list(zip(*self._records))[2:9])
        self.traded[tickers] = True
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
