"""Backtrader wiring: one PandasData feed per ticker carrying the target weight as an extra line, a broker with
costs, and a thin strategy that trades the weights before each open (cheat-on-open) and applies path-dependent
risk limits (stop-loss, VaR limit). Everything else was computed beforehand.

Timing: weights on session t use only what was known before t's open; orders placed in ``next_open`` fill at
t's open (plus slippage). Equity is marked at each close.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import backtrader as bt
import numpy as np
import pandas as pd

from engine.errors import ConfigError


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


class TargetWeightStrategy(bt.Strategy):
    """Trades each feed to its target weight at the open; stop-loss and VaR limit as configured."""

    params = (
        ("fractional", True),
        ("cost_rate", 0.0),
        ("rebalance_band", 0.0),
        ("stop_loss", None),
        ("var_limit", None),
        ("var_window_sessions", 60),
    )

    def __init__(self):
        self.values: list[float] = []
        self.stopped: dict[str, float] = {}  # ticker -> sign of the exposure that was stopped out
        self.stop_orders: dict[str, bt.Order] = {}
        self.fills: list[dict] = []
        self.var_scales: list[float] = []
        self.rejected = 0

    def _var_scale(self) -> float:
        if self.p.var_limit is None or len(self.values) < self.p.var_window_sessions + 1:
            return 1.0
        values = np.asarray(self.values[-(self.p.var_window_sessions + 1):])
        returns = values[1:] / values[:-1] - 1
        var_95 = -np.quantile(returns, 0.05, method="lower")
        return 1.0 if var_95 <= self.p.var_limit else self.p.var_limit / var_95

    def _size(self, weight: float, value: float, price: float) -> float:
        size = weight * value / (price * (1 + self.p.cost_rate))
        # Round toward zero (to a millionth of a unit when fractional) so a fully invested book never needs
        # a cent more cash than it has: backtrader rejects such an order as Margin.
        return math.trunc(size * 1e6) / 1e6 if self.p.fractional else float(math.trunc(size))

    def next_open(self):
        value = self.broker.getvalue()
        scale = self._var_scale()
        self.var_scales.append(scale)
        # Stops placed before the previous open were checked against that whole bar; replace them all.
        for name in list(self.stop_orders):
            order = self.stop_orders.pop(name)
            if order.alive():
                self.cancel(order)
        sells, buys, holdings = [], [], []
        # In next_open the strategy's own clock still shows the previous bar: take today from the feeds.
        today = max(data.datetime.date(0) for data in self.datas if len(data))
        for data in self.datas:
            if len(data) == 0 or data.datetime.date(0) != today:
                continue  # this instrument has no bar today
            current = self.getposition(data).size
            weight = data.weight[0]
            if math.isnan(weight):
                holdings.append((data, current))
                continue
            name = data._name
            if name in self.stopped:
                if np.sign(weight) == self.stopped[name]:
                    weight = 0.0  # stay out until the rule itself leaves the stopped-out side
                else:
                    del self.stopped[name]
            weight *= scale
            price = data.open[0]
            target = self._size(weight, value, price)
            change = target - current
            crosses = np.sign(target) != np.sign(current)
            if change == 0 or (not crosses and abs(change) * price < self.p.rebalance_band * value):
                holdings.append((data, current))
                continue
            (sells if change < 0 else buys).append((data, change))
            holdings.append((data, target))
        for data, change in sells + buys:
            if change < 0:
                self.sell(data=data, size=-change)
            else:
                self.buy(data=data, size=change)
        if self.p.stop_loss:
            for data, size in holdings:
                self._place_stop(data, size)

    def _place_stop(self, data, size: float) -> None:
        """A stop for ``size`` units, checked against today's whole bar (a gap through it fills at the open)."""
        if size == 0:
            return
        position = self.getposition(data)
        same_side = np.sign(position.size) == np.sign(size)
        reference = position.price if same_side else data.open[0]
        if size > 0:
            order = self.sell(data=data, size=size, exectype=bt.Order.Stop, price=reference * (1 - self.p.stop_loss))
        else:
            order = self.buy(data=data, size=-size, exectype=bt.Order.Stop, price=reference * (1 + self.p.stop_loss))
        self.stop_orders[data._name] = order

    def notify_order(self, order):
        if order.status in (order.Margin, order.Rejected):
            self.rejected += 1
        if order.status != order.Completed:
            return
        stop = order.exectype == bt.Order.Stop
        self.fills.append(
            {
                "date": bt.num2date(order.executed.dt).date().isoformat(),
                "ticker": order.data._name,
                "size": order.executed.size,
                "price": order.executed.price,
                "commission": order.executed.comm,
                "kind": "stop" if stop else "rebalance",
            }
        )
        if stop:
            self.stop_orders.pop(order.data._name, None)
            self.stopped[order.data._name] = -np.sign(order.executed.size)

    def next(self):
        self.values.append(self.broker.getvalue())


