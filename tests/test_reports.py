"""reports/: metrics worked out by hand, agreement with QuantStats, and the tear sheet on planted run folders."""
from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from reports.metrics import drawdown_periods, forecast_metrics, information_coefficients, performance_metrics
from reports.tearsheet import write_tearsheet

METRIC_KEYS = [
    "sessions", "total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown", "max_drawdown_days",
    "calmar", "var_95", "cvar_95", "var_95_parametric", "cvar_95_parametric", "hit_rate", "trades",
    "benchmark_total_return", "benchmark_cagr", "benchmark_sharpe", "benchmark_max_drawdown", "benchmark_var_95",
    "alpha", "beta", "information_ratio",
]

# Two drawdowns: -5% from day 2 to day 4 (recovered on day 5), then -10% on day 6, still under water on day 7.
PLANTED = [0.1, -0.05, 0.02, 0.0, 0.05, -0.1, 0.05]


def planted_returns() -> pd.Series:
    return pd.Series(PLANTED, index=pd.date_range("2024-01-01", periods=7, freq="D"))


def test_performance_metrics_by_hand():
    metrics = performance_metrics(planted_returns(), trades=3, periods_per_year=7)
    assert list(metrics) == METRIC_KEYS
    json.dumps(metrics, allow_nan=False)
    wealth = 1.1 * 0.95 * 1.02 * 1.0 * 1.05 * 0.9 * 1.05
    assert metrics["sessions"] == 7 and metrics["trades"] == 3
    assert metrics["total_return"] == pytest.approx(wealth - 1)
    # 7 sessions at 7 sessions a year is exactly one year: CAGR equals the total return.
    assert metrics["cagr"] == pytest.approx(wealth - 1)
    assert metrics["max_drawdown"] == pytest.approx(-0.1)
    assert metrics["max_drawdown_days"] == 3  # Jan 2 .. Jan 4
    assert metrics["calmar"] == pytest.approx((wealth - 1) / 0.1)
    # Sorted: -0.1, -0.05, 0, 0.02, 0.05, 0.05, 0.1; the 5% quantile sits 0.3 of the way from -0.1 to -0.05.
    assert metrics["var_95"] == pytest.approx(-0.085)
    assert metrics["cvar_95"] == pytest.approx(-0.1)
    assert metrics["hit_rate"] == pytest.approx(4 / 6)  # the flat day is not active
    mean, std = statistics.mean(PLANTED), statistics.stdev(PLANTED)
    assert metrics["volatility"] == pytest.approx(std * math.sqrt(7))
    assert metrics["sharpe"] == pytest.approx(mean / std * math.sqrt(7))
    downside = math.sqrt((0.05**2 + 0.1**2) / 7)
    assert metrics["sortino"] == pytest.approx(mean / downside * math.sqrt(7))
    normal = statistics.NormalDist()
    z = normal.inv_cdf(0.05)
    assert metrics["var_95_parametric"] == pytest.approx(mean + z * std)
    assert metrics["cvar_95_parametric"] == pytest.approx(mean - std * normal.pdf(z) / 0.05)
    assert all(metrics[key] is None for key in METRIC_KEYS[15:])


def test_cagr_over_two_years_and_degenerate_series():
    metrics = performance_metrics(planted_returns(), periods_per_year=3.5)
    total = 1.1 * 0.95 * 1.02 * 1.05 * 0.9 * 1.05
    assert metrics["cagr"] == pytest.approx(math.sqrt(total) - 1)
    single = performance_metrics(pd.Series([0.02, np.nan]))
    assert single["sessions"] == 1 and single["total_return"] == pytest.approx(0.02)
    assert single["volatility"] is None and single["sharpe"] is None and single["max_drawdown"] == 0.0
    empty = performance_metrics(pd.Series([], dtype=float))
    assert empty["sessions"] == 0 and empty["total_return"] is None


