"""The summary page of a parameter sweep (one self-contained HTML file) and the deflated Sharpe ratio.

``write_sweep_summary`` turns the sweep runner's results frame (one row per run) into a page with the best
run and its deflated Sharpe ratio, the cache counts, a sortable table of every run, a heatmap of the chosen
metric over two parameters and an in-sample vs out-of-sample Sharpe scatter. Every text from data is escaped.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DataError
from reports import _svg
from reports._html import (
    SORT_SCRIPT, _cell, _document, _finite, _href, _integer, _link, _number, _number_cell, _percent, _table,
    _write_text_atomic,
)

# The results' Sharpe columns are annualised with this many daily returns a year (reports.metrics' default);
# the deflated Sharpe ratio works in daily units, so they are divided by its square root first.
PERIODS_PER_YEAR = 252
# The metrics whose best run is the smallest value; every other metric is better when larger (drawdown,
# VaR and CVaR are negative returns, so larger is better there too).
LOWER_IS_BETTER = ("volatility", "oos_mse")
# Gaussian daily returns: used for the deflated Sharpe ratio when the runner gives no skewness or kurtosis.
GAUSSIAN_SKEW = 0.0
GAUSSIAN_KURTOSIS = 3.0

_two = _number(2)
_eight = _number(8)
# Metric columns of the runs table, in order, with their formats; a column absent from the results is left out.
METRIC_FORMATS: dict[str, Callable[[Any], str]] = {
    "sharpe": _two,
    "cagr": _percent,
    "max_drawdown": _percent,
    "var_95": _percent,
    "cvar_95": _percent,
    "volatility": _percent,
    "trades": _integer,
    "final_value": _two,
    "in_sample_sharpe": _two,
    "out_of_sample_sharpe": _two,
    "sessions": _integer,
    "oos_mse": _eight,
    "oos_naive_zero_mse": _eight,
    "oos_hit_rate": _percent,
    "benchmark_sharpe": _two,
    "elapsed_seconds": _number(1),
}



# ---------------------------------------------------------------- probabilistic and deflated Sharpe ratio

# the standard normal of the Sharpe formulas (the standard library's: scipy.stats takes most of a second to import)
_NORMAL = NormalDist()


def expected_maximum_sharpe(sharpe_trials_std: float, n_trials: int) -> float:
    """Expected maximum Sharpe ratio of ``n_trials`` unskilled trials (true Sharpe 0) whose Sharpe ratios
    spread with standard deviation ``sharpe_trials_std`` (same units as that std): Bailey & López de Prado's
    SR0 = std * ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e))), γ the Euler–Mascheroni constant.

    0 for one trial or a NaN / zero std (no selection to correct for); NaN for fewer than one trial.

    >>> expected_maximum_sharpe(daily_sharpes.std(ddof=1), len(daily_sharpes))
    """
    if n_trials is None or n_trials < 1:
        return math.nan
    if n_trials == 1 or sharpe_trials_std is None or not math.isfinite(sharpe_trials_std) or sharpe_trials_std == 0:
        return 0.0
    if sharpe_trials_std < 0:
        return math.nan
    gamma = np.euler_gamma
    spread = (1 - gamma) * _NORMAL.inv_cdf(1 - 1 / n_trials) + gamma * _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e))
    return float(sharpe_trials_std * spread)


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark_sharpe: float, n_observations: int, skew: float, kurtosis: float
) -> float:
    """Probability that the true Sharpe ratio exceeds ``benchmark_sharpe`` (Bailey & López de Prado, 2012):
    Φ((SR - SR*) √(T - 1) / √(1 - skew·SR + (kurtosis - 1)/4 · SR²)).

    Units: ``sharpe`` and ``benchmark_sharpe`` are PER-PERIOD Sharpe ratios of the ``n_observations``
    returns (daily mean / daily std, not annualised: an annualised Sharpe divided by √252); ``kurtosis`` is
    the plain (non-excess) kurtosis, 3 for Gaussian returns. NaN when an input is missing, T < 2 or the
    variance term is not positive.

    >>> probabilistic_sharpe_ratio(annual_sharpe / math.sqrt(252), 0.0, len(returns), returns.skew(), returns.kurt() + 3)
    """
    if not _finite(sharpe, benchmark_sharpe, skew, kurtosis) or n_observations is None or n_observations < 2:
        return math.nan
    variance = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if variance <= 0:
        return math.nan
    z = (sharpe - benchmark_sharpe) * math.sqrt(n_observations - 1) / math.sqrt(variance)
    return float(_NORMAL.cdf(z))


def deflated_sharpe_ratio(
    sharpe: float, sharpe_trials_std: float, n_trials: int, n_observations: int, skew: float, kurtosis: float
) -> float:
    """Deflated Sharpe ratio (Bailey & López de Prado, 2014): the probability that the true Sharpe ratio of
    the selected (best) run exceeds the expected maximum Sharpe ratio of ``n_trials`` unskilled trials, i.e.
    ``probabilistic_sharpe_ratio(sharpe, expected_maximum_sharpe(sharpe_trials_std, n_trials), ...)``.

    Units: ``sharpe`` and ``sharpe_trials_std`` (the standard deviation of the trials' Sharpe ratios) are
    PER-PERIOD, non-annualised Sharpe ratios of ``n_observations`` daily returns (annualised / √252);
    ``skew`` and ``kurtosis`` (non-excess, 3 for Gaussian) describe the selected run's returns. With one
    trial, or a NaN or zero std, SR0 = 0 and this is the probabilistic Sharpe ratio against 0. NaN where
    undefined (missing input, fewer than one trial, T < 2, non-positive variance term).

    >>> deflated_sharpe_ratio(best / math.sqrt(252), sharpes.std(ddof=1) / math.sqrt(252), len(sharpes), 500, -0.3, 5.0)
    """
    threshold = expected_maximum_sharpe(sharpe_trials_std, n_trials)
    if not math.isfinite(threshold):
        return math.nan
    return probabilistic_sharpe_ratio(sharpe, threshold, n_observations, skew, kurtosis)


# ---------------------------------------------------------------- cells and values


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _value_text(value: Any) -> str:
    """A value from the results as shown: 250.0 reads 250, missing reads –."""
    if _missing(value):
        return "–"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _parameter_order(text: str) -> tuple[int, float, str]:
    """Numbers (also when written as text) in numeric order first, then the other values alphabetically."""
    try:
        number = float(text)
    except ValueError:
        return (1, 0.0, text)
    return (0, number, text) if math.isfinite(number) else (1, 0.0, text)


def _report_href(run_dir: Any, page_folder: Path) -> str | None:
    """``run_dir/report.html`` as a link from the page's folder: relative when possible, else a file URI.
    A relative ``run_dir`` is taken from the current folder (the runner's)."""
    if _missing(run_dir) or not str(run_dir).strip():
        return None
    return _href(Path(str(run_dir)) / "report.html", page_folder)


# ---------------------------------------------------------------- sections


def _validate(results: pd.DataFrame, params: list[str], metric: str, heatmap: tuple[str, str] | None) -> None:
    missing = [c for c in ("run_id", "status") if c not in results.columns]
    if missing:
        raise DataError(f"sweep results: missing column(s) {', '.join(missing)}")
    for key in params:
        if key not in results.columns:
            raise ConfigError(f"sweep parameter {key!r}: no such column in the sweep results")
    if metric not in results.columns:
        raise ConfigError(f"metric {metric!r}: no such column in the sweep results")
    if heatmap is not None:
        if len(heatmap) != 2 or heatmap[0] == heatmap[1]:
            raise ConfigError(f"heatmap {heatmap!r}: needs two different parameters")
        for key in heatmap:
            if key not in results.columns:
                raise ConfigError(f"heatmap parameter {key!r}: no such column in the sweep results")


def _numeric_frame(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A copy whose metric columns are float (None and text become NaN, infinities NaN), in best-first order."""
    frame = results.copy().reset_index(drop=True)
    for column in {*METRIC_FORMATS, metric, "sharpe"} & set(frame.columns):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64").replace([np.inf, -np.inf], np.nan)
    frame["_ok"] = frame["status"].astype(str) == "ok"
    score = frame[metric].where(frame["_ok"])
    frame["_score"] = -score if metric in LOWER_IS_BETTER else score
    return frame.sort_values("_score", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def _agreement_section(agreement: pd.DataFrame, metric: str) -> str:
    """The screened runs beside their backtrader re-runs: each engine's metric and final value, and the largest
    absolute differences (0 when the engines agree bit for bit)."""
    columns = [metric, "final_value"] if metric != "final_value" else [metric]
    worst = {column: agreement[f"abs_diff_{column}"].max() for column in columns}
    lines = ", ".join(f"max |&Delta; {html.escape(column)}| = <b class=\"agreement\">{value:.3g}</b>"
                      for column, value in worst.items())
    failed = int((agreement["status"].astype(str) != "ok").sum())
    note = f"<p>{len(agreement)} runs re-run; {lines}" + (f"; {failed} re-runs failed" if failed else "") + ".</p>"
    header = "".join(f"<th>{html.escape(name)}</th>" for name in
                     ["run (vectorized)", "run (backtrader)", *[f"{c} {e}" for c in columns for e in ("vectorized", "backtrader")],
                      *[f"|&Delta; {c}|" for c in columns]])
    rows = []
    for _, row in agreement.iterrows():
        cells = [html.escape(str(row["run_id"])), html.escape(str(row["backtrader_run_id"]))]
        cells += [f"{row[f'{c}_{e}']:.6g}" for c in columns for e in ("vectorized", "backtrader")]
        cells += [f"{row[f'abs_diff_{c}']:.3g}" for c in columns]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return note + f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _best_section(
    frame: pd.DataFrame,
    metric: str,
    page_folder: Path,
    n_observations: int | None,
    best_skew: float | None,
    best_kurtosis: float | None,
) -> tuple[str, int | None]:
    """The header's summary list, and the position of the best run in ``frame`` (None without one)."""
    ok = frame[frame["_ok"]]
    lines = [("Runs", str(len(frame))), ("Succeeded", str(len(ok))), ("Failed", str(len(frame) - len(ok)))]
    lines_html = [(label, html.escape(value)) for label, value in lines]
    if not len(frame) or pd.isna(frame.loc[0, "_score"]):
        return _summary(lines_html, [f"No successful run has a value of {metric}: there is no best run."]), None
    best = frame.loc[0]
    notes: list[str] = []
    format_value = METRIC_FORMATS.get(metric, _number(4))
    direction = "lowest" if metric in LOWER_IS_BETTER else "highest"
    lines_html += [
        (f"Best run ({direction} {metric})", html.escape(f"{format_value(best[metric])}, run {best['run_id']}")),
        ("Its overrides", f"<code>{html.escape(_value_text(best.get('overrides')))}</code>"),
        ("Its report", _link(_report_href(best.get("run_dir"), page_folder), "report.html")),
    ]

    # Deflated Sharpe ratio of the selected run: trials are the successful runs, in daily Sharpe units.
    root = math.sqrt(PERIODS_PER_YEAR)
    trial_sharpes = ok["sharpe"].dropna() if "sharpe" in ok.columns else pd.Series(dtype="float64")
    n_trials = len(ok)
    trials_std = float(trial_sharpes.std(ddof=1)) if len(trial_sharpes) > 1 else math.nan
    sharpe = float(best["sharpe"]) if "sharpe" in frame.columns and _finite(best["sharpe"]) else math.nan
    if n_observations is None and "sessions" in frame.columns and _finite(best["sessions"]):
        n_observations = int(best["sessions"])
    skew = GAUSSIAN_SKEW if best_skew is None else best_skew
    kurtosis = GAUSSIAN_KURTOSIS if best_kurtosis is None else best_kurtosis
    if best_skew is None or best_kurtosis is None:
        notes.append(
            "The best run's skewness and kurtosis were not given: the deflated Sharpe ratio assumes Gaussian "
            "daily returns (skewness 0, kurtosis 3)."
        )
    threshold = expected_maximum_sharpe(trials_std / root, n_trials)
    deflated = deflated_sharpe_ratio(sharpe / root, trials_std / root, n_trials, n_observations, skew, kurtosis)
    probabilistic = probabilistic_sharpe_ratio(sharpe / root, 0.0, n_observations, skew, kurtosis)
    observations = str(n_observations) if n_observations is not None else "–"
    lines_html += [
        ("Its Sharpe ratio (annual)", html.escape(_two(sharpe))),
        ("Deflated Sharpe ratio", f"<strong>{html.escape(_number(3)(deflated))}</strong>"),
        ("Probabilistic Sharpe ratio (vs 0)", html.escape(_number(3)(probabilistic))),
    ]
    notes.append(
        f"The deflated Sharpe ratio is the probability that the best run's true Sharpe ratio exceeds the expected "
        f"maximum Sharpe ratio of {n_trials} unskilled trials (the successful runs), SR0 = "
        f"{_two(threshold * root)} annualised, given the std of the trials' Sharpe ratios "
        f"({_two(trials_std)} annualised), {observations} daily returns, skewness {_two(skew)} and kurtosis "
        f"{_two(kurtosis)} (Bailey and López de Prado, 2014; computed in daily units, annual / √{PERIODS_PER_YEAR})."
    )
    if metric != "sharpe":
        notes.append(f"The best run is picked by {metric}; the deflated Sharpe ratio is that of its Sharpe ratio.")
    return _summary(lines_html, notes), 0


def _summary(lines_html: list[tuple[str, str]], notes: list[str]) -> str:
    """A definition list of (label, value already HTML) pairs, then the notes (plain text)."""
    items = "".join(f"<dt>{html.escape(label)}</dt><dd>{value}</dd>" for label, value in lines_html)
    return f'<dl class="summary">{items}</dl>' + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


def _cache_section(cache_stats: dict | None) -> str:
    if not cache_stats:
        return '<p class="note">No cache statistics were recorded.</p>'
    counts: dict[str, dict[str, int]] = {}
    for key, count in cache_stats.items():
        name, _, kind = str(key).rpartition(".")
        if not name:
            name, kind = kind, "count"
        counts.setdefault(name, {})[kind] = counts.get(name, {}).get(kind, 0) + int(count)
    table = pd.DataFrame.from_dict(counts, orient="index").fillna(0).astype("int64")
    kinds = [k for k in ("hit", "miss") if k in table.columns] + sorted(c for c in table.columns if c not in ("hit", "miss"))
    table = table[kinds].sort_index()
    table.index.name = "Cache"
    formats: dict[str, Callable[[Any], str]] = {}
    if {"hit", "miss"} <= set(table.columns):
        lookups = table["hit"] + table["miss"]
        table["hit rate"] = (table["hit"] / lookups.where(lookups > 0)).astype("float64")
        formats["hit rate"] = _percent
    return _table(table, formats)


def _runs_table(frame: pd.DataFrame, params: list[str], metric: str, page_folder: Path, best: int | None) -> str:
    metrics = [c for c in METRIC_FORMATS if c in frame.columns]
    if metric not in metrics:
        metrics.insert(0, metric)
    head = ["run", "status", *params, *metrics, "report", "error"]
    lines = [
        '<table id="runs" class="sortable">',
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for position, row in frame.iterrows():
        status = _value_text(row["status"])
        cells = [_cell(_value_text(row["run_id"]), css="text"), _cell(status, css="text")]
        for key in params:
            text = _value_text(row[key])
            group, number, _ = _parameter_order(text)
            sort_value = "" if _missing(row[key]) else (repr(number) if group == 0 else text)
            cells.append(_cell(text, sort_value, "text"))
        for column in metrics:
            cells.append(_number_cell(row[column], METRIC_FORMATS.get(column, _number(4))))
        cells.append(f"<td>{_link(_report_href(row.get('run_dir'), page_folder), 'report')}</td>")
        error = row.get("error")
        cells.append(_cell("" if _missing(error) else str(error), css="error"))
        css = "best" if position == best else ("failed" if status != "ok" else "")
        lines.append((f'<tr class="{css}">' if css else "<tr>") + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _varying(frame: pd.DataFrame, params: list[str]) -> list[str]:
    return [key for key in params if frame[key].map(_value_text).nunique() > 1]


def _heatmap_chart(grid: pd.DataFrame, x_key: str, y_key: str, metric: str) -> str:
    """The mean ``metric`` of each (y, x) cell of ``grid`` as coloured, annotated squares (inline SVG): red to
    green from the worst to the best value (``LOWER_IS_BETTER`` reversed), grey where no run has a value."""
    values = grid.to_numpy(dtype="float64")
    rows, columns = values.shape
    format_value = METRIC_FORMATS.get(metric, _number(3))
    x_labels, y_labels = [str(c) for c in grid.columns], [str(r) for r in grid.index]
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    reverse = metric in LOWER_IS_BETTER

    def fill(value: float) -> str:
        if not math.isfinite(value):
            return _svg.MISSING
        fraction = (value - low) / (high - low) if high > low else 0.5
        return _svg.colour(1.0 - fraction if reverse else fraction)

    cell_width, cell_height, char = (64.0 if columns <= 8 else 52.0), 28.0, 7.0
    slanted = columns > 6 or max(map(len, x_labels)) * char > cell_width
    left = 16.0 + max(max(map(len, y_labels)), len(y_key)) * char
    top = 52.0  # the title, then the y parameter's name above its values
    x_label_height = (max(map(len, x_labels)) * char * 0.72 + 14) if slanted else 20.0
    title = f"{metric} by {y_key} and {x_key}"
    width = max(left + columns * cell_width + 24 + 14 + 80, len(title) * 7.5 + 20)
    height = top + rows * cell_height + x_label_height + 24
    body = [_svg.text(width / 2, 16, title, 13, weight="bold"),
            _svg.text(left - 8, top - 12, y_key, 12, anchor="end")]
    for row in range(rows):
        y = top + row * cell_height
        body.append(_svg.text(left - 8, y + cell_height / 2, y_labels[row], 11, anchor="end"))
        for column in range(columns):
            x, value = left + column * cell_width, values[row, column]
            background = fill(value)
            body.append(_svg.rect(x, y, cell_width - 1, cell_height - 1, background,
                                  f' data-value="{float(value)!r}"' if math.isfinite(value) else ""))
            if math.isfinite(value):
                body.append(_svg.text(x + cell_width / 2, y + cell_height / 2, format_value(value), 11,
                                      fill="white" if _svg.dark(background) else "black"))
    bottom = top + rows * cell_height
    for column, label in enumerate(x_labels):
        x = left + (column + 0.5) * cell_width
        body.append(_svg.text(x, bottom + 12, label, 11, anchor="end", rotate=-45) if slanted
                    else _svg.text(x, bottom + 12, label, 11))
    body.append(_svg.text(left + columns * cell_width / 2, bottom + x_label_height + 10, x_key, 12))
    # The colour key: worst at the bottom, best at the top, with the two ends' values.
    key_x, steps = left + columns * cell_width + 24, 24
    key_height = max(rows * cell_height, 84.0)
    for step in range(steps):
        fraction = 1.0 - (step + 0.5) / steps
        body.append(_svg.rect(key_x, top + step * key_height / steps, 14, key_height / steps + 0.5,
                              _svg.colour(fraction)))
    best, worst = (low, high) if reverse else (high, low)
    body.append(_svg.text(key_x + 18, top + 6, f"{format_value(best)} (best)" if finite.size else "", 10,
                          anchor="start"))
    body.append(_svg.text(key_x + 18, top + key_height - 6, format_value(worst) if finite.size else "", 10,
                          anchor="start"))
    return _svg.svg(width, max(height, top + key_height + 8), f"heatmap of {metric}", body)


def _heatmap_section(frame: pd.DataFrame, params: list[str], metric: str, heatmap: tuple[str, str] | None) -> str:
    ok = frame[frame["_ok"]]
    varying = _varying(ok, params)
    if heatmap is None:
        if len(varying) < 2:
            named = ", ".join(varying) if varying else "none"
            note = f"Fewer than two parameters vary among the successful runs ({named}): no heatmap."
            return f'<p class="note">{html.escape(note)}</p>'
        heatmap = (varying[0], varying[1])
    x_key, y_key = heatmap
    x_text = ok[x_key].map(_value_text)
    y_text = ok[y_key].map(_value_text)
    grid = ok[metric].groupby([y_text, x_text]).mean().unstack()
    if grid.empty or not np.isfinite(grid.to_numpy(dtype="float64")).any():
        return f'<p class="note">{html.escape(f"No successful run has a value of {metric}: no heatmap.")}</p>'
    grid = grid.reindex(index=sorted(grid.index, key=_parameter_order), columns=sorted(grid.columns, key=_parameter_order))
    others = [key for key in varying if key not in heatmap]
    note = f"Each cell is the mean {metric} of the successful runs with those values of {y_key} and {x_key}"
    note += f", averaged over the other parameters that vary: {', '.join(others)}." if others else "."
    return _heatmap_chart(grid, x_key, y_key, metric) + f'\n<p class="note">{html.escape(note)}</p>'


def _overfitting_section(frame: pd.DataFrame, best: int | None) -> str:
    columns = ["in_sample_sharpe", "out_of_sample_sharpe"]
    if not set(columns) <= set(frame.columns):
        return '<p class="note">The results have no in-sample and out-of-sample Sharpe ratios: no scatter.</p>'
    both = frame[frame["_ok"]][columns].dropna()
    if both.empty:
        return '<p class="note">No successful run has both an in-sample and an out-of-sample Sharpe ratio: no scatter.</p>'
    low = float(min(both.min().min(), 0.0))
    high = float(max(both.max().max(), 0.0))
    margin = 0.05 * (high - low) if high > low else 1.0
    start, end = low - margin, high + margin
    left, top, size = 58.0, 34.0, 340.0
    width = left + size + 40

    def x_of(value: float) -> float:
        return left + (value - start) / (end - start) * size

    def y_of(value: float) -> float:
        return top + size - (value - start) / (end - start) * size

    body = [_svg.text(width / 2, 16, "In-sample vs out-of-sample Sharpe, one point per run", 12, weight="bold"),
            _svg.rect(left, top, size, size, "none", ' stroke="#888"')]
    for tick in _svg.ticks(start, end):
        body += [_svg.line(x_of(tick), top, x_of(tick), top + size, "#e4e4e4"),
                 _svg.line(left, y_of(tick), left + size, y_of(tick), "#e4e4e4"),
                 _svg.text(x_of(tick), top + size + 12, f"{tick:g}", 10),
                 _svg.text(left - 6, y_of(tick), f"{tick:g}", 10, anchor="end")]
    body += [_svg.text(left + size / 2, top + size + 32, "In-sample Sharpe", 12),
             _svg.text(14, top + size / 2, "Out-of-sample Sharpe", 12, rotate=-90),
             _svg.line(x_of(start), y_of(start), x_of(end), y_of(end), "grey", ' stroke-dasharray="5 4"')]
    for run, (in_sample, out_of_sample) in both.iterrows():
        body.append(f'<circle class="run" cx="{x_of(in_sample):.1f}" cy="{y_of(out_of_sample):.1f}" r="4" '
                    f'fill="#1f77b4" fill-opacity="0.75"><title>in sample {in_sample:.2f}, out of sample '
                    f'{out_of_sample:.2f}</title></circle>')
    if best is not None and best in both.index:
        body.append(_svg.star(x_of(both.loc[best, columns[0]]), y_of(both.loc[best, columns[1]]), 9, "crimson",
                              ' class="best"'))
    body += ['<circle cx="72" cy="48" r="4" fill="#1f77b4" fill-opacity="0.75"/>',
             _svg.text(82, 48, "run", 10, anchor="start"),
             _svg.star(72, 64, 7, "crimson"), _svg.text(82, 64, "best run", 10, anchor="start"),
             _svg.line(64, 80, 80, 80, "grey", ' stroke-dasharray="5 4"'),
             _svg.text(82, 80, "y = x", 10, anchor="start")]
    note = (
        f"{len(both)} successful run(s). Points far below the dashed y = x line did much worse out of sample than "
        "in sample: a sign of overfitting."
    )
    return (_svg.svg(width, top + size + 46, "in-sample vs out-of-sample Sharpe", body)
            + f'\n<p class="note">{html.escape(note)}</p>')


# ---------------------------------------------------------------- page


def write_sweep_summary(
    results: pd.DataFrame,
    params: list[str],
    path: Path,
    metric: str = "sharpe",
    heatmap: tuple[str, str] | None = None,
    best_skew: float | None = None,
    best_kurtosis: float | None = None,
    cache_stats: dict | None = None,
    title: str = "newsbt sweep",
    n_observations: int | None = None,
    agreement: pd.DataFrame | None = None,
    agreement_metric: str | None = None,
) -> Path:
    """Write the sweep's summary page to ``path`` (one self-contained HTML file, through a temporary name)
    and return ``path``.

    ``results`` has one row per run: ``run_id``, ``status`` ("ok" or "error"), ``error``, ``overrides``,
    ``run_dir``, ``elapsed_seconds``, one column per swept key in ``params`` and the metric columns
    (annualised Sharpe ratios, as ``reports.metrics`` writes them). The best run is the successful run with
    the highest ``metric`` (lowest for the ones in ``LOWER_IS_BETTER``); its deflated Sharpe ratio counts
    the successful runs as trials and uses ``n_observations`` daily returns (default: its ``sessions``) and
    ``best_skew`` / ``best_kurtosis`` of its daily returns (non-excess kurtosis; Gaussian when not given).
    ``heatmap`` names the two parameters of the heatmap (default: the first two that vary). ``cache_stats``
    is a dict like ``engine.cache.CACHE_STATS``. Links to run reports are relative to the page's folder.
    ``agreement`` (``engine.grid.engine_agreement``): the screened runs re-run with backtrader, shown with the
    largest difference of ``agreement_metric`` (default ``metric``) and final value between the two engines.

    >>> write_sweep_summary(results, ["strategy.threshold", "walk_forward.train_sessions"], sweep_dir / "summary.html")
    """
    path = Path(path)
    params = list(params)
    _validate(results, params, metric, heatmap)
    page_folder = path.parent
    frame = _numeric_frame(results, metric)
    summary, best = _best_section(frame, metric, page_folder, n_observations, best_skew, best_kurtosis)
    body = [
        summary,
        "<h2>Signal cache</h2>",
        _cache_section(cache_stats),
        f"<h2>{html.escape(metric)} over the grid</h2>",
        _heatmap_section(frame, params, metric, heatmap),
        "<h2>Overfitting: in-sample vs out-of-sample Sharpe</h2>",
        _overfitting_section(frame, best),
        "<h2>All runs</h2>",
        '<p class="note">Click a column header to sort by it; click again to reverse.</p>',
        _runs_table(frame, params, metric, page_folder, best),
    ]
    if agreement is not None:
        body[2:2] = ["<h2>Screen: vectorised runs re-run with backtrader</h2>",
                     _agreement_section(agreement, agreement_metric or metric)]
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(_document(title, body, (SORT_SCRIPT,)), path)
    return path
