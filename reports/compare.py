"""A page comparing finished runs: ``python -m reports.compare RUN_A RUN_B [...] [--out PATH]``.

One self-contained HTML file: the equity curves and drawdowns overlaid, every metric of metrics.json with its
difference from the first run, the config keys whose values differ, and the trades and fills that are not the
same in every run. Reads only the run folders' files.
"""
from __future__ import annotations

import html
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from engine.errors import DataError, NewsbtError
from reports import _plots
from reports._html import OneLineParser, _cell, _document, _integer, _number, _number_cell, _percent, _write_text_atomic
from reports.index import flatten, read_yaml, value_text

DEFAULT_OUT = Path("compare.html")
# Rows of the trades and fills tables beyond this are counted, not shown.
MAX_TABLE_ROWS = 500
# metrics.json keys shown first, in this order; the others follow alphabetically.
METRIC_ORDER = [
    "sharpe", "cagr", "total_return", "max_drawdown", "var_95", "cvar_95", "volatility", "sortino", "calmar",
    "trades", "final_value", "oos_mse", "oos_r2_oos", "oos_hit_rate",
]
# Keys (less a benchmark_ or oos_ prefix) that are fractions shown as percentages.
PERCENT_KEYS = {
    "total_return", "cagr", "volatility", "max_drawdown", "var_95", "cvar_95", "var_95_parametric",
    "cvar_95_parametric", "hit_rate", "alpha",
}
EIGHT_DIGIT_KEYS = {"mse", "naive_zero_mse"}


@dataclass
class Run:
    """What the comparison reads of one run folder."""

    label: str
    folder: Path
    metrics: dict[str, float | int | None]
    config: dict[str, Any] | None
    returns: pd.Series
    benchmark: pd.Series
    trades: pd.DataFrame | None
    fills: pd.DataFrame | None


def _numeric_metrics(metrics: dict) -> dict[str, float | int | None]:
    """The number-valued (or null) leaves of metrics.json, nested ones as dotted keys."""
    return {
        key: value for key, value in flatten(metrics).items()
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    }


def _csv_text(path: Path) -> pd.DataFrame | None:
    """A CSV file's cells as the text written (exact comparison, no float parsing), or None without the file."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot read ({error})") from error


def load_run(folder: Path, label: str) -> Run:
    """Read one finished run folder; a DataError naming the folder or file when it is not one.

    >>> load_run(Path("runs/20250101-120000-cluster-djia"), "A").metrics["sharpe"]
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such run folder")
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        raise DataError(f"{folder}: no metrics.json (not a finished run folder?)")
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{metrics_file}: cannot read ({error})") from error
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_file}: not a JSON object")
    equity_file = folder / "equity.csv"
    if not equity_file.is_file():
        raise DataError(f"{folder}: no equity.csv (not a finished run folder?)")
    equity = pd.read_csv(equity_file)
    missing = [c for c in ("date", "returns", "benchmark_returns") if c not in equity.columns]
    if missing:
        raise DataError(f"{equity_file}: missing column(s) {', '.join(missing)}")
    try:
        dates = pd.DatetimeIndex(pd.to_datetime(equity["date"], format="ISO8601"))
    except ValueError as error:
        raise DataError(f"{equity_file}: column 'date' is not an ISO date ({error})") from error
    config_file = folder / "config.yaml"
    config = read_yaml(config_file) if config_file.is_file() else None
    if config is not None and not isinstance(config, dict):
        raise DataError(f"{config_file}: not a mapping")
    return Run(
        label=label,
        folder=folder,
        metrics=_numeric_metrics(metrics),
        config=flatten(config) if config is not None else None,
        returns=pd.Series(pd.to_numeric(equity["returns"], errors="coerce").to_numpy(), index=dates).fillna(0.0),
        benchmark=pd.Series(pd.to_numeric(equity["benchmark_returns"], errors="coerce").to_numpy(), index=dates).fillna(0.0),
        trades=_csv_text(folder / "trades.csv"),
        fills=_csv_text(folder / "fills.csv"),
    )


