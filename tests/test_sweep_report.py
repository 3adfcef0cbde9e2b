"""reports/sweep.py: the deflated Sharpe ratio against the published example and a hand computation, and the
summary page of a planted 12-run sweep."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from scipy import integrate, stats

from engine.errors import ConfigError
from reports.sweep import (
    deflated_sharpe_ratio,
    expected_maximum_sharpe,
    probabilistic_sharpe_ratio,
    write_sweep_summary,
)

EULER_GAMMA = 0.5772156649015329
RAW_ERROR = "ValueError: bad <b>threshold</b> & co"
PARAMS = ["strategy.threshold", "walk_forward.train_sessions", "strategy"]


def test_deflated_sharpe_ratio_of_the_published_example():
    # Bailey & López de Prado (2014), section 5: annual SR 2.5 over 5 years of daily data (T = 1250 at 250 a
    # year), 100 trials whose annual Sharpe ratios have variance 0.5, skewness -3, kurtosis 10: SR0 ≈ 0.1132
    # per day and DSR ≈ 0.9004.
    std = math.sqrt(0.5 / 250)
    assert expected_maximum_sharpe(std, 100) == pytest.approx(0.1132, abs=1e-4)
    assert deflated_sharpe_ratio(2.5 / math.sqrt(250), std, 100, 1250, -3.0, 10.0) == pytest.approx(0.9004, abs=2e-4)


def test_deflated_sharpe_ratio_by_hand():
    sharpe, std, trials, observations, skew, kurtosis = 0.1, 0.03, 20, 500, -0.4, 6.0
    threshold = std * (
        (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / 20) + EULER_GAMMA * stats.norm.ppf(1 - 1 / (20 * math.e))
    )
    z = (0.1 - threshold) * math.sqrt(499) / math.sqrt(1 + 0.4 * 0.1 + 5.0 / 4 * 0.01)
    assert deflated_sharpe_ratio(sharpe, std, trials, observations, skew, kurtosis) == pytest.approx(stats.norm.cdf(z))
    # Gaussian returns, SR 0.05 against 0 over 101 days: z = 0.05 * 10 / sqrt(1 + 0.5 * 0.0025).
    assert probabilistic_sharpe_ratio(0.05, 0.0, 101, 0.0, 3.0) == pytest.approx(
        stats.norm.cdf(0.5 / math.sqrt(1.00125))
    )


@pytest.mark.parametrize("trials", [10, 100])
def test_expected_maximum_sharpe_is_close_to_the_exact_expected_maximum(trials):
    # E[max of N standard normals] = ∫ x N φ(x) Φ(x)^(N-1) dx; the paper's formula approximates it.
    exact, _ = integrate.quad(lambda x: x * trials * stats.norm.pdf(x) * stats.norm.cdf(x) ** (trials - 1), -10, 10)
    assert expected_maximum_sharpe(1.0, trials) == pytest.approx(exact, rel=0.03)
    assert expected_maximum_sharpe(0.5, trials) == pytest.approx(0.5 * expected_maximum_sharpe(1.0, trials))


def test_deflated_sharpe_ratio_properties():
    arguments = dict(sharpe=0.1, sharpe_trials_std=0.04, n_observations=750, skew=-0.2, kurtosis=4.0)
    values = [deflated_sharpe_ratio(n_trials=n, **arguments) for n in (1, 2, 5, 20, 100, 1000)]
    assert all(a > b for a, b in zip(values, values[1:]))
    psr = probabilistic_sharpe_ratio(0.1, 0.0, 750, -0.2, 4.0)
    assert values[0] == psr
    # No spread between trials, or an unknown one: nothing to deflate.
    assert deflated_sharpe_ratio(0.1, 0.0, 50, 750, -0.2, 4.0) == psr
    assert deflated_sharpe_ratio(0.1, math.nan, 50, 750, -0.2, 4.0) == psr
    assert probabilistic_sharpe_ratio(0.0, 0.0, 250, 0.0, 3.0) == 0.5
    assert probabilistic_sharpe_ratio(0.0, 0.0, 250, 1.5, 9.0) == 0.5
    assert expected_maximum_sharpe(0.04, 1) == 0.0


def test_undefined_sharpe_ratios_are_nan():
    assert math.isnan(deflated_sharpe_ratio(math.nan, 0.04, 10, 500, 0.0, 3.0))
    assert math.isnan(deflated_sharpe_ratio(0.1, 0.04, 0, 500, 0.0, 3.0))
    assert math.isnan(deflated_sharpe_ratio(0.1, 0.04, 10, 1, 0.0, 3.0))
    assert math.isnan(probabilistic_sharpe_ratio(0.1, 0.0, 500, math.nan, 3.0))
    # 1 - skew SR + (kurt - 1)/4 SR² = 1 - 20 * 0.1 + 0.5 / 4 * 0.01 < 0.
    assert math.isnan(probabilistic_sharpe_ratio(0.1, 0.0, 500, 20.0, 1.5))


def planted_results(root: Path) -> pd.DataFrame:
    """12 runs: threshold x train sessions x strategy; sharpe = 1000 * threshold + train / 1000 (+ 0.5 for
    'cluster'), so the best run is threshold 0.003, 250 sessions, cluster; one regression run fails."""
    rows = []
    for threshold in (0.001, 0.002, 0.003):
        for train in (100, 250):
            for strategy in ("regression", "cluster"):
                run_id = f"{strategy[:3]}-{threshold}-{train}"
                failed = (threshold, train, strategy) == (0.002, 100, "regression")
                sharpe = None if failed else 1000 * threshold + train / 1000 + (0.5 if strategy == "cluster" else 0.0)
                rows.append(
                    {
                        "run_id": run_id,
                        "status": "error" if failed else "ok",
                        "error": RAW_ERROR if failed else None,
                        "overrides": f"strategy={strategy} strategy.threshold={threshold} walk_forward.train_sessions={train}",
                        "run_dir": str(root / "runs" / run_id),
                        "elapsed_seconds": 1.5,
                        "strategy.threshold": threshold,
                        "walk_forward.train_sessions": train,
                        "strategy": strategy,
                        "sharpe": sharpe,
                        "cagr": None if failed else 0.1,
                        "max_drawdown": None if failed else -0.2,
                        "in_sample_sharpe": None if failed else sharpe + 0.5,
                        "out_of_sample_sharpe": sharpe,
                        "sessions": None if failed else 500,
                    }
                )
    return pd.DataFrame(rows)


def runs_table_rows(text: str) -> list[str]:
    body = re.search(r'<table id="runs".*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    return re.findall(r"<tr[ >].*?</tr>", body, re.S)


def test_summary_page_of_a_twelve_run_sweep(tmp_path):
    results = planted_results(tmp_path)
    path = write_sweep_summary(
        results, PARAMS, tmp_path / "sweep" / "summary.html",
        cache_stats={"transformer.hit": 39, "transformer.miss": 1, "topics-window.hit": 3},
        best_skew=0.0, best_kurtosis=3.0, title="Sweep <1>",
    )
    assert path == tmp_path / "sweep" / "summary.html"
    assert [p.name for p in path.parent.iterdir()] == ["summary.html"]
    text = path.read_text(encoding="utf-8")
    rows = runs_table_rows(text)
    assert len(rows) == 12
    assert "clu-0.003-250" in rows[0] and 'class="best"' in rows[0]  # best first
    assert 'href="../runs/clu-0.003-250/report.html"' in text
    assert html_escaped(RAW_ERROR) in text and RAW_ERROR not in text and "<b>" not in text
    assert "Sweep &lt;1&gt;" in text
    assert text.count('<svg class="chart"') == 2 and "<img" not in text  # the heatmap and the scatter
    assert 'aria-label="heatmap of sharpe"' in text
    assert "averaged over the other parameters that vary: strategy" in text
    assert "<td>97.50%</td>" in text  # transformer hit rate 39 / 40
    assert "http://" not in text and "https://" not in text
    # The deflated Sharpe ratio of the header, worked out from the 11 ok runs' annual Sharpe ratios.
    sharpes = pd.to_numeric(results["sharpe"]).dropna()
    root = math.sqrt(252)
    threshold = sharpes.std(ddof=1) / root * (
        (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / 11) + EULER_GAMMA * stats.norm.ppf(1 - 1 / (11 * math.e))
    )
    best = 3.0 + 0.25 + 0.5
    expected = stats.norm.cdf((best / root - threshold) * math.sqrt(499) / math.sqrt(1 + 0.5 * (best / root) ** 2))
    assert f"<dt>Deflated Sharpe ratio</dt><dd><strong>{expected:.3f}</strong></dd>" in text


def html_escaped(raw: str) -> str:
    return raw.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cell_fills(text: str) -> dict[float, str]:
    """The heatmap's cells: value -> fill colour (a cell without a value has no data-value)."""
    return {float(value): fill for fill, value in re.findall(r'fill="([^"]*)" data-value="([^"]*)"', text)}


