"""Performance, risk and model-quality numbers of a finished run, computed with numpy and pandas (scipy only for
the signals' rank correlations).

``performance_metrics`` is what ``engine.run`` writes to ``metrics.json``; the tear sheet and the sweep
summary read the same numbers. Conventions follow QuantStats 0.0.86 wherever it defines the same quantity
(the tests check this); the few deliberate differences are stated in each docstring.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

# DIAGNOSTIC_COLUMNS: the columns of a signals frame written beside the signals, never signals themselves (the
# session's bar and forward_return); defined once, where the engine splits them from the features.
from engine.align import DIAGNOSTIC_COLUMNS

VAR_CONFIDENCE = 0.95


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: numpy numbers become Python ones, NaN and infinities become None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(returns: pd.Series) -> pd.Series:
    if returns.dtype == np.float64:  # the usual case, without pandas' conversions: the same rows and values
        finite = np.isfinite(returns.to_numpy())
        return returns if finite.all() else returns[finite]
    return pd.to_numeric(returns, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna().astype("float64")


def _drawdown(returns: pd.Series) -> pd.Series:
    """Fraction below the running peak of the wealth 1 * prod(1 + r); the peak starts at the initial 1."""
    wealth = (1.0 + returns).cumprod()
    peak = np.maximum.accumulate(np.concatenate([[1.0], wealth.to_numpy()]))[1:]
    return wealth / peak - 1.0


def _period_days(start: Any, end: Any, start_position: int, end_position: int) -> int:
    if isinstance(start, pd.Timestamp) and isinstance(end, pd.Timestamp):
        return int((end - start).days) + 1
    return end_position - start_position + 1


def drawdown_periods(returns: pd.Series, top: int = 5) -> pd.DataFrame:
    """The ``top`` deepest drawdowns of daily ``returns``, deepest first.

    Columns: ``start`` (first session under water), ``valley`` (deepest session), ``end`` (last session
    under water, or the last session if not recovered), ``days`` (calendar days end - start + 1 for a
    DatetimeIndex, else sessions) and ``max_drawdown`` (negative fraction). Same periods as QuantStats'
    ``drawdown_details(to_drawdown_series(r))``, whose ``max drawdown`` is in percent.

    >>> drawdown_periods(equity["returns"], top=5)
    """
    columns = ["start", "valley", "end", "days", "max_drawdown"]
    returns = _clean(returns)
    if returns.empty:
        return pd.DataFrame(columns=columns)
    drawdown = _drawdown(returns)
    underwater = (drawdown < 0).to_numpy()
    values = drawdown.to_numpy()
    index = returns.index
    rows = []
    position = 0
    while position < len(values):
        if not underwater[position]:
            position += 1
            continue
        start = position
        while position < len(values) and underwater[position]:
            position += 1
        end = position - 1
        valley = start + int(np.argmin(values[start : end + 1]))
        rows.append(
            (index[start], index[valley], index[end], _period_days(index[start], index[end], start, end), values[valley])
        )
    periods = pd.DataFrame(rows, columns=columns)
    periods = periods.sort_values("max_drawdown", kind="stable").head(top).reset_index(drop=True)
    periods["days"] = periods["days"].astype("int64")
    periods["max_drawdown"] = periods["max_drawdown"].astype("float64")
    return periods


def _longest_drawdown_days(returns: pd.Series, drawdown: pd.Series) -> int:
    """The longest of ``drawdown_periods(returns)``' days (0 without a drawdown), from the ``drawdown`` of the
    cleaned ``returns``: each period's first and last session at once, for a DatetimeIndex or numbered index."""
    index = returns.index
    if not (isinstance(index, pd.DatetimeIndex) and not index.hasnans) and index.dtype.kind not in "iuf":
        periods = drawdown_periods(returns, top=len(returns))  # labels that may or may not be Timestamps
        return int(periods["days"].max()) if len(periods) else 0
    underwater = (drawdown.to_numpy() < 0).astype(np.int8)
    edges = np.diff(underwater, prepend=0, append=0)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    if not len(starts):
        return 0
    if isinstance(index, pd.DatetimeIndex):  # calendar days, end - start + 1, as _period_days counts them
        return int(((index[ends] - index[starts]).days + 1).max())
    return int((ends - starts + 1).max())