def _labels(folders: list[Path]) -> list[str]:
    """Each folder's name; the parent joins in where two names are the same, then a number."""
    names = [f.name or str(f) for f in folders]
    labels = [f"{f.parent.name}/{f.name}" if names.count(n) > 1 else n for f, n in zip(folders, names)]
    return [f"{label} ({i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


# ---------------------------------------------------------------- sections


def _kind(key: str) -> str:
    base = key.removeprefix("benchmark_").removeprefix("oos_")
    if base in PERCENT_KEYS:
        return "percent"
    if base in EIGHT_DIGIT_KEYS:
        return "eight"
    return "number"


def _formatter(key: str, values: list[Any]) -> Callable[[Any], str]:
    kind = _kind(key)
    if kind == "percent":
        return _percent
    if kind == "eight":
        return _number(8)
    if all(v is None or isinstance(v, int) for v in values):
        return _integer
    return _number(4)


def _signed(key: str, values: list[Any]) -> Callable[[Any], str]:
    kind = _kind(key)
    integers = all(v is None or isinstance(v, int) for v in values)

    def format_difference(value: Any) -> str:
        if value is None:
            return "–"
        if kind == "percent":
            return f"{100 * value:+.2f} pp"
        if kind == "eight":
            return f"{value:+.8f}"
        return f"{int(value):+d}" if integers else f"{value:+.4f}"

    return format_difference


def _metric_order(keys: set[str]) -> list[str]:
    return [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))