def test_benchmark_metrics_planted_alpha_and_beta():
    benchmark = pd.Series([0.01, -0.02, 0.015, 0.0, -0.005, 0.02], index=pd.bdate_range("2024-01-01", periods=6))
    strategy = 0.001 + 2.0 * benchmark
    metrics = performance_metrics(strategy, benchmark, periods_per_year=252)
    assert metrics["beta"] == pytest.approx(2.0)
    assert metrics["alpha"] == pytest.approx(0.001 * 252)
    active = list(strategy - benchmark)
    assert metrics["information_ratio"] == pytest.approx(statistics.mean(active) / statistics.stdev(active) * math.sqrt(252))
    assert metrics["benchmark_max_drawdown"] == pytest.approx(-0.02)  # day 2; later lows are shallower
    assert metrics["benchmark_total_return"] == pytest.approx(1.01 * 0.98 * 1.015 * 0.995 * 1.02 - 1)


def test_drawdown_periods_by_hand():
    periods = drawdown_periods(planted_returns(), top=5)
    assert list(periods.columns) == ["start", "valley", "end", "days", "max_drawdown"]
    assert periods["start"].dt.strftime("%m-%d").tolist() == ["01-06", "01-02"]
    assert periods["valley"].dt.strftime("%m-%d").tolist() == ["01-06", "01-02"]
    assert periods["end"].dt.strftime("%m-%d").tolist() == ["01-07", "01-04"]
    assert periods["days"].tolist() == [2, 3]
    assert periods["max_drawdown"].tolist() == pytest.approx([-0.1, -0.05])
    assert len(drawdown_periods(planted_returns(), top=1)) == 1


def test_metrics_agree_with_quantstats():
    import quantstats as qs

    rng = np.random.default_rng(7)
    index = pd.bdate_range("2018-01-01", periods=600)
    returns = pd.Series(rng.normal(0.0004, 0.012, 600), index=index)
    returns[returns.abs() < 0.002] = 0.0
    benchmark = pd.Series(0.5 * returns.to_numpy() + rng.normal(0.0002, 0.008, 600), index=index)
    metrics = performance_metrics(returns, benchmark)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {
            "sharpe": qs.stats.sharpe(returns),
            "sortino": qs.stats.sortino(returns),
            "cagr": qs.stats.cagr(returns),
            "volatility": qs.stats.volatility(returns),
            "max_drawdown": qs.stats.max_drawdown(returns),
            "calmar": qs.stats.calmar(returns),
            "var_95_parametric": qs.stats.value_at_risk(returns),
            "cvar_95_parametric": qs.stats.cvar(returns),
            "cvar_95": qs.stats.cvar(returns, method="historical"),
            "hit_rate": qs.stats.win_rate(returns),
            "beta": qs.stats.greeks(returns, benchmark)["beta"],
            "alpha": qs.stats.greeks(returns, benchmark)["alpha"],
            # QuantStats' information ratio is daily; ours is annualised.
            "information_ratio": qs.stats.information_ratio(returns, benchmark) * math.sqrt(252),
            "benchmark_sharpe": qs.stats.sharpe(benchmark),
            "benchmark_max_drawdown": qs.stats.max_drawdown(benchmark),
        }
        details = qs.stats.drawdown_details(qs.stats.to_drawdown_series(returns))
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-9), key
    assert metrics["max_drawdown_days"] == details["days"].max()
    ours = drawdown_periods(returns, top=len(details))
    theirs = details.sort_values("max drawdown", kind="stable").reset_index(drop=True)
    assert ours["start"].dt.strftime("%Y-%m-%d").tolist() == theirs["start"].tolist()
    assert ours["end"].dt.strftime("%Y-%m-%d").tolist() == theirs["end"].tolist()
    assert ours["days"].tolist() == theirs["days"].tolist()
    assert (ours["max_drawdown"] * 100).tolist() == pytest.approx(theirs["max drawdown"].tolist())


