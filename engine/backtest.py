"""Backtrader wiring: one feed per ticker, a broker with costs and stop-losses, and a thin strategy that trades
precomputed target weights before each open (cheat-on-open) under the VaR limit. The rules below are exact,
so that a second engine can reproduce the fills one for one.

One session t, in this order:

1. Before the open, from what is known at t-1's close: the portfolio value V (cash plus positions at the
   closes), the VaR scale s (below) and the rule's weight w (NaN: hold, no order). For each instrument with
   a bar at t, in ticker order: if a stop took it out of a side (long or short) and w still has that sign,
   w = 0; otherwise that stop-out is forgotten. The target size is ``w * s * V / (open * (1 + cost_rate))``
   with ``cost_rate = (1 + slippage) * (1 + commission) * (1 + 1e-9) - 1``, rounded toward zero to 1e-6 units
   (whole units when ``broker.fractional`` is false). No order when the change is zero, or when the position
   keeps its sign and ``|change| * open < rebalance_band * V``. A reversal (the target has the other sign of a
   position) is two orders: one closing the position (a sell or buy of exactly ``|current|``), then one opening
   the new side (the target), both in the ticker's place among the sells (long to short) or the buys (short to
   long). One order would execute ``closed + opened`` units, which in floats can fall short of its size: the
   order would stay open with the remnant, reported only when that fills the next session.
2. At the open the rebalances fill: all sells, then all buys, each in ticker order. A sell fills at
   ``max(open * (1 - slippage), low)``, a buy at ``min(open * (1 + slippage), high)``; every fill pays
   ``commission * |size| * price``. Buys never fail for want of cash: they may spend the cash at t-1's close
   plus the sells' proceeds net of commission, less ``1e-9 * V``; when they would cost more (``size * price
   * (1 + commission)`` summed, first over the reversals' closing buys, then over the other buys), the closing
   buys are kept whole (a short is covered in full) and every other buy, a reversal's opening one included, is
   scaled by the cash left after the closing buys over the other buys' cost (0 if that cash is negative) and
   rounded toward zero as above; a buy scaled to 0 is dropped.
3. Then, during the session, the stop-losses (``risk.stop_loss``). Every position open after the open's fills
   has a stop for its whole size at ``entry * (1 - stop_loss)`` (long) or ``entry * (1 + stop_loss)``
   (short). ``entry`` is the position's average fill price (backtrader's ``Position.price``; slippage in,
   commission out): the fill price when the position is opened or reversed, ``(entry * size + change *
   price) / (size + change)`` when it grows, unchanged when it shrinks. So a stop moves exactly when the
   position's size or entry does, and nothing is placed or cancelled to keep it: the broker turns a stop
   into an order only in a session whose bar reaches it. Stops are checked in ticker order. A long stop is
   reached when the open or the low is at or below it; it fills at ``max(open * (1 - slippage), low)`` when
   the open is (a gap through the stop), else at ``max(stop * (1 - slippage), low)``. A short stop mirrors
   this with the high. Commission as above. Stop proceeds come after the open, so they never fund the same
   session's buys. An instrument without a bar at t neither trades nor stops out at t.
4. At the close, positions are marked at the close; value, cash and positions go to the book, and the day's
   return ``value_t / value_{t-1} - 1`` enters the VaR window.

VaR limit: s = 1 while fewer than ``var_window_sessions`` (N) daily returns are known; then the 95% VaR is
``-numpy.quantile(the last N returns, 0.05, method="lower")`` and s = ``var_limit / VaR`` when the VaR
exceeds ``var_limit``, 1 otherwise. Trading starts once every feed has a bar; the book covers every session.
"""
from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass, field

import backtrader as bt
import numpy as np
import pandas as pd

from engine.errors import ConfigError