def _metrics_section(runs: list[Run]) -> str:
    keys = _metric_order(set().union(*(run.metrics for run in runs)))
    first = runs[0]
    head = ["Metric", *[run.label for run in runs], *[f"{run.label} − {first.label}" for run in runs[1:]]]
    lines = [
        '<table id="metrics">',
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for key in keys:
        values = [run.metrics.get(key) for run in runs]
        format_value, format_difference = _formatter(key, values), _signed(key, values)
        cells = [_cell(key, css="text")]
        for run, value in zip(runs, values):
            cells.append(_number_cell(value, format_value, {"data-run": run.label, "data-metric": key}))
        for value in values[1:]:
            difference = value - values[0] if value is not None and values[0] is not None else None
            cells.append(_number_cell(difference, format_difference))
        same = len({json.dumps(v) for v in values}) == 1
        lines.append(('<tr class="same">' if same else "<tr>") + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return '<p class="note">Grey rows are equal in every run.</p>\n' + "\n".join(lines)


def _config_section(runs: list[Run]) -> str:
    notes = [f"{run.label} has no config.yaml." for run in runs if run.config is None]
    configs = [run.config or {} for run in runs]
    keys = sorted(set().union(*configs))
    missing = object()
    differing = [k for k in keys if len({json.dumps(c.get(k, missing), default=repr) for c in configs}) > 1]
    parts = [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    if not differing:
        parts.append('<p class="note">The configs are the same.</p>')
        return "\n".join(parts)
    head = ["Key", *[run.label for run in runs]]
    lines = [
        '<table id="config">',
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for key in differing:
        cells = [_cell(key, css="text")]
        cells += [_cell(value_text(c[key]) if key in c else "–", css="text") for c in configs]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    parts.append(f'<p class="note">{len(differing)} of {len(keys)} keys differ (dotted keys of config.yaml).</p>')
    parts.append("\n".join(lines))
    return "\n".join(parts)


def _cell_text(text: str) -> str:
    """A CSV cell as shown: long decimals to 6 significant digits (the comparison itself uses the full text)."""
    if "." in text:
        try:
            return f"{float(text):.6g}"
        except ValueError:
            return text
    return text


def _rows_section(runs: list[Run], attribute: str, file_name: str, noun: str) -> str:
    """The rows of ``file_name`` (trades or fills) that are not the same, as many times, in every run."""
    present = [(run, getattr(run, attribute)) for run in runs if getattr(run, attribute) is not None]
    notes = [f"{run.label} has no {file_name}." for run in runs if getattr(run, attribute) is None]
    if len(present) < 2:
        notes.append(f"Fewer than two runs have {file_name}: nothing to compare.")
        return "\n".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    columns = [c for c in present[0][1].columns if all(c in frame.columns for _, frame in present)]
    counts = [Counter(map(tuple, frame[columns].itertuples(index=False, name=None))) for _, frame in present]
    every = set().union(*counts)
    differing = sorted(row for row in every if len({c[row] for c in counts}) > 1)
    totals = ", ".join(f"{run.label} {sum(c.values())}" for (run, _), c in zip(present, counts))
    notes.append(
        f"{noun.capitalize()} per run: {totals}. {len(differing)} of {len(every)} distinct {noun} are not in every "
        f"run the same number of times (compared on the columns {', '.join(columns)}; numbers as written)."
    )
    parts = [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    if not differing:
        return "\n".join(parts)
    if len(differing) > MAX_TABLE_ROWS:
        parts.append(f'<p class="note">Showing the first {MAX_TABLE_ROWS} of {len(differing)}, in order.</p>')
    head = [*columns, *[f"in {run.label}" for run, _ in present]]
    lines = [
        f'<table id="{attribute}">',
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for row in differing[:MAX_TABLE_ROWS]:
        cells = [_cell(_cell_text(text), css="text") for text in row]
        cells += [_cell(str(c[row]) if c[row] else "–") for c in counts]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    parts.append("\n".join(lines))
    return "\n".join(parts)


def _chart(runs: list[Run]) -> str:
    strategies = {run.label: run.returns for run in runs}
    benchmarks: dict[str, pd.Series] = {}
    for run in runs:  # one dashed line per distinct buy-and-hold series
        if not any(b.index.equals(run.benchmark.index) and b.equals(run.benchmark) for b in benchmarks.values()):
            benchmarks[f"buy and hold ({run.label})"] = run.benchmark
    return _plots.comparison_chart(strategies, benchmarks)


def write_comparison(run_dirs: list[Path], path: Path = DEFAULT_OUT) -> Path:
    """Write the comparison page of ``run_dirs`` (two or more finished run folders; the first is the reference
    of the differences) to ``path`` through a temporary name, and return ``path``. A DataError names the
    folder or file at fault.

    >>> write_comparison([Path("runs/a"), Path("runs/b")], Path("compare.html"))
    """
    run_dirs = [Path(p) for p in run_dirs]
    if len(run_dirs) < 2:
        raise DataError("compare: needs at least two run folders")
    runs = [load_run(folder, label) for folder, label in zip(run_dirs, _labels(run_dirs))]
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder (--out names the page's file)")
    listing = "".join(f"<li><code>{html.escape(run.label)}</code>: {html.escape(str(run.folder))}</li>" for run in runs)
    body = [
        f"<ul>{listing}</ul>",
        "<h2>Equity and drawdown</h2>",
        _chart(runs),
        "<h2>Metrics</h2>",
        _metrics_section(runs),
        "<h2>Config differences</h2>",
        _config_section(runs),
        "<h2>Trades that differ</h2>",
        _rows_section(runs, "trades", "trades.csv", "trades"),
        "<h2>Fills that differ</h2>",
        _rows_section(runs, "fills", "fills.csv", "fills"),
    ]
    title = "newsbt: " + " vs ".join(run.label for run in runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(_document(title, body), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m reports.compare", description="Compare finished runs on one page.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders (two or more)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the page to write (default: {DEFAULT_OUT})")
    arguments = parser.parse_args(argv)
    try:
        path = write_comparison(arguments.runs, arguments.out)
    except NewsbtError as error:
        print(f"newsbt: error: {error}", file=sys.stderr)
        return 2
    print(f"comparison: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
