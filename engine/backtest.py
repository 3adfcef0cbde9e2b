"""Backtrader wiring: one feed per ticker, a broker with costs and stop-losses, and a thin strategy that trades
precomputed target weights before each open (cheat-on-open) under the VaR limit, by the exact rules of
``engine.execution`` (its docstring), which ``engine.vectorized`` follows too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd

from engine.execution import (
    CASH_HEADROOM,
    EXECUTION_COLUMNS,
    FILL_COLUMNS,
    BacktestResult,
    VarWindow,
    backtest_terms,
    round_trips,
    session_grid,
)


class WeightFeed(bt.feed.DataBase):
    """Daily bars plus the target portfolio weight (NaN: hold), read from arrays.

    ``dataname`` is a frame indexed by date with open, high, low, close, volume and weight. backtrader's
    PandasData reads a row at a time through ``.iloc``, which was 40% of a backtest; this feed converts the
    frame to arrays once.
    """

    lines = ("weight",)
    _COLUMNS = ("open", "high", "low", "close", "volume", "weight")

    def start(self):
        super().start()
        frame = self.p.dataname
        self._dates = [bt.date2num(moment) for moment in pd.DatetimeIndex(frame.index).to_pydatetime()]
        self._values = [frame[column].to_numpy(dtype="float64").tolist() for column in self._COLUMNS]
        self._row = 0

    def _load(self):
        row = self._row
        if row >= len(self._dates):
            return False
        self.lines.datetime[0] = self._dates[row]
        for column, values in zip(self._COLUMNS, self._values):
            getattr(self.lines, column)[0] = values[row]
        self.lines.openinterest[0] = 0.0
        self._row = row + 1
        return True


@dataclass
class _Panel:
    """What the strategy and the broker read each session, precomputed: per session (row) a list over the
    tickers in feed order, NaN where a ticker has no bar. ``rows`` maps backtrader's float date of a session
    to its row."""

    dates: list[str]
    rows: dict[float, int]
    open: list[list[float]]
    high: list[list[float]]
    low: list[list[float]]
    weight: list[list[float]]


def _panel(calendar: pd.DatetimeIndex, ticker_codes: np.ndarray, session_rows: np.ndarray, bars: pd.DataFrame,
           ticker_count: int) -> _Panel:
    columns = {}
    for column in ("open", "high", "low", "weight"):
        matrix = np.full((len(calendar), ticker_count), np.nan)
        matrix[session_rows, ticker_codes] = bars[column].to_numpy(dtype="float64")
        columns[column] = matrix.tolist()
    numbers = [bt.date2num(moment) for moment in calendar.to_pydatetime()]  # as WeightFeed dates its bars
    return _Panel(dates=[moment.date().isoformat() for moment in calendar], rows=dict(zip(numbers, range(len(numbers)))),
                  **columns)


class StopLossBroker(bt.brokers.BackBroker):
    """backtrader's broker with a stop-loss on every position (engine.execution, step 3).

    After the session's pending orders (the open's rebalances), each position whose stop the bar reaches
    becomes a backtrader Stop order for its whole size, filled at once by backtrader's own stop matching
    (``BackBroker._try_exec_stop``). A stop the bar does not reach costs no order: placing and cancelling a
    stop order around every rebalance was half the time of a backtest.
    """

    # Notices of orders accepted or cancelled: nobody here reads them, and each one copies its order.
    _UNREAD = (bt.Order.Submitted, bt.Order.Accepted, bt.Order.Canceled)

    def __init__(self, stop_loss: float | None = None):
        super().__init__()
        self.stop_loss = stop_loss
        self.owner = None  # the strategy, which receives the stop orders' notices
        self.panel: _Panel | None = None
        self.session_row: int | None = None  # the panel row of the session being traded (set before its open)
        self.orders_placed = 0

    def submit(self, order, check=True):
        self.orders_placed += 1
        return super().submit(order, check)

    def notify(self, order):
        if order.status not in self._UNREAD:
            super().notify(order)

    def next(self):
        super().next()
        if self.stop_loss and self.session_row is not None and self._stop_out():
            self._get_value()  # the value at the close, after the stop fills

    def _stop_out(self) -> bool:
        row = self.session_row
        opens, highs, lows = self.panel.open[row], self.panel.high[row], self.panel.low[row]
        reached = False
        for ticker, data in enumerate(self.owner.datas):
            position = self.positions[data]
            size = position.size
            # A ticker without a bar today has NaN prices, which compare false: no stop.
            if size > 0:
                stop = position.price * (1 - self.stop_loss)
                if not (opens[ticker] <= stop or lows[ticker] <= stop):
                    continue
                order = self.sell(self.owner, data, size, price=stop, exectype=bt.Order.Stop)
            elif size < 0:
                stop = position.price * (1 + self.stop_loss)
                if not (opens[ticker] >= stop or highs[ticker] >= stop):
                    continue
                order = self.buy(self.owner, data, -size, price=stop, exectype=bt.Order.Stop)
            else:
                continue
            self.pending.remove(order)  # executed now, not left for the next session
            self._try_exec(order)
            reached = True
        return reached


class TargetWeightStrategy(bt.Strategy):
    """Trades each feed to its target weight at the open, under the VaR limit (engine.execution, steps 1-2;
    the broker applies the stop-losses). Reads only the precomputed panel and the broker's state."""

    params = (
        ("panel", None),
        ("fractional", True),
        ("cost_rate", 0.0),
        ("commission_rate", 0.0),
        ("slippage_rate", 0.0),
        ("rebalance_band", 0.0),
        ("var_limit", None),
        ("var_window_sessions", 60),
    )

    def __init__(self):
        self.broker.owner = self
        self.broker.panel = self.p.panel
        self.index = {data: ticker for ticker, data in enumerate(self.datas)}
        self.stopped = [0] * len(self.datas)  # sign of the exposure a stop took each ticker out of
        self.executions: list[tuple] = []  # for round_trips
        self.fills: list[tuple] = []
        self.book: list[tuple] = []
        self.var_scales: list[float] = []
        self.rejected = 0
        self.var_window = VarWindow(self.p.var_limit, self.p.var_window_sessions)
        self.last_value: float | None = None

    def _round(self, size: float) -> float:
        # Toward zero (to a millionth of a unit when fractional), so that a fully invested book never needs a
        # cent more cash than it has.
        return math.trunc(size * 1e6) / 1e6 if self.p.fractional else float(math.trunc(size))

    def _fill_price(self, price: float, bound: float, buy: bool) -> float:
        """backtrader's slipped market fill: against the trader, never beyond the high (buy) or low (sell)."""
        slippage = self.p.slippage_rate
        if not slippage:
            return price
        if buy:
            slipped = price * (1 + slippage)
            return slipped if slipped <= bound else bound
        slipped = price * (1 - slippage)
        return slipped if slipped >= bound else bound

    def next_open(self):
        # In next_open the strategy's own clock still shows the previous session.
        row = self.p.panel.rows[self.datetime[0]] + 1
        self.broker.session_row = row
        opens, weights = self.p.panel.open[row], self.p.panel.weight[row]
        value = self.broker.getvalue()
        scale = self.var_window.scale
        self.var_scales.append(scale)
        positions = self.broker.positions
        band = self.p.rebalance_band * value
        sells, buys = [], []
        for ticker, data in enumerate(self.datas):
            price, weight = opens[ticker], weights[ticker]
            if price != price or weight != weight:
                continue  # no bar today, or hold (NaN)
            side = self.stopped[ticker]
            if side:
                if (weight > 0 and side > 0) or (weight < 0 and side < 0):
                    weight = 0.0  # stay out until the rule itself leaves the stopped-out side
                else:
                    self.stopped[ticker] = 0
            current = positions[data].size
            if weight == 0.0 and current == 0:
                continue
            target = self._round(weight * scale * value / (price * (1 + self.p.cost_rate)))
            change = target - current
            keeps_sign = (target > 0) == (current > 0) and (target < 0) == (current < 0)
            if change == 0 or (keeps_sign and abs(change) * price < band):
                continue
            orders = sells if change < 0 else buys
            if current and target and not keeps_sign:
                # A reversal: two orders, each executed exactly. One order would execute closed + opened units,
                # which in floats can fall short of its size, leaving it open with the remnant (engine.execution).
                orders.append((ticker, -current, True))
                orders.append((ticker, target, False))
            else:
                orders.append((ticker, change, False))
        if buys:
            buys = self._fit_to_cash(sells, buys, value, row)
        for ticker, change, _ in sells:
            self.sell(data=self.datas[ticker], size=-change)
        for ticker, change, _ in buys:
            self.buy(data=self.datas[ticker], size=change)

    def _fit_to_cash(self, sells: list, buys: list, value: float, row: int) -> list:
        """The buys, the others scaled alike when all would cost more than the cash they may spend; a reversal's
        closing buy is never scaled (engine.execution, step 2). Orders are (ticker, change, closes a reversal's position)."""
        commission = self.p.commission_rate
        opens, highs, lows = self.p.panel.open[row], self.p.panel.high[row], self.p.panel.low[row]
        cash = self.broker.getcash()
        for ticker, change, _ in sells:
            cash -= change * self._fill_price(opens[ticker], lows[ticker], buy=False) * (1 - commission)
        costs = [change * self._fill_price(opens[ticker], highs[ticker], buy=True) * (1 + commission)
                 for ticker, change, _ in buys]
        closing = sum(cost for cost, (_, _, closes) in zip(costs, buys) if closes)
        cost = sum(cost for cost, (_, _, closes) in zip(costs, buys) if not closes)
        budget = cash - CASH_HEADROOM * value
        if closing + cost <= budget or not cost:
            return buys
        factor = max(budget - closing, 0.0) / cost
        scaled = [(ticker, change if closes else self._round(change * factor), closes) for ticker, change, closes in buys]
        return [order for order in scaled if order[1] > 0]

    def _addnotification(self, order, quicknotify=False):
        # backtrader's Strategy also books every execution into its own Trade objects here (copying them as
        # they open and close) for notify_trade; nothing here reads those, round_trips builds the round trips.
        if not order.p.simulated:
            self._orderspending.append(order)

    def notify_order(self, order):
        if order.status in (order.Margin, order.Rejected):
            self.rejected += 1  # not expected: buys are fitted to the cash
            return
        if order.status != order.Completed:
            return
        stop = order.exectype == bt.Order.Stop
        executed = order.executed
        self.fills.append((executed.dt, order.data._name, executed.size, executed.price, executed.comm,
                           "stop" if stop else "rebalance"))
        data = order.data
        for bit in executed.iterpending():
            self.executions.append((data._name, data.datetime[0], len(data), bit.closed, bit.opened, bit.price,
                                    bit.closedcomm, bit.openedcomm))
        if stop:
            self.stopped[self.index[order.data]] = -1 if executed.size > 0 else 1

    def prenext(self):
        self._record()  # some feed has no bar yet: no trading, but the book covers the session

    def next(self):
        value = self._record()
        if self.p.var_limit is not None and self.last_value is not None:
            self.var_window.add(value / self.last_value - 1)
        self.last_value = value

    def _record(self) -> float:
        self.broker.session_row = None  # the session is over; the next open sets the next one
        value = self.broker.getvalue()
        positions = self.broker.positions
        self.book.append((self.datetime[0], value, self.broker.getcash(),
                          *[positions[data].size for data in self.datas]))
        return value


