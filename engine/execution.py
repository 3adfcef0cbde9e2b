"""The execution rules both engines follow (``engine.backtest``: backtrader; ``engine.vectorized``: a numba
kernel), exact so that the two give the same fills one for one, and what they share: the broker's terms, the
sessions' grid, the VaR window, the round trips and the result. Imports no backtrader.

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

import numpy as np
import pandas as pd

from engine.errors import ConfigError

# Cash left unspent by the buys of a session, as a share of equity: far above the float error of
# backtrader's cash arithmetic, far below a cent on any account.
CASH_HEADROOM = 1e-9


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