def _return_metrics(returns: pd.Series, periods_per_year: int) -> dict[str, Any]:
    """The single-series block of ``performance_metrics`` on already cleaned returns."""
    n = len(returns)
    if n == 0:
        keys = [
            "total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown", "max_drawdown_days",
            "calmar", "var_95", "cvar_95", "var_95_parametric", "cvar_95_parametric", "hit_rate",
        ]
        return {key: None for key in keys}
    values = returns.to_numpy()
    wealth = float(np.prod(1.0 + values))
    total_return = wealth - 1.0
    cagr = wealth ** (periods_per_year / n) - 1.0 if wealth >= 0 else math.nan
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    volatility = std * math.sqrt(periods_per_year)
    sharpe = mean / std * math.sqrt(periods_per_year) if std > 0 else math.nan
    downside = math.sqrt(float(np.sum(values[values < 0] ** 2)) / n)
    sortino = mean / downside * math.sqrt(periods_per_year) if downside > 0 else math.nan
    drawdown = _drawdown(returns)
    max_drawdown = float(drawdown.min())
    calmar = cagr / abs(max_drawdown) if max_drawdown < 0 else math.nan

    alpha = 1.0 - VAR_CONFIDENCE
    var_historical = float(np.quantile(values, alpha))
    cvar_historical = float(values[values <= var_historical].mean())
    if std > 0:
        # scipy.stats.norm.ppf(alpha, mean, std) and norm.pdf(norm.ppf(alpha)) with the standard library's normal
        # quantile (within 2 ulp of scipy's ndtri; importing scipy takes a few tenths of a second in every process
        # that writes a run's metrics)
        quantile = NormalDist().inv_cdf(alpha)
        var_parametric = quantile * std + mean
        cvar_parametric = mean - std * float(np.exp(-(quantile * quantile) / 2.0) / np.sqrt(2 * np.pi)) / alpha
    else:
        var_parametric = cvar_parametric = math.nan
    active = values[values != 0]
    hit_rate = float((active > 0).mean()) if len(active) else math.nan
    return {
        "total_return": total_return,
        "cagr": cagr,
        "volatility": volatility,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": max_drawdown,
        "max_drawdown_days": _longest_drawdown_days(returns, drawdown),
        "calmar": calmar,
        "var_95": var_historical,
        "cvar_95": cvar_historical,
        "var_95_parametric": var_parametric,
        "cvar_95_parametric": cvar_parametric,
        "hit_rate": hit_rate,
    }


BENCHMARK_KEYS = [
    "benchmark_total_return", "benchmark_cagr", "benchmark_sharpe", "benchmark_max_drawdown",
    "benchmark_var_95", "alpha", "beta", "information_ratio",
]


def _relative_metrics(returns: pd.Series, benchmark: pd.Series, periods_per_year: int) -> dict[str, Any]:
    own = _return_metrics(benchmark, periods_per_year)
    keys = ["total_return", "cagr", "sharpe", "max_drawdown", "var_95"]
    result: dict[str, Any] = {f"benchmark_{key}": own[key] for key in keys}
    paired = pd.concat({"strategy": returns, "benchmark": benchmark}, axis=1, join="inner").dropna()
    alpha = beta = information_ratio = math.nan
    if len(paired) > 1:
        strategy_values = paired["strategy"].to_numpy()
        benchmark_values = paired["benchmark"].to_numpy()
        covariance = np.cov(strategy_values, benchmark_values, ddof=1)
        if covariance[1, 1] > 0:
            beta = covariance[0, 1] / covariance[1, 1]
            alpha = (strategy_values.mean() - beta * benchmark_values.mean()) * periods_per_year
        active = strategy_values - benchmark_values
        tracking = active.std(ddof=1)
        if tracking > 0:
            information_ratio = active.mean() / tracking * math.sqrt(periods_per_year)
    result.update(alpha=alpha, beta=beta, information_ratio=information_ratio)
    return result