def test_forecast_metrics_by_hand():
    predictions = pd.DataFrame(
        {"prediction": [0.01, -0.02, 0.03, 0.0, 0.5], "realized": [0.02, -0.01, -0.01, 0.01, np.nan]}
    )
    metrics = forecast_metrics(predictions)
    assert metrics["n"] == 4
    assert metrics["mse"] == pytest.approx(19e-4 / 4)  # errors 0.01, 0.01, -0.04, 0.01
    assert metrics["naive_zero_mse"] == pytest.approx(7e-4 / 4)
    assert metrics["r2_oos"] == pytest.approx(1 - 19 / 7)
    assert metrics["r2"] == pytest.approx(1 - 19 / 6.75)  # realized mean 0.0025: squared deviations sum 6.75e-4
    assert metrics["hit_rate"] == pytest.approx(0.5)  # (+,+) (-,-) hit; (+,-) and (0,+) miss


def signals_frame(tickers: list[str], sessions: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [tickers, pd.date_range("2024-01-02 14:30", periods=sessions, freq="B", tz="UTC")], names=["ticker", "session"]
    )
    forward = rng.normal(0, 0.01, len(index))
    frame = pd.DataFrame({"forward_return": forward}, index=index)
    frame.loc[(slice(None), index.levels[1][-1]), "forward_return"] = np.nan  # unknown on the last session
    return frame


def test_information_coefficient_of_monotone_signal():
    signals = signals_frame(["AAA", "BBB", "CCC"], 10)
    signals["sentiment"] = np.exp(50 * signals["forward_return"])  # strictly increasing in the forward return
    signals["contrarian"] = -signals["forward_return"] ** 3
    signals["flat"] = 1.0
    signals["close"] = signals["open"] = 100.0  # price diagnostics, not signals
    table = information_coefficients(signals)
    assert table.index.tolist() == ["sentiment", "contrarian", "flat"]
    assert table.loc["sentiment", "ic"] == pytest.approx(1.0)
    assert table.loc["sentiment", "n"] == 27  # 3 tickers x 9 sessions with a known forward return
    assert table.loc["sentiment", "t_stat"] == math.inf
    assert table.loc["sentiment", "cross_sectional_ic"] == pytest.approx(1.0)
    assert table.loc["sentiment", "cross_sectional_sessions"] == 9
    assert table.loc["contrarian", "ic"] == pytest.approx(-1.0)
    assert math.isnan(table.loc["flat", "ic"])


def test_information_coefficient_by_hand():
    signals = signals_frame(["AAA"], 5)
    signals["forward_return"] = [0.01, 0.03, 0.02, 0.04, np.nan]
    signals["sentiment"] = [1.0, 2.0, 3.0, 4.0, 5.0]
    row = information_coefficients(signals, ["sentiment"]).loc["sentiment"]
    # Rank differences 0, 1, -1, 0: rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert row["ic"] == pytest.approx(0.8)
    assert row["n"] == 4
    assert row["t_stat"] == pytest.approx(0.8 * math.sqrt(2 / 0.36))
    assert math.isnan(row["cross_sectional_ic"])  # one ticker: no cross-section


