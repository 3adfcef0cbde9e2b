"""The HTML tear sheet of a finished run folder: QuantStats' report against buy-and-hold, plus a
"Risk and model" section (tail risk, drawdowns, signals, forecasts, regimes, topics, information coefficients,
the event study, and the decisions: why each trade happened).

Reads only the run folder's files (see ``write_tearsheet``); every piece of text from data is HTML-escaped.
"""
from __future__ import annotations

import html
import json
import logging
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from engine.errors import DataError
from reports import _plots
from reports._html import NO_FAVICON, read_csv_checked, _date, _integer, _number, _number_cell, _percent, _table, _write_text_atomic
from reports.decisions import decisions_section
from reports.event_study import event_study_section
from reports.metrics import drawdown_periods, forecast_metrics, information_coefficients, performance_metrics, signal_columns

logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

# QuantStats' rolling and distribution charts need a few observations; below this the QS part is skipped.
MIN_QUANTSTATS_SESSIONS = 5
SIGNAL_WINDOW_SESSIONS = 20
MAX_SIGNAL_TICKERS = 6
MAX_REGIME_TICKERS = 3
TOP_DRAWDOWNS = 5
TOPIC_LEGEND_WORDS = 6
STRATEGY_LABEL = "Strategy"
BENCHMARK_LABEL = "Buy and hold"
# Preferred main signal columns, in order; otherwise the first plain signal column.
MAIN_SIGNAL_PREFERENCE = ("sentiment", "prediction")
TOPIC_COLUMN = re.compile(r"^topic_(\d+)$")
TRAILING_NUMBER = re.compile(r"(\d+)(?:\.0)?$")

SECTION_STYLE = """<style>
#newsbt-risk{clear:both;padding-top:10px}#newsbt-risk h2{font-size:20px;margin:10px 0 20px}
#newsbt-risk table{margin:0 0 30px;width:auto;min-width:50%}#newsbt-risk td,#newsbt-risk th{padding:3px 10px}
#newsbt-risk p.note{color:#555}#newsbt-risk table.metrics th{text-align:left;font-weight:400}
</style>"""
STANDALONE_STYLE = """<style>
body{margin:30px;font:13px/1.4 Arial,sans-serif}.container{max-width:960px;margin:auto}img{width:100%}
table{border-spacing:0}table thead th{font-weight:700;background:#eee}td,th{text-align:right}
td:first-of-type,th:first-of-type{text-align:left}
</style>"""




def _optional_csv(path: Path, required: list[str]) -> pd.DataFrame | None:
    return read_csv_checked(path, required) if path.exists() else None


def _load_equity(run_dir: Path) -> tuple[pd.Series, pd.Series]:
    path = run_dir / "equity.csv"
    if not path.exists():
        raise DataError(f"{path}: missing (not a finished run folder?)")
    equity = read_csv_checked(path, ["date", "returns", "benchmark_returns"])
    try:
        dates = pd.DatetimeIndex(pd.to_datetime(equity["date"], format="ISO8601"), name="date")
    except ValueError as error:
        raise DataError(f"{path}: column 'date' is not an ISO date ({error})") from error
    returns = pd.Series(pd.to_numeric(equity["returns"], errors="coerce").to_numpy(), index=dates, name=STRATEGY_LABEL)
    benchmark = pd.Series(
        pd.to_numeric(equity["benchmark_returns"], errors="coerce").to_numpy(), index=dates, name=BENCHMARK_LABEL
    )
    return returns, benchmark


