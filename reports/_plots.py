"""Charts of the tear sheet's "Risk and model" section, each returned as an inline base64 PNG <img> tag.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state), so making a chart never
opens a window nor leaks figures. Labels drawn from data escape ``$`` so mathtext never parses them.
"""
from __future__ import annotations

import base64
import io
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

WIDTH_INCHES = 9.0
DPI = 90


def _label(text: object) -> str:
    """Data text safe for a matplotlib label: a literal ``$`` must not start mathtext."""
    return str(text).replace("$", r"\$")


def _image(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}" />'


def _date_axis(axis) -> None:
    locator = mdates.AutoDateLocator()
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axis.grid(True, alpha=0.3)


def _session_dates(frame: pd.DataFrame) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(frame.index.get_level_values("session")).tz_convert(None)


def busiest_tickers(signals: pd.DataFrame, column: str, limit: int) -> list[str]:
    """Up to ``limit`` tickers with the most non-missing values of ``column`` (ties alphabetical)."""
    counts = signals[column].notna().groupby(level="ticker").sum()
    counts = counts[counts > 0]
    order = sorted(counts.index, key=lambda ticker: (-counts[ticker], str(ticker)))
    return order[:limit]


def signal_chart(signals: pd.DataFrame, column: str, tickers: list[str], window_sessions: int) -> str:
    """Rolling mean of ``column`` over ``window_sessions`` sessions, one line per ticker."""
    figure = Figure(figsize=(WIDTH_INCHES, 3.2))
    axis = figure.subplots()
    for ticker in tickers:
        series = signals.xs(ticker, level="ticker")[column].astype("float64")
        series.index = pd.DatetimeIndex(series.index).tz_convert(None)
        rolling = series.rolling(window_sessions, min_periods=1).mean()
        axis.plot(rolling.index.to_numpy(), rolling.to_numpy(), linewidth=1.0, label=_label(ticker))
    axis.set_title(_label(f"{column}: rolling mean over {window_sessions} sessions"), fontsize=10)
    axis.axhline(0.0, color="grey", linewidth=0.6)
    _date_axis(axis)
    axis.legend(fontsize=8, ncol=min(len(tickers), 6), loc="upper left")
    return _image(figure, f"{column} over time")


def regime_chart(signals: pd.DataFrame, tickers: list[str]) -> str:
    """Each ticker's close as a line coloured by the regime in force at each session (grey: none yet)."""
    figure = Figure(figsize=(WIDTH_INCHES, 2.4 * len(tickers)))
    axes = np.atleast_1d(figure.subplots(len(tickers), 1, sharex=True, squeeze=False)[:, 0])
    palette = matplotlib.colormaps["tab10"]
    regimes = sorted({int(r) for r in signals["regime"].dropna().unique()})
    colour_of = {regime: palette(i % 10) for i, regime in enumerate(regimes)}
    for axis, ticker in zip(axes, tickers):
        frame = signals.xs(ticker, level="ticker")[["close", "regime"]].dropna(subset=["close"])
        dates = mdates.date2num(pd.DatetimeIndex(frame.index).tz_convert(None).to_pydatetime())
        close = frame["close"].to_numpy()
        points = np.column_stack([dates, close])
        segments = np.stack([points[:-1], points[1:]], axis=1) if len(points) > 1 else np.empty((0, 2, 2))
        colours = [
            colour_of.get(int(r), (0.6, 0.6, 0.6, 1.0)) if np.isfinite(r) else (0.6, 0.6, 0.6, 1.0)
            for r in frame["regime"].to_numpy()[:-1]
        ]
        axis.add_collection(LineCollection(segments, colors=colours, linewidths=1.3))
        if len(points):
            axis.set_xlim(dates.min(), dates.max() + (1 if len(points) == 1 else 0))
            axis.set_ylim(close.min() * 0.98, close.max() * 1.02)
        axis.xaxis_date()
        axis.set_ylabel(_label(ticker), fontsize=9)
        _date_axis(axis)
    handles = [Line2D([0], [0], color=colour_of[r], linewidth=2) for r in regimes]
    handles.append(Line2D([0], [0], color=(0.6, 0.6, 0.6, 1.0), linewidth=2))
    axes[0].legend(handles, [f"regime {r}" for r in regimes] + ["no regime"], fontsize=8, ncol=len(handles), loc="upper left")
    axes[0].set_title("Close coloured by regime", fontsize=10)
    return _image(figure, "regime timeline")


def topic_chart(signals: pd.DataFrame, topic_columns: list[str], labels: dict[str, str]) -> str:
    """Stacked area of the monthly mean prevalence of each topic column, pooled over tickers."""
    dates = _session_dates(signals)
    monthly = signals[topic_columns].astype("float64").groupby(dates.to_period("M").to_timestamp()).mean().fillna(0.0)
    figure = Figure(figsize=(WIDTH_INCHES, 3.6))
    axis = figure.subplots()
    axis.stackplot(
        monthly.index.to_numpy(),
        *[monthly[c].to_numpy() for c in topic_columns],
        labels=[_label(labels.get(c, c)) for c in topic_columns],
        alpha=0.85,
    )
    axis.set_title("Topic prevalence (monthly mean over tickers)", fontsize=10)
    _date_axis(axis)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _image(figure, "topic prevalence")


def comparison_chart(strategies: dict[str, pd.Series], benchmarks: dict[str, pd.Series]) -> str:
    """Growth of 1 (top) and drawdown below the running peak (bottom) of each run's daily returns, overlaid;
    ``benchmarks`` are drawn dashed on the top panel. Series are indexed by date."""
    figure = Figure(figsize=(WIDTH_INCHES, 6.4))
    growth_axis, drawdown_axis = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    for label, returns in strategies.items():
        wealth = (1.0 + returns.astype("float64")).cumprod()
        # The peak starts at the initial wealth 1, as in reports.metrics.
        drawdown = wealth / np.maximum(wealth.cummax(), 1.0) - 1.0
        dates = pd.DatetimeIndex(returns.index).to_numpy()
        (line,) = growth_axis.plot(dates, wealth.to_numpy(), linewidth=1.2, label=_label(label))
        drawdown_axis.plot(dates, 100 * drawdown.to_numpy(), linewidth=1.0, color=line.get_color())
    for label, returns in benchmarks.items():
        wealth = (1.0 + returns.astype("float64")).cumprod()
        growth_axis.plot(pd.DatetimeIndex(returns.index).to_numpy(), wealth.to_numpy(), linewidth=1.0,
                         linestyle="--", color="grey", alpha=0.8, label=_label(label))
    growth_axis.axhline(1.0, color="grey", linewidth=0.6)
    growth_axis.set_ylabel("growth of 1")
    growth_axis.set_title("Equity curves (growth of 1) and drawdowns", fontsize=10)
    growth_axis.legend(fontsize=8, loc="upper left")
    drawdown_axis.set_ylabel("drawdown (%)")
    for axis in (growth_axis, drawdown_axis):
        _date_axis(axis)
    return _image(figure, "equity curves and drawdowns")