def test_heatmap_colours_run_from_worst_red_to_best_green(tmp_path):
    # Cells (mean sharpe over strategy): train 100: 1.35, 2.60 (its regression run failed), 3.35; train 250:
    # 1.50, 2.50, 3.50. ColorBrewer's RdYlGn from the worst (1.35: #a50026) to the best (3.50: #006837); 2.50
    # lies at (2.50 - 1.35) / 2.15 = 0.5349 of the way, 0.349 of the way from #ffffbf (sixth of 11 colours) to
    # #d9ef8b: (255 - 38 * 0.349, 255 - 16 * 0.349, 191 - 52 * 0.349) = (242, 249, 173) = #f2f9ad.
    results = planted_results(tmp_path)
    text = write_sweep_summary(results, PARAMS, tmp_path / "s.html").read_text(encoding="utf-8")
    fills = cell_fills(text)
    assert sorted(fills) == pytest.approx([1.35, 1.5, 2.5, 2.6, 3.35, 3.5])
    by_value = {round(value, 6): fill for value, fill in fills.items()}
    assert (by_value[1.35], by_value[3.5], by_value[2.5]) == ("#a50026", "#006837", "#f2f9ad")
    # A metric where lower is better runs the other way; a cell no run reaches is grey and has no value.
    results["volatility"] = results["sharpe"]
    missing = (results["strategy.threshold"] == 0.001) & (results["walk_forward.train_sessions"] == 100)
    text = write_sweep_summary(results[~missing], PARAMS, tmp_path / "v.html", metric="volatility").read_text(
        encoding="utf-8")
    by_value = {round(value, 6): fill for value, fill in cell_fills(text).items()}
    assert sorted(by_value) == [1.5, 2.5, 2.6, 3.35, 3.5]
    assert (by_value[1.5], by_value[3.5]) == ("#006837", "#a50026")
    assert text.count('fill="#dddddd"') == 1