def _load_signals(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "signals.parquet"
    if not path.exists():
        return None
    signals = pd.read_parquet(path)
    if not isinstance(signals.index, pd.MultiIndex) and {"ticker", "session"} <= set(signals.columns):
        signals = signals.set_index(["ticker", "session"])
    if list(signals.index.names) != ["ticker", "session"]:
        raise DataError(f"{path}: index must be (ticker, session), got {list(signals.index.names)}")
    return signals.sort_index()


def _run_names(run_dir: Path) -> tuple[str | None, str | None]:
    path = run_dir / "config.yaml"
    if not path.exists():
        return None, None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({error})") from error

    def name(group: str) -> str | None:
        section = config.get(group) if isinstance(config, dict) else None
        return str(section["name"]) if isinstance(section, dict) and section.get("name") is not None else None

    return name("strategy"), name("data")


def _default_title(run_dir: Path) -> str:
    strategy, dataset = _run_names(run_dir)
    if strategy and dataset:
        return f"{strategy} on {dataset}"
    return strategy or dataset or run_dir.name


def _sentiment_label(run_dir: Path) -> str:
    """The title's suffix " (sentiment fp32 on cpu)": the precision and device the transformer scored in
    (metrics.json), which change its scores; empty for runs without them (lexicon sentiment)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(metrics, dict) or not metrics.get("sentiment_precision"):
        return ""
    return f" (sentiment {metrics['sentiment_precision']} on {metrics.get('sentiment_device', '?')})"


# ---------------------------------------------------------------- sections


def _metric_table(heading: str, columns: list[str], rows: list[tuple[str, list[tuple[object, object, str | None]]]]) -> str:
    """A table of numbers, one row per (label, cells); each cell is (value, format, metrics.json key or None).
    A keyed cell carries ``data-metric`` and its full value in ``data-value``, so a reader (or a test) can check
    it against metrics.json."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [heading, *columns])
    lines = ['<table class="metrics">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for label, cells in rows:
        tds = "".join(
            _number_cell(value, format_value, {"data-metric": key} if key else None) for value, format_value, key in cells
        )
        lines.append(f"<tr><th>{html.escape(label)}</th>{tds}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


HEADLINE_ROWS = [
    ("Sharpe ratio (annual)", "sharpe", _number(2)),
    ("CAGR", "cagr", _percent),
    ("Total return", "total_return", _percent),
    ("Max drawdown", "max_drawdown", _percent),
    ("VaR 95% (historical, daily)", "var_95", _percent),
]


def _headline_table(strategy: dict, buy_and_hold: dict) -> str:
    rows = [
        (label, [(strategy[key], format_value, key), (buy_and_hold[key], format_value, f"benchmark_{key}")])
        for label, key, format_value in HEADLINE_ROWS
    ]
    rows.append(("Closed trades", [(strategy["trades"], _integer, "trades"), (None, _integer, None)]))
    note = (
        '<p class="note">Every session of the run (these are the figures of metrics.json). QuantStats\' part above '
        "starts at the first session where both the strategy and buy-and-hold moved (matched dates), and computes "
        "CAGR over calendar days: its figures can differ.</p>"
    )
    return "<h3>Headline</h3>\n" + note + "\n" + _metric_table("Metric", [STRATEGY_LABEL, BENCHMARK_LABEL], rows)


def _risk_tables(returns: pd.Series, benchmark: pd.Series, trades: int | None) -> str:
    strategy = performance_metrics(returns, benchmark, trades=trades)
    buy_and_hold = performance_metrics(benchmark)
    rows = [
        ("Sessions", "sessions", _integer),
        ("Max drawdown", "max_drawdown", _percent),
        ("Longest drawdown (days)", "max_drawdown_days", _integer),
        ("VaR 95% (historical, daily)", "var_95", _percent),
        ("CVaR 95% (historical, daily)", "cvar_95", _percent),
        ("VaR 95% (Gaussian, daily)", "var_95_parametric", _percent),
        ("CVaR 95% (Gaussian, daily)", "cvar_95_parametric", _percent),
        ("Hit rate (active days)", "hit_rate", _percent),
    ]
    table = pd.DataFrame(
        {
            STRATEGY_LABEL: [format_value(strategy[key]) for _, key, format_value in rows],
            BENCHMARK_LABEL: [format_value(buy_and_hold[key]) for _, key, format_value in rows],
        },
        index=pd.Index([label for label, _, _ in rows], name="Metric"),
    )
    extra = pd.DataFrame(
        {
            STRATEGY_LABEL: [
                _integer(strategy["trades"]), _number(2)(strategy["beta"]), _percent(strategy["alpha"]),
                _number(2)(strategy["information_ratio"]),
            ]
        },
        index=pd.Index(["Closed trades", "Beta", "Alpha (annual)", "Information ratio (annual)"], name="Against buy and hold"),
    )
    parts = [
        _headline_table(strategy, buy_and_hold),
        "<h3>Tail risk and drawdown</h3>",
        '<p class="note">VaR and CVaR are daily returns: a loss is negative. CVaR is the mean return at or below the VaR.</p>',
        _table(table),
        _table(extra),
    ]
    periods = drawdown_periods(returns, top=TOP_DRAWDOWNS)
    parts.append(f"<h3>Top {TOP_DRAWDOWNS} drawdown periods</h3>")
    if len(periods):
        periods.index = pd.RangeIndex(1, len(periods) + 1, name="#")
        periods.columns = ["Start", "Valley", "End (last under water)", "Days", "Max drawdown"]
        formats = {"Start": _date, "Valley": _date, "End (last under water)": _date, "Days": _integer, "Max drawdown": _percent}
        parts.append(_table(periods, formats))
    else:
        parts.append('<p class="note">No drawdown.</p>')
    return "\n".join(parts)


def _main_signal(columns: list[str]) -> str | None:
    for preferred in MAIN_SIGNAL_PREFERENCE:
        if preferred in columns:
            return preferred
    plain = [
        c for c in columns
        if c not in ("target", "regime") and not TOPIC_COLUMN.match(c) and not c.endswith(("_count", "_dispersion"))
    ]
    if plain:
        return plain[0]
    return "target" if "target" in columns else None


def _signal_section(signals: pd.DataFrame) -> str:
    column = _main_signal(signal_columns(signals))
    if column is None or not signals[column].notna().any():
        return ""
    tickers = _plots.busiest_tickers(signals, column, MAX_SIGNAL_TICKERS)
    total = signals.index.get_level_values("ticker").nunique()
    caption = f"Showing {len(tickers)} of {total} tickers (most observations): {', '.join(map(str, tickers))}."
    return "\n".join(
        [
            f"<h3>Signal: {html.escape(column)}</h3>",
            _plots.signal_chart(signals, column, tickers, SIGNAL_WINDOW_SESSIONS),
            f'<p class="note">{html.escape(caption)}</p>',
        ]
    )


def _forecast_section(predictions: pd.DataFrame) -> str:
    numbers = forecast_metrics(predictions)
    rows = [
        ("Out-of-sample predictions", "n", _integer),
        ("MSE", "mse", _number(8)),
        ("Naive MSE (always 0)", "naive_zero_mse", _number(8)),
        ("R² out of sample (vs 0 forecast)", "r2_oos", _number(4)),
        ("R² (vs mean)", "r2", _number(4)),
        ("Hit rate (sign)", "hit_rate", _percent),
    ]
    cells = [(label, [(numbers[key], format_value, f"oos_{key}")]) for label, key, format_value in rows]
    return "<h3>Regression forecasts</h3>\n" + _metric_table("Forecast", ["Value"], cells)


def _latest_window(frame: pd.DataFrame) -> tuple[pd.DataFrame, str, int]:
    starts = frame["window_start"].astype(str)
    latest = sorted(starts.unique())[-1]
    return frame[starts == latest].drop(columns="window_start"), latest, starts.nunique()


def _regime_section(signals: pd.DataFrame | None, regime_map: pd.DataFrame | None) -> str:
    parts = []
    if signals is not None and {"regime", "close"} <= set(signals.columns) and signals["regime"].notna().any():
        parts.append(_plots.regime_chart(signals, _plots.busiest_tickers(signals, "regime", MAX_REGIME_TICKERS)))
    if regime_map is not None and len(regime_map):
        latest, start, windows = _latest_window(regime_map)
        parts.append(f'<p class="note">Regime map of the latest of {windows} walk-forward windows (start {html.escape(start)}).</p>')
        # Regime labels are integers; the CSV holds them as floats (0.0) when the regime column had gaps.
        formats = {"regime": _integer, "count": _integer, "mean_return": _percent, "t_stat": _number(2)}
        parts.append(_table(latest.reset_index(drop=True), formats, index=False))
    return "<h3>Regimes</h3>\n" + "\n".join(parts) if parts else ""


def _topic_number(column: str) -> int:
    return int(TOPIC_COLUMN.match(column).group(1))


def _topic_section(signals: pd.DataFrame | None, topics: pd.DataFrame | None) -> str:
    parts = []
    words: dict[int, str] = {}
    latest = None
    if topics is not None and len(topics):
        latest, start, windows = _latest_window(topics)
        latest = latest.assign(words=latest["words"].fillna("").astype(str))
        # The topic id is the trailing number, whether written 3 or topic_3.
        for topic, text in zip(latest["topic"], latest["words"]):
            if match := TRAILING_NUMBER.search(str(topic)):
                words[int(match.group(1))] = text
    names = signals.columns if signals is not None else []
    columns = sorted((c for c in names if TOPIC_COLUMN.match(c)), key=_topic_number)
    if columns and signals[columns].notna().any().any():
        labels = {
            c: f"{c}: {' '.join(words.get(_topic_number(c), '').split()[:TOPIC_LEGEND_WORDS])}".rstrip(": ") for c in columns
        }
        parts.append(_plots.topic_chart(signals, columns, labels))
    if latest is not None:
        parts.append(f'<p class="note">Top words of the latest of {windows} walk-forward windows (start {html.escape(start)}).</p>')
        parts.append(_table(latest.reset_index(drop=True), index=False))
    return "<h3>Topics</h3>\n" + "\n".join(parts) if parts else ""


def _ic_section(signals: pd.DataFrame) -> str:
    if "forward_return" not in signals.columns or not signal_columns(signals):
        return ""
    table = information_coefficients(signals)
    formats = {
        "ic": _number(3), "n": _integer, "t_stat": _number(2), "cross_sectional_ic": _number(3),
        "cross_sectional_sessions": _integer,
    }
    note = (
        "Spearman rank correlation of each column with the forward return (next open over this open), pooled over "
        "(ticker, session); the cross-sectional IC is the mean per-session IC across tickers (at least 3)."
    )
    return f'<h3>Information coefficients</h3>\n<p class="note">{note}</p>\n' + _table(table, formats)


def _risk_and_model_section(run_dir: Path, returns: pd.Series, benchmark: pd.Series) -> str:
    trades = _optional_csv(run_dir / "trades.csv", [])
    signals = _load_signals(run_dir)
    predictions = _optional_csv(run_dir / "predictions.csv", ["prediction", "realized"])
    regime_map = _optional_csv(run_dir / "regime_map.csv", ["window_start", "regime"])
    topics = _optional_csv(run_dir / "topics.csv", ["window_start", "topic", "words"])
    parts = [SECTION_STYLE, '<div class="container" id="newsbt-risk">', "<hr>", "<h2>Risk and model</h2>"]
    parts.append(_risk_tables(returns, benchmark, len(trades) if trades is not None else None))
    if signals is not None:
        parts.append(_signal_section(signals))
    if predictions is not None:
        parts.append(_forecast_section(predictions))
    parts.append(_regime_section(signals, regime_map))
    parts.append(_topic_section(signals, topics))
    if signals is not None:
        parts.append(_ic_section(signals))
    parts.append(event_study_section(run_dir))  # returns around each event type (reports/event_study.py)
    parts.append(decisions_section(run_dir))  # why each trade happened (reports/decisions.py)
    parts.append("</div>")
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------- QuantStats part and assembly


def _matched_dates(strategy: pd.Series, benchmark: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Both series from the first session where both have moved: QuantStats' own ``match_dates`` rule, applied
    before QuantStats sees them. QuantStats 0.0.86 trims both series so but builds its end-of-year table from the
    untrimmed benchmark, which then shows the years before the strategy's first move as "nan%" rows."""
    start = max(strategy.ne(0).idxmax(), benchmark.ne(0).idxmax())
    return strategy.loc[start:], benchmark.loc[start:]


def _offline(document: str) -> str:
    """QuantStats 0.0.86's page made to show offline without errors or missing glyphs:
    its template links https://qtpylib.io/favicon.ico (a network request; an inline empty icon instead), its
    ``<body onload="save()">`` calls a function the page never defines (a ReferenceError in the console), and
    its CAGR label ends in U+FE6A SMALL PERCENT SIGN, which common fonts lack (a missing-glyph box)."""
    document = re.sub(r"<link\b[^>]*\brel=\"(?:shortcut )?icon\"[^>]*>", "", document, flags=re.I)
    document = re.sub(r"<head>", lambda _: "<head>\n" + NO_FAVICON, document, count=1, flags=re.I)
    document = re.sub(r"<body\s+onload=\"save\(\)\"\s*>", "<body>", document, count=1, flags=re.I)
    return document.replace("CAGR\ufe6a", "CAGR")


def _quantstats_html(run_dir: Path, returns: pd.Series, benchmark: pd.Series, title: str) -> tuple[str | None, str]:
    """QuantStats' tear sheet as text, or None and the reason it was skipped."""
    paired = pd.concat([returns, benchmark], axis=1).dropna()
    strategy, buy_and_hold = paired[STRATEGY_LABEL], paired[BENCHMARK_LABEL]
    if len(paired) < MIN_QUANTSTATS_SESSIONS:
        return None, (
            f"Only {len(paired)} session(s) of returns: too few for the QuantStats tear sheet"
            f" (needs {MIN_QUANTSTATS_SESSIONS})."
        )
    if strategy.nunique() < 2:
        return None, "The strategy's daily returns are constant (no position taken?): QuantStats' tear sheet is skipped."
    use_benchmark = buy_and_hold if buy_and_hold.nunique() >= 2 else None
    note = "" if use_benchmark is not None else "Buy-and-hold returns are constant: the QuantStats part has no benchmark."
    if use_benchmark is not None:
        strategy, use_benchmark = _matched_dates(strategy, use_benchmark)
        if len(strategy) < MIN_QUANTSTATS_SESSIONS:
            return None, (
                f"Only {len(strategy)} session(s) from the first one where both the strategy and buy-and-hold moved:"
                f" too few for the QuantStats tear sheet (needs {MIN_QUANTSTATS_SESSIONS})."
            )
    import quantstats  # slow to import (~1.5 s): only when a tear sheet is written; _plots already chose Agg

    temporary = run_dir / f".report.html.{uuid.uuid4().hex}.quantstats.tmp"
    try:
        # pandas 3 draws a bar chart of a time series at the periods' ordinals under a date locator; QuantStats'
        # end-of-year chart then labels ticks 0, 1, ... by position, one year off the bars. x_compat keeps the
        # bars at 0, 1, ... with fixed ticks (its only pandas .plot call; its other charts use matplotlib).
        with warnings.catch_warnings(), np.errstate(all="ignore"), pd.plotting.plot_params.use("x_compat", True):
            # Deprecations raised inside QuantStats and seaborn against pandas 3 / matplotlib 3.11: theirs to fix.
            for category in (DeprecationWarning, PendingDeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=r"(quantstats|seaborn)\.")
            quantstats.reports.html(
                strategy.copy(),
                benchmark=None if use_benchmark is None else use_benchmark.copy(),
                output=str(temporary),
                title=html.escape(title),
                strategy_title=STRATEGY_LABEL,
                benchmark_title=BENCHMARK_LABEL,
            )
        return _offline(temporary.read_text(encoding="utf-8")), note
    except Exception as error:  # noqa: BLE001 - a QuantStats failure must not lose the rest of the report
        return None, f"QuantStats could not build its tear sheet ({type(error).__name__}: {error})."
    finally:
        if temporary.exists():
            temporary.unlink()


def _compose(quantstats_html: str | None, note: str, section: str, title: str) -> str:
    escaped_title = html.escape(title)
    note_html = f'<div class="container"><p class="note">{html.escape(note)}</p></div>' if note else ""
    if quantstats_html is None:
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                NO_FAVICON,
                f"<title>{escaped_title}</title>",
                STANDALONE_STYLE,
                "</head><body>",
                f'<div class="container"><h1>{escaped_title}</h1></div>',
                note_html,
                section,
                "</body></html>",
            ]
        )
    document = re.sub(r"<title>.*?</title>", lambda _: f"<title>{escaped_title}</title>", quantstats_html, count=1, flags=re.S)
    insert_at = document.rfind("</body>")
    if insert_at < 0:
        return document + note_html + section
    return document[:insert_at] + note_html + "\n" + section + "\n" + document[insert_at:]


def write_tearsheet(run_dir: Path, title: str | None = None) -> Path:
    """Write ``run_dir/report.html`` (through a temporary name) and return its path.

    The QuantStats tear sheet of the strategy against buy-and-hold (skipped with a note when the run is too
    short or QuantStats fails), followed by a "Risk and model" section built from the optional files found
    in the folder: signals.parquet, predictions.csv, regime_map.csv, topics.csv, event_study.csv, decisions.csv.
    ``title`` defaults to "<strategy.name> on <data.name>" from config.yaml.

    >>> write_tearsheet(Path("runs/20250101-120000-sentiment-djia"))
    """
    run_dir = Path(run_dir)
    returns, benchmark = _load_equity(run_dir)
    title = (title or _default_title(run_dir)) + _sentiment_label(run_dir)
    section = _risk_and_model_section(run_dir, returns, benchmark)
    quantstats_html, note = _quantstats_html(run_dir, returns, benchmark, title)
    path = run_dir / "report.html"
    _write_text_atomic(_compose(quantstats_html, note, section, title), path)
    return path