# Cash left unspent by the buys of a session, as a share of equity: far above the float error of
# backtrader's cash arithmetic, far below a cent on any account.
CASH_HEADROOM = 1e-9


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
    """backtrader's broker with a stop-loss on every position (module docstring, step 3).

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
    """Trades each feed to its target weight at the open, under the VaR limit (module docstring, steps 1-2;
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
                # which in floats can fall short of its size, leaving it open with the remnant (module docstring).
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
        closing buy is never scaled (step 2). Orders are (ticker, change, closes a reversal's position)."""
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


class VarWindow:
    """The VaR limit (module docstring): the last ``sessions`` daily returns, kept sorted; ``scale`` is the
    scale for the next open.

    >>> window = VarWindow(0.03, 60); window.add(-0.01); window.scale
    """

    def __init__(self, limit: float | None, sessions: int):
        self.limit = limit
        self.sessions = sessions
        self.scale = 1.0
        self.returns: collections.deque[float] = collections.deque()
        self.sorted_returns: list[float] = []
        # numpy's "lower" 5% quantile of N values is the k-th smallest: let numpy itself say which k.
        self.rank = int(np.quantile(np.arange(sessions), 0.05, method="lower"))

    def add(self, daily_return: float) -> None:
        """Add the session's return to the window (dropping the oldest); set the scale for the next open."""
        self.returns.append(daily_return)
        bisect.insort(self.sorted_returns, daily_return)
        if len(self.returns) > self.sessions:
            oldest = self.returns.popleft()
            del self.sorted_returns[bisect.bisect_left(self.sorted_returns, oldest)]
        if len(self.returns) == self.sessions:
            var_95 = -self.sorted_returns[self.rank]
            self.scale = 1.0 if var_95 <= self.limit else self.limit / var_95


TRADE_COLUMNS = ["ticker", "opened", "closed", "size", "entry_price", "exit_price", "pnl", "pnl_net", "commission", "bars"]
FILL_COLUMNS = ["date", "ticker", "size", "price", "commission", "kind"]
EXECUTION_COLUMNS = ["ticker", "session", "bar", "closed", "opened", "price", "closed_commission", "opened_commission"]


def round_trips(executions) -> pd.DataFrame:
    """Closed round trips (``TRADE_COLUMNS``) from executions in the order they happened: a frame, or a dict of
    arrays, with ``EXECUTION_COLUMNS``. Each execution is one fill's ``closed`` units that reduced the position,
    then its ``opened`` units that opened or grew it (each signed like the fill, 0 when none), at ``price``, with
    each part's commission, in ``session`` (carried as given), the ticker's ``bar``-th bar. A trip follows each
    part as backtrader's Trade does (a reversal closes one trip and opens the next; entry is the size-weighted
    price while it grows; pnl is booked as it shrinks) without backtrader's trade history, which copied the
    trade at every fill. Both engines build their trades here; each trip's arithmetic is sequential, in
    backtrader's order.

    >>> round_trips(pd.DataFrame([("X", 1, 2, 0.0, 10.0, 102.0, 0.0, 1.02), ("X", 3, 4, -10.0, 0.0, 105.0, 1.05, 0.0)],
    ...                          columns=EXECUTION_COLUMNS))  # one trip: opened 1, closed 3, pnl 30
    """
    # Labels (ticker, session) are taken as given, numbers read as arrays.
    column = {name: executions[name].array if isinstance(executions[name], pd.Series) else executions[name]
              for name in ("ticker", "session")}
    column.update({name: np.asarray(executions[name]) for name in EXECUTION_COLUMNS[2:]})
    if not len(column["closed"]):
        return pd.DataFrame(columns=TRADE_COLUMNS)
    # The parts, in order: each execution's closed part, then its opened part.
    sizes = np.stack([column["closed"], column["opened"]], 1).astype("float64").ravel()
    commissions = np.stack([column["closed_commission"], column["opened_commission"]], 1).astype("float64").ravel()
    source = np.repeat(np.arange(len(column["closed"])), 2)
    keep = sizes != 0
    sizes, commissions, source = sizes[keep], commissions[keep], source[keep]
    codes = pd.factorize(column["ticker"])[0][source]
    order = np.argsort(codes, kind="stable")  # each ticker's parts together, in time order
    sizes, commissions, source, codes = sizes[order], commissions[order], source[order], codes[order]
    prices = column["price"].astype("float64")[source]
    # A trip's size is the running sum of its parts, and it ends exactly when that sum is 0: so the running sum
    # over all of a ticker's parts (sequential, as the trip adds them) gives every trip's sizes.
    new = np.empty_like(sizes)
    bounds = np.flatnonzero(np.diff(codes)) + 1
    for first, last in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(sizes)]))):
        new[first:last] = np.cumsum(sizes[first:last])
    ends = new == 0
    starts = np.ones(len(sizes), dtype=bool)
    starts[1:] = ends[:-1] | (codes[1:] != codes[:-1])
    old = np.where(starts, 0.0, np.concatenate(([0.0], new[:-1])))
    first_part = np.flatnonzero(starts)
    lengths = np.diff(np.concatenate((first_part, [len(sizes)])))
    trips = len(first_part)
    price, pnl, commission, peak = np.zeros(trips), np.zeros(trips), np.zeros(trips), np.zeros(trips)
    live = np.arange(trips)
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in range(int(lengths.max())):  # the k-th part of every trip that has one, all at once
            live = live[lengths[live] > k]
            part = first_part[live] + k
            size, fill, before, after = sizes[part], prices[part], old[part], new[part]
            commission[live] += commissions[part]
            grows = np.abs(after) > np.abs(before)
            trip_price = price[live]
            pnl[live] = np.where(grows, pnl[live], pnl[live] + -size * (fill - trip_price))
            price[live] = np.where(grows, (before * trip_price + size * fill) / after, trip_price)
            peak[live] = np.where(np.abs(after) > np.abs(peak[live]), after, peak[live])
    last_part = first_part + lengths - 1
    closed = np.flatnonzero(ends[last_part])
    if not closed.size:
        return pd.DataFrame(columns=TRADE_COLUMNS)
    closed = closed[np.argsort(source[last_part[closed]], kind="stable")]  # rows in the order trips closed
    opening, closing = source[first_part[closed]], source[last_part[closed]]
    session, bar = column["session"], column["bar"]
    return pd.DataFrame({
        "ticker": column["ticker"][opening],
        "opened": session[opening],
        "closed": session[closing],
        "size": peak[closed],
        "entry_price": prices[first_part[closed]],
        "exit_price": prices[last_part[closed]],
        "pnl": pnl[closed],
        "pnl_net": pnl[closed] - commission[closed],
        "commission": commission[closed],
        "bars": bar[closing] - bar[opening],
    }, columns=TRADE_COLUMNS)