def test_scatter_places_each_run_at_its_two_sharpe_ratios(tmp_path):
    # in-sample = sharpe + 0.5, out-of-sample = sharpe; both axes span [0 - m, 4.25 + m], m = 0.05 * 4.25, over
    # 340 px from x = 58 (left) and y = 34 + 340 (bottom).
    results = planted_results(tmp_path)
    text = write_sweep_summary(results, PARAMS, tmp_path / "s.html").read_text(encoding="utf-8")
    points = [(float(x), float(y)) for x, y in re.findall(r'<circle class="run" cx="([^"]*)" cy="([^"]*)"', text)]
    start, span = -0.2125, 4.25 + 2 * 0.2125
    ok = results[results["status"] == "ok"]
    expected = [(58 + (s + 0.5 - start) / span * 340, 374 - (s - start) / span * 340) for s in ok["sharpe"]]
    assert sorted(points) == [pytest.approx(point, abs=0.051) for point in sorted(expected)]
    assert text.count('class="best"') == 2  # the best run's row and its star


def test_heatmap_needs_two_varying_parameters(tmp_path):
    results = planted_results(tmp_path)
    single = results[(results["walk_forward.train_sessions"] == 250) & (results["strategy"] == "cluster")]
    text = write_sweep_summary(single, PARAMS, tmp_path / "one.html").read_text(encoding="utf-8")
    assert len(runs_table_rows(text)) == 3
    assert "Fewer than two parameters vary among the successful runs (strategy.threshold): no heatmap." in text
    assert "Gaussian" in text  # no skewness or kurtosis given


def test_page_without_successful_runs_or_sharpe_columns(tmp_path):
    results = planted_results(tmp_path).drop(columns=["in_sample_sharpe", "out_of_sample_sharpe"])
    results["status"] = "error"
    text = write_sweep_summary(results, PARAMS, tmp_path / "failed.html").read_text(encoding="utf-8")
    assert len(runs_table_rows(text)) == 12
    assert "there is no best run" in text and "no scatter" in text and "no heatmap" in text
    assert "No cache statistics" in text


def test_unknown_heatmap_parameter_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="walk_forward.test_sessions"):
        write_sweep_summary(
            planted_results(tmp_path), PARAMS, tmp_path / "x.html", heatmap=("strategy", "walk_forward.test_sessions")
        )
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*"))