def performance_metrics(
    returns: pd.Series,
    benchmark: pd.Series | None = None,
    trades: int | None = None,
    periods_per_year: int = 252,
) -> dict[str, Any]:
    """Headline numbers of daily simple ``returns`` as a JSON-safe dict (NaN and infinities become None).

    Keys, always present in this order: ``sessions`` (returns used; NaN rows are dropped), ``total_return``,
    ``cagr``, ``volatility`` (annual, ddof 1), ``sharpe`` (rf 0, annualised), ``sortino`` (downside
    deviation over all days), ``max_drawdown`` (negative fraction, peak starts at the initial wealth 1),
    ``max_drawdown_days`` (longest time under water in calendar days, QuantStats' "Longest DD Days"; sessions
    when the index is not a DatetimeIndex), ``calmar``, ``var_95`` / ``cvar_95`` (historical daily 95% VaR
    and CVaR), ``var_95_parametric`` / ``cvar_95_parametric`` (Gaussian, mean and ddof-1 std), ``hit_rate``
    (share of positive days among non-zero days), ``trades``; then ``benchmark_total_return``,
    ``benchmark_cagr``, ``benchmark_sharpe``, ``benchmark_max_drawdown``, ``benchmark_var_95``, ``alpha``
    (daily OLS intercept times ``periods_per_year``), ``beta``, ``information_ratio`` (annualised); these are
    None without a benchmark, so every run's metrics have the same keys.

    Sign convention: VaR and CVaR are returns, so a loss is NEGATIVE: ``var_95`` is the 5% quantile of daily
    returns (linear interpolation) and ``cvar_95`` the mean of the returns at or below it, as QuantStats'
    ``value_at_risk`` / ``cvar`` report them.

    Differences from QuantStats 0.0.86: ``cagr`` uses the same year fraction (sessions / periods_per_year,
    not calendar days); ``information_ratio`` is annualised (QuantStats' is daily: ours = its value *
    sqrt(periods_per_year)); undefined ratios are None where QuantStats returns 0 or inf (e.g. ``hit_rate``
    with no active day, ``alpha``/``beta`` against a constant benchmark, ``calmar`` without a drawdown).

    >>> performance_metrics(equity["returns"], equity["benchmark_returns"], trades=len(trades))["sharpe"]
    """
    returns = _clean(returns)
    result: dict[str, Any] = {"sessions": len(returns)}
    result.update(_return_metrics(returns, periods_per_year))
    result["trades"] = trades
    if benchmark is not None:
        result.update(_relative_metrics(returns, _clean(benchmark), periods_per_year))
    else:
        result.update({key: None for key in BENCHMARK_KEYS})
    return {key: _plain(value) for key, value in result.items()}


def forecast_metrics(predictions: pd.DataFrame) -> dict[str, Any]:
    """Out-of-sample quality of return forecasts: a frame with ``prediction`` and ``realized`` columns.

    Returns a JSON-safe dict: ``n`` (rows with both values), ``mse``, ``naive_zero_mse`` (MSE of always
    forecasting 0, i.e. mean realized^2), ``r2_oos`` = 1 - mse / naive_zero_mse (Campbell-Thompson style,
    against the zero forecast), ``r2`` = 1 - SSE / sum((realized - mean)^2) (against the in-sample mean of
    the realized values, as sklearn's r2_score), ``hit_rate`` (share of rows where sign(prediction) ==
    sign(realized), zeros included as their own sign).

    >>> forecast_metrics(pd.read_csv(run_dir / "predictions.csv"))["r2_oos"]
    """
    frame = predictions[["prediction", "realized"]].apply(pd.to_numeric, errors="coerce").dropna()
    n = len(frame)
    if n == 0:
        return {"n": 0, "mse": None, "naive_zero_mse": None, "r2_oos": None, "r2": None, "hit_rate": None}
    prediction = frame["prediction"].to_numpy()
    realized = frame["realized"].to_numpy()
    errors = realized - prediction
    mse = float(np.mean(errors**2))
    naive = float(np.mean(realized**2))
    spread = float(np.sum((realized - realized.mean()) ** 2))
    result = {
        "n": n,
        "mse": mse,
        "naive_zero_mse": naive,
        "r2_oos": 1.0 - mse / naive if naive > 0 else math.nan,
        "r2": 1.0 - float(np.sum(errors**2)) / spread if spread > 0 else math.nan,
        "hit_rate": float(np.mean(np.sign(prediction) == np.sign(realized))),
    }
    return {key: _plain(value) for key, value in result.items()}


