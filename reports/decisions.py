"""Why each trade happened: one row per fill of a run (an entry, exit, reversal, resize or stop) with what the rule
read before that session's open and the headlines that moved its sentiment most; written as the run's
decisions.csv (``write_decisions``) and shown in the tear sheet's "Decisions" section (``decisions_section``).

Reads the run folder's fills.csv, signals.parquet, news.parquet, regime_map.csv and config.yaml, and the rule's
``inputs`` and ``news_window`` (``engine.strategy.Rule``) that ``engine.run`` hands over; never a strategy.

Which headlines "moved the sentiment most": the sentiment a decision read is a mean of item scores over its news
window (``Rule.news_window``: the sessions from ``since`` through the decision's own session; a session's
sentiment is the mean of its items' scores, the window's the mean over its sessions that have news). So it is
``sum(w_i * x_i)`` over the window's scored items, with ``w_i = 1 / (M * n_s)`` (``M`` sessions with news in the
window, ``n_s`` scored items in item i's session), and ``sum(w_i) = 1``; less the rule's baseline ``b`` it is
``sum(w_i * (x_i - b))``. An item's contribution is ``w_i * (x_i - b)``; the headlines are the items that pushed
the sentiment furthest toward the side it ended on: the largest contributions when that sum is positive, the most
negative when it is negative (the largest absolute ones when it is 0), ties to the later published, then the lower
item number. So an exit on bad news names the bad news, not the good news it outweighed. Items without a
score (empty texts) fed nothing and are left out; without per-item scores in news.parquet the headlines are the
window's latest three. A stop is no reading of news: its decision is the stop level set at entry (``entry_price``,
``stop_price``), and it has no inputs of the rule's and no headlines.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from engine.errors import DataError
from reports._html import _write_text_atomic, read_csv_checked

HEADLINES = 3  # headlines per decision
SHOWN_DECISIONS = 200  # the tear sheet shows the most recent ones; decisions.csv holds them all
SHOWN_TEXT_CHARACTERS = 300  # a longer headline is cut (with "…") in the tear sheet only
SCORE_COLUMN = "sentiment"  # news.parquet's per-item score that the headlines are ranked by
# Fill sizes are whole multiples of 1e-6 units (both engines round orders so, engine.execution): positions are summed to that.
SIZE_DECIMALS = 6

DECISION_COLUMNS = [
    "session", "session_open", "ticker", "action", "size_before", "size_after", "fill_price", "entry_price",
    "stop_price", "exposure", "target", "inputs", "regime", "regime_mean_return", "regime_t_stat", "prediction",
    "news_since", "news_items",
    *[f"headline_{k}{suffix}" for k in range(1, HEADLINES + 1)
      for suffix in ("", "_score", "_contribution", "_published", "_session")],
]
ACTIONS = ("entry", "exit", "reversal", "increase", "decrease", "stop")


def _timestamp_text(value: Any) -> str:
    """An instant as ISO 8601 in UTC (``2021-03-04T13:00:00+00:00``); naive values are read as UTC."""
    if value is None or pd.isna(value):
        return ""
    moment = pd.Timestamp(value)
    return (moment.tz_localize("UTC") if moment.tz is None else moment.tz_convert("UTC")).isoformat()


def _session_date(sessions: pd.DatetimeIndex) -> np.ndarray:
    """A session's date as the backtest writes it in fills.csv (the date of its open in UTC)."""
    return np.asarray(pd.DatetimeIndex(sessions).tz_convert("UTC").strftime("%Y-%m-%d"), dtype=object)