def run_backtest(bars: pd.DataFrame, broker: dict, risk: dict | None = None) -> BacktestResult:
    """Backtest target weights. ``bars`` is indexed by (ticker, session) with open, high, low, close, volume
    and ``weight``; ``broker`` has cash, commission_bps, slippage_bps, fractional, rebalance_band; ``risk`` has
    stop_loss, var_limit, var_window_sessions (None disables each).

    >>> result = run_backtest(bars, {"cash": 100_000, "commission_bps": 5, "slippage_bps": 2})
    """
    terms = backtest_terms(broker, risk)
    cerebro = bt.Cerebro(stdstats=False, cheat_on_open=True, runonce=True, preload=True)
    cerebro.broker = StopLossBroker(stop_loss=terms.stop_loss)
    cerebro.broker.setcash(terms.cash)
    cerebro.broker.setcommission(commission=terms.commission_rate)
    cerebro.broker.set_slippage_perc(terms.slippage_rate, slip_open=True, slip_limit=True, slip_match=True,
                                     slip_out=False)
    cerebro.broker.set_checksubmit(False)

    grid = session_grid(bars)
    for code, ticker in enumerate(grid.tickers):
        rows = np.flatnonzero(grid.codes == code)
        cerebro.adddata(WeightFeed(dataname=grid.bars.iloc[rows].set_axis(grid.local_dates[rows])), name=str(ticker))
    panel = _panel(grid.calendar, grid.codes, grid.rows, grid.bars, len(grid.tickers))
    cerebro.addstrategy(
        TargetWeightStrategy,
        panel=panel,
        fractional=terms.fractional,
        cost_rate=terms.cost_rate,
        commission_rate=terms.commission_rate,
        slippage_rate=terms.slippage_rate,
        rebalance_band=terms.rebalance_band,
        var_limit=terms.var_limit,
        var_window_sessions=terms.var_window_sessions,
    )
    strategy = cerebro.run()[0]

    def dated(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
        for column in columns:
            frame[column] = [panel.dates[panel.rows[number]] for number in frame[column]]
        return frame

    positions = [f"position_{ticker}" for ticker in grid.tickers]
    return BacktestResult(
        book=dated(pd.DataFrame(strategy.book, columns=["date", "value", "cash", *positions]), "date"),
        trades=dated(round_trips(pd.DataFrame(strategy.executions, columns=EXECUTION_COLUMNS)), "opened", "closed"),
        fills=dated(pd.DataFrame(strategy.fills, columns=FILL_COLUMNS), "date"),
        var_scales=strategy.var_scales,
        rejected_orders=strategy.rejected,
        orders=cerebro.broker.orders_placed,
    )