def signal_columns(signals: pd.DataFrame) -> list[str]:
    """The signal columns of a run's signals frame: every column but the price fields and forward_return."""
    return [c for c in signals.columns if c not in DIAGNOSTIC_COLUMNS]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y)) / denominator if denominator > 0 else math.nan


def _cross_sectional_ics(signal: pd.DataFrame, forward: pd.DataFrame, min_tickers: int) -> pd.Series:
    """Spearman IC of each session (row of the session x ticker matrices) with at least ``min_tickers``
    tickers where both values are present and neither side is constant."""
    both = signal.notna().to_numpy() & forward.notna().to_numpy()
    keep = both.sum(axis=1) >= min_tickers
    if not keep.any():
        return pd.Series(dtype="float64")
    x = signal.where(both)[keep].rank(axis=1).to_numpy()
    y = forward.where(both)[keep].rank(axis=1).to_numpy()
    x = x - np.nanmean(x, axis=1, keepdims=True)
    y = y - np.nanmean(y, axis=1, keepdims=True)
    denominator = np.sqrt(np.nansum(x * x, axis=1) * np.nansum(y * y, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        ics = np.where(denominator > 0, np.nansum(x * y, axis=1) / denominator, np.nan)
    return pd.Series(ics, index=signal.index[keep]).dropna()


def information_coefficients(
    signals: pd.DataFrame, columns: list[str] | None = None, min_tickers: int = 3
) -> pd.DataFrame:
    """Rank information coefficient of each signal column against ``forward_return``.

    One row per column (index ``signal``): ``ic`` = Spearman correlation pooled over all (ticker, session)
    rows where both are present, ``n`` = those rows, ``t_stat`` = ic * sqrt((n - 2) / (1 - ic^2)) (inf for
    |ic| = 1), ``cross_sectional_ic`` = mean over sessions of the per-session Spearman correlation across
    tickers (sessions with at least ``min_tickers`` pairs and no constant side; NaN when the frame has
    fewer than ``min_tickers`` tickers), ``cross_sectional_sessions`` = sessions in that mean. ``columns``
    defaults to every column but the diagnostics.

    >>> information_coefficients(pd.read_parquet(run_dir / "signals.parquet"))
    """
    columns = signal_columns(signals) if columns is None else list(columns)
    tickers = signals.index.get_level_values("ticker").nunique() if len(signals) else 0
    forward = pd.to_numeric(signals["forward_return"], errors="coerce").replace([np.inf, -np.inf], np.nan)
    forward_wide = forward.unstack("ticker") if tickers >= min_tickers else None
    rows = []
    for column in columns:
        pairs = pd.DataFrame(
            {"signal": pd.to_numeric(signals[column], errors="coerce"), "forward_return": forward}
        ).replace([np.inf, -np.inf], np.nan).dropna()
        n = len(pairs)
        ic = t_stat = cross_sectional = math.nan
        sessions = 0
        if n >= 2:
            from scipy.stats import rankdata

            ic = _pearson(rankdata(pairs["signal"].to_numpy()), rankdata(pairs["forward_return"].to_numpy()))
        if n > 2 and math.isfinite(ic):
            with np.errstate(divide="ignore"):
                t_stat = ic * math.sqrt(n - 2) / math.sqrt(1 - ic**2) if ic**2 < 1 else math.copysign(math.inf, ic)
        if forward_wide is not None and n:
            signal_wide = pd.to_numeric(signals[column], errors="coerce").replace([np.inf, -np.inf], np.nan)
            per_session = _cross_sectional_ics(signal_wide.unstack("ticker"), forward_wide, min_tickers)
            sessions = len(per_session)
            cross_sectional = float(per_session.mean()) if sessions else math.nan
        rows.append(
            {
                "signal": column, "ic": ic, "n": n, "t_stat": t_stat,
                "cross_sectional_ic": cross_sectional, "cross_sectional_sessions": sessions,
            }
        )
    table = pd.DataFrame(rows, columns=["signal", "ic", "n", "t_stat", "cross_sectional_ic", "cross_sectional_sessions"])
    return table.set_index("signal")