def fill_actions(fills: pd.DataFrame, stop_loss: float | None) -> pd.DataFrame:
    """Each fill (fills.csv, in execution order) as a decision: the position before and after it and its
    ``action``: ``stop`` (kind stop), ``entry`` (flat to a position), ``exit`` (a position to flat), ``reversal``
    (long to short or back), ``increase`` or ``decrease``; for stops the ``entry_price`` (the position's average
    fill price, as the broker holds it) and the ``stop_price`` (``entry * (1 - stop_loss)`` long,
    ``entry * (1 + stop_loss)`` short) it was set at.

    >>> fill_actions(pd.read_csv(run_dir / "fills.csv"), stop_loss=0.10)["action"]
    """
    rows = []
    position: dict[str, float] = {}
    entry: dict[str, float] = {}
    for date, ticker, size, price, kind in zip(fills["date"], fills["ticker"].astype(str), fills["size"],
                                               fills["price"], fills["kind"]):
        before = position.get(ticker, 0.0)
        after = round(before + float(size), SIZE_DECIMALS)
        entry_price = stop_price = math.nan
        if kind == "stop":
            action = "stop"
            entry_price = entry.get(ticker, math.nan)
            if stop_loss is not None and before != 0:
                stop_price = entry_price * (1 - stop_loss if before > 0 else 1 + stop_loss)
        elif before == 0:
            action = "entry"
        elif after == 0:
            action = "exit"
        elif (before > 0) != (after > 0):
            action = "reversal"
        else:
            action = "increase" if abs(after) > abs(before) else "decrease"
        # The broker's average entry: the fill price when a position opens or reverses, the size-weighted mean
        # when it grows, unchanged when it shrinks (engine.execution, step 3).
        if after == 0:
            entry.pop(ticker, None)
        elif before == 0 or (before > 0) != (after > 0):
            entry[ticker] = float(price)
        elif abs(after) > abs(before):
            entry[ticker] = (entry[ticker] * before + float(price) * float(size)) / after
        position[ticker] = after
        rows.append((str(date), ticker, action, before, after, float(price), entry_price, stop_price))
    return pd.DataFrame(rows, columns=["session", "ticker", "action", "size_before", "size_after", "fill_price",
                                       "entry_price", "stop_price"])


def _stop_loss(run_dir: Path) -> float | None:
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({error})") from error
    value = (config.get("risk") or {}).get("stop_loss") if isinstance(config, dict) else None
    return float(value) if value is not None else None