def write_run(run_dir: Path, sessions: int, optional: bool = True) -> None:
    """A planted run folder following engine.run's contract."""
    rng = np.random.default_rng(3)
    run_dir.mkdir(parents=True, exist_ok=True)
    dates = pd.bdate_range("2023-01-02", periods=sessions)
    returns = rng.normal(0.0005, 0.01, sessions)
    benchmark = rng.normal(0.0003, 0.009, sessions)
    returns[0] = benchmark[0] = 0.0
    pd.DataFrame(
        {
            "date": dates.strftime("%Y-%m-%d"),
            "value": 1e5 * np.cumprod(1 + returns),
            "returns": returns,
            "benchmark_value": 1e5 * np.cumprod(1 + benchmark),
            "benchmark_returns": benchmark,
        }
    ).to_csv(run_dir / "equity.csv", index=False)
    pd.DataFrame(
        columns=["ticker", "opened", "closed", "size", "entry_price", "exit_price", "pnl", "pnl_net", "commission", "bars"]
    ).to_csv(run_dir / "trades.csv", index=False)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"strategy": {"name": "cluster"}, "data": {"name": "demo<i>"}}))
    (run_dir / "metrics.json").write_text(json.dumps(performance_metrics(pd.Series(returns))))
    if not optional:
        return
    tickers = ["A&B", "BBB", "CCC"]
    session_index = pd.DatetimeIndex(dates.tz_localize("UTC") + pd.Timedelta(hours=14, minutes=30))
    index = pd.MultiIndex.from_product([tickers, session_index], names=["ticker", "session"])
    n = len(index)
    signals = pd.DataFrame(
        {
            "sentiment": rng.normal(0, 1, n),
            "sentiment_count": rng.integers(0, 5, n).astype(float),
            "topic_0": rng.uniform(0, 1, n),
            "topic_1": rng.uniform(0, 1, n),
            "regime": rng.integers(0, 3, n).astype(float),
            "prediction": rng.normal(0, 0.01, n),
            "target": rng.choice([0.0, 1 / 3], n),
            "close": 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))),
            "forward_return": rng.normal(0, 0.01, n),
        },
        index=index,
    )
    signals.loc[signals.index[:20], "regime"] = np.nan  # before the first fitted window
    signals.to_parquet(run_dir / "signals.parquet")
    predictions = signals.reset_index()[["ticker", "session", "prediction", "forward_return"]].iloc[60:]
    predictions.rename(columns={"forward_return": "realized"}).to_csv(run_dir / "predictions.csv", index=False)
    pd.DataFrame(
        {
            "window_start": ["2023-01-02"] * 3 + ["2023-03-01"] * 3,
            "regime": [0, 1, 2] * 2,
            "mean_return": [0.001, -0.002, 0.0005] * 2,
            "t_stat": [2.1, -1.5, 0.3] * 2,
            "count": [40, 30, 20] * 2,
            "position": [1, -1, 0] * 2,
        }
    ).to_csv(run_dir / "regime_map.csv", index=False)
    pd.DataFrame(
        {
            "window_start": ["2023-01-02", "2023-01-02", "2023-03-01", "2023-03-01"],
            "topic": [0, 1, 0, 1],
            "words": ["rates fed", "earnings beat", "rates inflation $usd", "<script>alert(1)</script> merger"],
        }
    ).to_csv(run_dir / "topics.csv", index=False)


def test_tearsheet_with_every_section(tmp_path, capfd):
    write_run(tmp_path, sessions=80)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_tearsheet(tmp_path)
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; merger" in text
    assert "<script>alert(1)" not in text
    assert "<title>cluster on demo&lt;i&gt;</title>" in text and "demo<i>" not in text
    assert "A&amp;B" in text
    assert "Key Performance Metrics" in text  # the QuantStats part
    for heading in ["Risk and model", "Tail risk and drawdown", "drawdown periods", "Signal: sentiment",
                    "Regression forecasts", "Regimes", "Topics", "Information coefficients"]:
        assert heading in text, heading
    assert text.count("data:image/png;base64,") == 3  # signal, regime and topic charts
    assert text.index("Risk and model") < text.rindex("</body>")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.yaml", "equity.csv", "metrics.json", "predictions.csv", "regime_map.csv", "report.html",
         "signals.parquet", "topics.csv", "trades.csv"]
    )


def test_tearsheet_of_a_single_session(tmp_path):
    write_run(tmp_path, sessions=1, optional=False)
    path = write_tearsheet(tmp_path, title="Short <run>")
    text = path.read_text(encoding="utf-8")
    assert "too few for the QuantStats tear sheet" in text
    assert "Key Performance Metrics" not in text
    assert "<h1>Short &lt;run&gt;</h1>" in text and "Risk and model" in text
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.yaml", "equity.csv", "metrics.json", "report.html", "trades.csv"]


def test_tearsheet_of_a_strategy_that_never_trades(tmp_path):
    write_run(tmp_path, sessions=30, optional=False)
    equity = pd.read_csv(tmp_path / "equity.csv")
    equity["returns"] = 0.0
    equity.to_csv(tmp_path / "equity.csv", index=False)
    text = write_tearsheet(tmp_path).read_text(encoding="utf-8")
    assert "daily returns are constant" in text and "Key Performance Metrics" not in text
    assert "<title>cluster on demo&lt;i&gt;</title>" in text