@dataclass
class BacktestResult:
    """What a backtest produced: ``book`` (date, value, cash, position_<ticker> at each close), ``trades``
    (closed round trips), ``fills`` (every execution), the VaR-limit scale applied before each open, and the
    number of orders given to the broker."""

    book: pd.DataFrame
    trades: pd.DataFrame
    fills: pd.DataFrame
    var_scales: list[float] = field(default_factory=list)
    rejected_orders: int = 0
    orders: int = 0




@dataclass(frozen=True)
class Terms:
    """The broker's and the risk limits' settings as both engines read them (module docstring): rates are
    fractions (5 bps = 0.0005); ``cost_rate`` is the sizing divisor's excess over 1; None disables a limit."""

    cash: float
    commission_rate: float
    slippage_rate: float
    cost_rate: float
    fractional: bool
    rebalance_band: float
    stop_loss: float | None
    var_limit: float | None
    var_window_sessions: int


def backtest_terms(broker: dict, risk: dict | None = None) -> Terms:
    """The ``Terms`` of a ``broker`` and ``risk`` config; ConfigError for a negative or non-finite cost or cash.

    >>> backtest_terms({"cash": 100_000, "commission_bps": 5}).commission_rate  # 0.0005
    """
    risk = risk or {}
    cash = float(broker.get("cash", 100_000))
    commission_bps = float(broker.get("commission_bps", 0))
    slippage_bps = float(broker.get("slippage_bps", 0))
    for key, value in (("broker.cash", cash), ("broker.commission_bps", commission_bps), ("broker.slippage_bps", slippage_bps)):
        if not math.isfinite(value) or value < 0 or (key == "broker.cash" and value == 0):
            raise ConfigError(f"{key}: must be a non-negative number (cash positive), got {value}")
    return Terms(
        cash=cash,
        commission_rate=commission_bps / 1e4,
        slippage_rate=slippage_bps / 1e4,
        # A buy fills at open * (1 + slippage) and pays commission on that: size so both fit in the cash.
        cost_rate=(1 + slippage_bps / 1e4) * (1 + commission_bps / 1e4) * (1 + 1e-9) - 1,
        fractional=bool(broker.get("fractional", True)),
        rebalance_band=float(broker.get("rebalance_band", 0.0)),
        stop_loss=risk.get("stop_loss"),
        var_limit=risk.get("var_limit"),
        var_window_sessions=int(risk.get("var_window_sessions") or 60),
    )


@dataclass
class SessionGrid:
    """The bars (the engine's columns) placed on a grid: each bar's ticker code and session row; the tickers,
    sorted; the calendar, one date per session (in the sessions' own time zone)."""

    bars: pd.DataFrame
    codes: np.ndarray
    tickers: pd.Index
    local_dates: pd.DatetimeIndex
    calendar: pd.DatetimeIndex
    rows: np.ndarray


def session_grid(bars: pd.DataFrame) -> SessionGrid:
    """The ``SessionGrid`` of bars indexed by (ticker, session).

    >>> session_grid(bars).calendar  # one date per session, over all tickers
    """
    bars = bars[["open", "high", "low", "close", "volume", "weight"]]
    codes, tickers = pd.factorize(bars.index.get_level_values("ticker"), sort=True)
    sessions = pd.DatetimeIndex(bars.index.get_level_values("session"))
    # Exchange sessions are one per date: a feed is dated by the session's date in its own time zone.
    local_dates = (sessions.tz_localize(None) if sessions.tz is not None else sessions).normalize()
    calendar = pd.DatetimeIndex(np.unique(local_dates.to_numpy()))
    return SessionGrid(bars, codes, tickers, local_dates, calendar, calendar.get_indexer(local_dates))


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