def _regime_lookup(regime_map: pd.DataFrame | None, dates: np.ndarray,
                   regimes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each decision's regime's training mean return and t-statistic, from the walk-forward window that decided
    its session (the latest ``window_start`` on or before it)."""
    means, t_stats = np.full(len(dates), np.nan), np.full(len(dates), np.nan)
    if regime_map is None or not len(regime_map):
        return means, t_stats
    starts = np.sort(regime_map["window_start"].astype(str).unique())
    table = {(str(start), float(regime)): (mean, t_stat) for start, regime, mean, t_stat in zip(
        regime_map["window_start"].astype(str), regime_map["regime"], regime_map["mean_return"], regime_map["t_stat"])}
    for row, (date, regime) in enumerate(zip(dates, regimes)):
        position = np.searchsorted(starts, date, side="right") - 1
        if position < 0 or regime is None or pd.isna(regime):
            continue
        means[row], t_stats[row] = table.get((str(starts[position]), float(regime)), (np.nan, np.nan))
    return means, t_stats


def _json_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _utc_nanoseconds(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Instants as int64 nanoseconds since the epoch (UTC), whatever the stored unit."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


class _NewsIndex:
    """news.parquet by ticker, sorted by session, for the items of a ticker's sessions [since, session]."""

    def __init__(self, news: pd.DataFrame):
        self.scored = SCORE_COLUMN in news.columns
        if self.scored:
            news = news[news[SCORE_COLUMN].notna()]  # an item without a score fed no sentiment
        news = news.assign(session_ns=_utc_nanoseconds(news["session"]),
                           published_ns=_utc_nanoseconds(news["timestamp"]))
        news = news.sort_values(["ticker", "session_ns", "published_ns", "item"], kind="stable")
        # Plain numpy columns per ticker: a window is then a slice of each, not a frame built per fill.
        columns = ["session_ns", "published_ns", "item", "text", *([SCORE_COLUMN] if self.scored else [])]
        self.by_ticker = {str(ticker): {c: part[c].to_numpy() for c in columns}
                          for ticker, part in news.groupby("ticker", sort=False)}

    def window(self, ticker: str, since_ns: int, session_ns: int) -> dict[str, np.ndarray] | None:
        """The ticker's items of sessions [since, session] (nanoseconds since the epoch, UTC) as numpy columns
        (session_ns, published_ns, item, text and the score when scored), or None when there are none."""
        part = self.by_ticker.get(ticker)
        if part is None:
            return None
        sessions = part["session_ns"]
        start = np.searchsorted(sessions, since_ns, side="left")
        end = np.searchsorted(sessions, session_ns, side="right")
        return {c: values[start:end] for c, values in part.items()} if end > start else None


def headlines(items: Mapping[str, np.ndarray] | None, baseline: float, scored: bool) -> tuple[int, list[tuple]]:
    """The number of items in a decision's news window (``_NewsIndex.window``) and its ``HEADLINES`` headlines as
    (text, score, contribution, published, first session informed) tuples, ranked as the module docstring says.

    >>> headlines(index.window("AAPL", since_ns, session_ns), baseline=0.0, scored=True)[1][0]  # moved it most
    """
    if items is None or not len(items["item"]):
        return 0, []
    published = np.asarray(items["published_ns"])
    numbers = np.asarray(items["item"])
    if scored:
        scores = np.asarray(items[SCORE_COLUMN], dtype="float64")
        sessions = np.asarray(items["session_ns"])
        _, inverse, per_session = np.unique(sessions, return_inverse=True, return_counts=True)
        weights = 1.0 / (len(per_session) * per_session[inverse])
        contributions = weights * (scores - (baseline if math.isfinite(baseline) else 0.0))
        # Toward the side the sentiment ended on (by |contribution| when it ended on the baseline itself).
        direction = np.sign(contributions.sum())
        pushed = direction * contributions if direction else np.abs(contributions)
        # np.lexsort sorts by its last key first: most pushed, then latest published, then lowest item number.
        order = np.lexsort((numbers, -published, -pushed))
    else:
        scores = contributions = np.full(len(numbers), np.nan)
        order = np.lexsort((numbers, -published))
    texts, sessions_ns = np.asarray(items["text"]), np.asarray(items["session_ns"])
    top = [(str(texts[i]), float(scores[i]), float(contributions[i]), _timestamp_text(pd.Timestamp(published[i])),
            _timestamp_text(pd.Timestamp(sessions_ns[i]))) for i in order[:HEADLINES]]
    return len(numbers), top


def build_decisions(run_dir: Path, inputs: pd.DataFrame, news_window: pd.DataFrame | None) -> pd.DataFrame:
    """The decisions of the run in ``run_dir`` (``DECISION_COLUMNS``, one row per fill in execution order), from
    its files and the rule's ``inputs`` and ``news_window`` over the run's (ticker, session) rows.

    >>> build_decisions(run_dir, rule.inputs(features), rule.news_window(features))
    """
    run_dir = Path(run_dir)
    fills = read_csv_checked(run_dir / "fills.csv", ["date", "ticker", "size", "price", "kind"], ("date", "ticker", "kind"))
    stop_loss = _stop_loss(run_dir)
    decisions = fill_actions(fills, stop_loss)
    signals = pd.read_parquet(run_dir / "signals.parquet")
    keys = pd.MultiIndex.from_arrays([signals.index.get_level_values("ticker").astype(str),
                                      _session_date(signals.index.get_level_values("session"))])
    row_of = pd.Series(np.arange(len(signals)), index=keys)
    row_of = row_of[~row_of.index.duplicated()]
    rows = row_of.reindex(pd.MultiIndex.from_arrays([decisions["ticker"], decisions["session"]])).to_numpy()
    if np.isnan(rows.astype("float64")).any():
        missing = decisions[np.isnan(rows.astype("float64"))].iloc[0]
        raise DataError(f"{run_dir / 'fills.csv'}: a fill of {missing['ticker']} on {missing['session']} has no "
                        f"row in signals.parquet")
    rows = rows.astype(np.int64)
    ruled = (decisions["action"] != "stop").to_numpy()
    session_index = signals.index.get_level_values("session")

    def signal(column: str) -> np.ndarray:
        if column not in signals.columns:
            return np.full(len(decisions), np.nan)
        values = signals[column].to_numpy(dtype="float64")[rows]
        return np.where(ruled, values, np.nan)

    out = decisions.assign(session_open=[_timestamp_text(session_index[r]) for r in rows],
                           exposure=signal("exposure"), target=signal("target"), regime=signal("regime"),
                           prediction=signal("prediction"))
    regime_path = run_dir / "regime_map.csv"
    regime_map = read_csv_checked(regime_path, ["window_start", "regime", "mean_return", "t_stat"]) \
        if regime_path.exists() else None
    out["regime_mean_return"], out["regime_t_stat"] = _regime_lookup(regime_map, out["session"].to_numpy(),
                                                                     out["regime"].to_numpy())

    read = inputs.reindex(signals.index)
    values = read.to_numpy(dtype=object)
    out["inputs"] = [
        json.dumps({str(c): _json_value(v) for c, v in zip(read.columns, values[r])}) if is_ruled
        else json.dumps({"entry_price": _json_value(entry), "stop_loss": _json_value(stop_loss),
                         "stop_price": _json_value(stop)})
        for r, is_ruled, entry, stop in zip(rows, ruled, out["entry_price"], out["stop_price"])
    ]

    window = news_window.reindex(signals.index) if news_window is not None else None
    news_path = run_dir / "news.parquet"
    index = _NewsIndex(pd.read_parquet(news_path)) if window is not None and news_path.exists() else None
    # Converted once for all rows, not per fill: per-fill conversions were most of this stage's time.
    if window is not None:
        since_all = pd.DatetimeIndex(pd.to_datetime(window["since"], utc=True))
        since_known = since_all.notna()
        since_ns = since_all.as_unit("ns").asi8
        baselines = window["baseline"].to_numpy(dtype="float64")
    session_ns = _utc_nanoseconds(session_index)
    since_texts, counts, tops = [], [], []
    for r, ticker, is_ruled in zip(rows, out["ticker"], ruled):
        known = window is not None and is_ruled and since_known[r]
        since = since_all[r] if known else pd.NaT
        count, top = 0, []
        if index is not None and known:  # a stop, or a rule that reads no news, has no headlines
            count, top = headlines(index.window(ticker, since_ns[r], session_ns[r]), float(baselines[r]), index.scored)
        since_texts.append(_timestamp_text(since))
        counts.append(count)
        tops.append(top)
    out["news_since"], out["news_items"] = since_texts, counts
    for k in range(HEADLINES):
        parts = [top[k] if len(top) > k else ("", np.nan, np.nan, "", "") for top in tops]
        for position, suffix in enumerate(("", "_score", "_contribution", "_published", "_session")):
            out[f"headline_{k + 1}{suffix}"] = [part[position] for part in parts]
    return out[DECISION_COLUMNS]


def write_decisions(run_dir: Path, inputs: pd.DataFrame, news_window: pd.DataFrame | None) -> Path:
    """Write ``run_dir/decisions.csv`` (``build_decisions``; through a temporary name) and return its path.

    >>> write_decisions(stage, rule.inputs(features), rule.news_window(features))
    """
    path = Path(run_dir) / "decisions.csv"
    _write_text_atomic(build_decisions(run_dir, inputs, news_window).to_csv(index=False), path)
    return path


# ---------------------------------------------------------------- the tear sheet's section

SECTION_STYLE = """<style>
#newsbt-decisions table{font-size:12px}#newsbt-decisions td,#newsbt-decisions th{vertical-align:top}
#newsbt-decisions .left{text-align:left}#newsbt-decisions td.nowrap{white-space:nowrap}
#newsbt-decisions td.text{min-width:300px}#newsbt-decisions td.inputs{max-width:240px}
#newsbt-decisions span.meta{color:#666}
</style>"""
# (header, css class of its cells)
SECTION_COLUMNS = [("Session", "nowrap"), ("Ticker", ""), ("Action", ""), ("Size before → after", "nowrap"),
                   ("Fill price", ""), ("Inputs", "left inputs"), ("Regime (training mean, t)", ""),
                   ("Forecast", ""), ("Headlines", "left text")]


def _short(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


def _size(value: Any) -> str:
    """A position size to the engine's 1e-6 units, without trailing zeros."""
    return "–" if pd.isna(value) else f"{float(value):,.6f}".rstrip("0").rstrip(".")


def _moment(text: Any) -> str:
    """An ISO instant of decisions.csv as ``2021-03-04 13:00 UTC``."""
    return f"{pd.Timestamp(text).tz_convert('UTC'):%Y-%m-%d %H:%M} UTC" if isinstance(text, str) and text else "–"


def _inputs_text(text: Any) -> str:
    try:
        values = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return str(text)
    return ", ".join(f"{name} {_short(value)}" for name, value in values.items()) or "–"


def _headline_html(row: pd.Series, k: int) -> str:
    text = row.get(f"headline_{k}")
    if not isinstance(text, str) or not text:
        return ""
    if len(text) > SHOWN_TEXT_CHARACTERS:
        text = text[:SHOWN_TEXT_CHARACTERS] + "…"
    meta = (f"score {_short(row.get(f'headline_{k}_score'), 3)}, contribution "
            f"{_short(row.get(f'headline_{k}_contribution'), 3)}; published "
            f"{_moment(row.get(f'headline_{k}_published'))}, first informs the session opening "
            f"{_moment(row.get(f'headline_{k}_session'))}")
    return f'<div>{html.escape(text)} <span class="meta">({html.escape(meta)})</span></div>'


def _row_html(row: pd.Series) -> str:
    if row["action"] == "stop":
        why = f"stop at {_short(row['stop_price'], 6)}, set at entry {_short(row['entry_price'], 6)}"
    else:
        why = _inputs_text(row["inputs"])
    regime = "–" if pd.isna(row["regime"]) else (
        f"{int(row['regime'])} ({_short(row['regime_mean_return'], 3)}, t {_short(row['regime_t_stat'], 3)})")
    texts = [str(row["session"]), str(row["ticker"]), str(row["action"]),
             f"{_size(row['size_before'])} → {_size(row['size_after'])}", _short(row["fill_price"], 6), why, regime,
             _short(row["prediction"], 3)]
    cells = [html.escape(text) for text in texts]
    cells.append("".join(_headline_html(row, k) for k in range(1, HEADLINES + 1)) or "–")
    return "<tr>" + "".join(f'<td class="{css}">{cell}</td>' if css else f"<td>{cell}</td>"
                            for (_, css), cell in zip(SECTION_COLUMNS, cells)) + "</tr>"


def decisions_section(run_dir: Path, limit: int = SHOWN_DECISIONS) -> str:
    """The tear sheet's "Decisions" section from ``run_dir/decisions.csv`` (empty when the file is missing): the
    ``limit`` most recent decisions, newest first, with a note of the total by action. Every text is escaped.

    >>> decisions_section(Path("runs/20250101-120000-sentiment-djia"))
    """
    path = Path(run_dir) / "decisions.csv"
    if not path.exists():
        return ""
    frame = read_csv_checked(path, ["session", "ticker", "action", "inputs"], ("session", "ticker", "action", "inputs"))
    missing = [c for c in DECISION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        return "\n".join(['<div id="newsbt-decisions">', "<h2>Decisions</h2>",
                          '<p class="note">No fills: the rule never traded.</p>', "</div>"])
    counts = frame["action"].value_counts()
    by_action = ", ".join(f"{counts[a]} {a}" for a in ACTIONS if a in counts) or "none"
    shown = frame.iloc[::-1].head(limit)  # newest first; within a session the last fill first
    note = (f"{len(frame)} decisions ({by_action}); the {len(shown)} most recent are shown, newest first, and "
            "decisions.csv holds them all. Each row is one fill: the rule's inputs are what it read before that "
            "session's open. The headlines are the items of the rule's news window that pushed the sentiment it "
            "read furthest toward the side it ended on (score, and contribution: its weight in that mean times its "
            "difference from the rule's baseline), each with its publication time and the first session it "
            "informs. A stop is the level set at entry, not a reading of news.")
    head = "".join(f'<th class="{css.split()[0]}">{html.escape(name)}</th>' if css.startswith("left")
                   else f"<th>{html.escape(name)}</th>" for name, css in SECTION_COLUMNS)
    table = ["<table>", f"<thead><tr>{head}</tr></thead>", "<tbody>",
             *[_row_html(row) for _, row in shown.iterrows()], "</tbody></table>"]
    return "\n".join([SECTION_STYLE, '<div id="newsbt-decisions">', "<h2>Decisions</h2>",
                      f'<p class="note">{html.escape(note)}</p>', *table, "</div>"])