class TradeLog(bt.Analyzer):
    """Closed round trips: ticker, opened, closed, size, entry and exit price, pnl, commission, bars."""

    def start(self):
        self.rows: list[dict] = []

    def notify_trade(self, trade):
        if not trade.isclosed:
            return
        opening = trade.history[0]
        closing = trade.history[-1]
        size = max((h.status.size for h in trade.history), key=abs)
        self.rows.append(
            {
                "ticker": trade.data._name,
                "opened": bt.num2date(trade.dtopen).date().isoformat(),
                "closed": bt.num2date(trade.dtclose).date().isoformat(),
                "size": size,
                "entry_price": opening.event.price,
                "exit_price": closing.event.price,
                "pnl": trade.pnl,
                "pnl_net": trade.pnlcomm,
                "commission": trade.commission,
                "bars": trade.barlen,
            }
        )

    def get_analysis(self):
        return self.rows


class DailyBook(bt.Analyzer):
    """Portfolio value, cash and each instrument's position size at every close."""

    def start(self):
        self.rows: list[dict] = []

    def next(self):
        row = {"date": self.strategy.datetime.date(0).isoformat(), "value": self.strategy.broker.getvalue(),
               "cash": self.strategy.broker.getcash()}
        for data in self.strategy.datas:
            row[f"position_{data._name}"] = self.strategy.getposition(data).size
        self.rows.append(row)

    def get_analysis(self):
        return self.rows


@dataclass
class BacktestResult:
    """What a backtest produced: ``book`` (date, value, cash, position_<ticker>), ``trades`` (closed round
    trips), ``fills`` (every execution) and the VaR-limit scale applied before each open."""

    book: pd.DataFrame
    trades: pd.DataFrame
    fills: pd.DataFrame
    var_scales: list[float] = field(default_factory=list)
    rejected_orders: int = 0


TRADE_COLUMNS = ["ticker", "opened", "closed", "size", "entry_price", "exit_price", "pnl", "pnl_net", "commission", "bars"]
FILL_COLUMNS = ["date", "ticker", "size", "price", "commission", "kind"]


def run_backtest(bars: pd.DataFrame, broker: dict, risk: dict | None = None) -> BacktestResult:
    """Backtest target weights. ``bars`` is indexed by (ticker, session) with open, high, low, close, volume
    and ``weight``; ``broker`` has cash, commission_bps, slippage_bps, fractional, rebalance_band; ``risk`` has
    stop_loss, var_limit, var_window_sessions (None disables each).

    >>> result = run_backtest(bars, {"cash": 100_000, "commission_bps": 5, "slippage_bps": 2})
    """
    risk = risk or {}
    cash = float(broker.get("cash", 100_000))
    commission_bps = float(broker.get("commission_bps", 0))
    slippage_bps = float(broker.get("slippage_bps", 0))
    for key, value in (("broker.cash", cash), ("broker.commission_bps", commission_bps), ("broker.slippage_bps", slippage_bps)):
        if not math.isfinite(value) or value < 0 or (key == "broker.cash" and value == 0):
            raise ConfigError(f"{key}: must be a non-negative number (cash positive), got {value}")
    cerebro = bt.Cerebro(stdstats=False, cheat_on_open=True, runonce=True, preload=True, tradehistory=True)
    cerebro.broker.setcash(cash)
    cerebro.broker.setcommission(commission=commission_bps / 1e4)
    cerebro.broker.set_slippage_perc(slippage_bps / 1e4, slip_open=True, slip_limit=True, slip_match=True, slip_out=False)
    cerebro.broker.set_checksubmit(False)
    for ticker, frame in bars.groupby(level="ticker", sort=True):
        frame = frame.droplevel("ticker")
        local_dates = pd.DatetimeIndex(frame.index.date)  # exchange sessions are one per date
        feed_frame = frame[["open", "high", "low", "close", "volume", "weight"]].set_axis(local_dates)
        cerebro.adddata(WeightFeed(dataname=feed_frame), name=str(ticker))
    cerebro.addstrategy(
        TargetWeightStrategy,
        fractional=bool(broker.get("fractional", True)),
        # A buy fills at open * (1 + slippage) and pays commission on that: size so both fit in the cash.
        cost_rate=(1 + slippage_bps / 1e4) * (1 + commission_bps / 1e4) * (1 + 1e-9) - 1,
        rebalance_band=float(broker.get("rebalance_band", 0.0)),
        stop_loss=risk.get("stop_loss"),
        var_limit=risk.get("var_limit"),
        var_window_sessions=int(risk.get("var_window_sessions") or 60),
    )
    cerebro.addanalyzer(TradeLog, _name="trades")
    cerebro.addanalyzer(DailyBook, _name="book")
    strategy = cerebro.run()[0]
    return BacktestResult(
        book=pd.DataFrame(strategy.analyzers.book.get_analysis()),
        trades=pd.DataFrame(strategy.analyzers.trades.get_analysis(), columns=TRADE_COLUMNS),
        fills=pd.DataFrame(strategy.fills, columns=FILL_COLUMNS),
        var_scales=strategy.var_scales,
        rejected_orders=strategy.rejected,
    )
