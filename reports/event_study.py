"""The event study of a run: for each event type, the mean cumulative abnormal return (CAR) from 5 sessions before
to 10 after the first session that may use the item, with a 95% band and the count: ``event_study.csv`` and the
tear sheet's "Event study" section. It describes the data; no rule, provider or learner reads it.

Definitions (``event_study``):

- an event is a (ticker, session, event type) with at least one item of the type aligned to that session (the
  run's news.parquet: ``session`` is the first session whose decision may use the item); several items of one
  type for one ticker and session make one event. That session is offset 0; offsets count the ticker's sessions.
- the return at offset k is the open-to-open return from the open of session k to the next session's open (the
  grid's ``forward_return``): what a position taken at that open earns. Offset 0 is what a decision using the
  item can first earn; offset -1 holds the move between the last open before the item was usable and the first
  open after it, which no decision using the item can capture.
- abnormal return: the return minus the equal-weighted mean return of every instrument with a return that
  session (the universe); with one instrument, the raw return (its benchmark, buy-and-hold of itself, would make
  every abnormal return 0), and ``abnormal_to`` says so.
- CAR(k): the sum of abnormal returns from offset -5 through k (simple returns, added).
- per type and offset: the mean CAR over the events whose whole window (-5 to +10) lies in the data with every
  return known (``events``), and mean ± 1.96 standard errors (sample standard deviation over the square root of
  ``events``; none below two events). Events whose window runs off the data are counted in ``events_off_data``
  and left out of the mean.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import DataError

BEFORE_SESSIONS = 5
AFTER_SESSIONS = 10
OFFSETS = np.arange(-BEFORE_SESSIONS, AFTER_SESSIONS + 1)
Z_95 = 1.96
FILE_NAME = "event_study.csv"
COLUMNS = ["event", "offset", "events", "events_off_data", "abnormal_return", "car", "car_low", "car_high",
           "abnormal_to"]
UNIVERSE = "equal-weighted universe"
RAW = "none (one instrument: raw returns)"


def abnormal_returns(outcomes: pd.DataFrame) -> tuple[pd.Series, str]:
    """Per (ticker, session), the open-to-open ``forward_return`` less the equal-weighted mean of every ticker's
    that session when ``outcomes`` hold several tickers (else the raw return); and what it was measured against.

    >>> abnormal, against = abnormal_returns(outcomes)  # against: "equal-weighted universe"
    """
    returns = pd.to_numeric(outcomes["forward_return"], errors="coerce").astype("float64")
    returns = returns.replace([np.inf, -np.inf], np.nan).sort_index()
    if returns.index.get_level_values("ticker").nunique() < 2:
        return returns, RAW
    universe = returns.groupby(level="session").transform("mean")  # NaN returns left out of the mean
    return returns - universe, UNIVERSE


def event_study(news: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The event study (see the module docstring) of ``news`` (columns ``ticker``, ``session``, ``event``: one row
    per item and ticker, as news.parquet) against ``outcomes`` (indexed by (ticker, session), with
    ``forward_return``: every session of every instrument). One row per (event type present, offset -5..10),
    types by name, columns ``COLUMNS``: ``abnormal_return`` is the mean abnormal return at the offset, ``car`` the
    mean CAR through it, ``car_low``/``car_high`` its 95% band.

    >>> study = event_study(pd.read_parquet(run / "news.parquet"), outcomes)
    """
    missing = [column for column in ("ticker", "session", "event") if column not in news.columns]
    if missing:
        raise DataError(f"event study: the news lack column(s) {', '.join(missing)}")
    abnormal, against = abnormal_returns(outcomes)
    tickers = abnormal.index.get_level_values("ticker").astype(str)
    sessions = pd.DatetimeIndex(abnormal.index.get_level_values("session"))
    # Row r of ``values`` is the r-th session of its ticker: the window of an event at row r is rows r-5..r+10,
    # inside the ticker's own block [first, last].
    values = abnormal.to_numpy()
    first = pd.Series(np.arange(len(values))).groupby(tickers.to_numpy()).transform("min").to_numpy()
    last = pd.Series(np.arange(len(values))).groupby(tickers.to_numpy()).transform("max").to_numpy()
    row_of = pd.Series(np.arange(len(values)), index=pd.MultiIndex.from_arrays([tickers, sessions]))

    events = news[["ticker", "session", "event"]].astype({"ticker": str, "event": str})
    events = events.assign(session=pd.to_datetime(events["session"], utc=True).dt.as_unit(sessions.unit))
    events = events.drop_duplicates().sort_values(["event", "ticker", "session"], kind="stable")
    rows = row_of.reindex(pd.MultiIndex.from_frame(events[["ticker", "session"]])).to_numpy()
    known = ~np.isnan(rows)
    rows = np.where(known, rows, 0).astype(np.int64)
    inside = known & (rows - BEFORE_SESSIONS >= first[rows]) & (rows + AFTER_SESSIONS <= last[rows])
    window = np.clip(rows[:, None] + OFFSETS[None, :], 0, max(len(values) - 1, 0))
    paths = values[window] if len(values) else np.full((len(rows), len(OFFSETS)), np.nan)
    complete = inside & np.isfinite(paths).all(axis=1)
    cumulative = np.cumsum(paths, axis=1)

    pieces = []
    for name in sorted(events["event"].unique()):
        mine = events["event"].to_numpy() == name
        chosen, chosen_paths = cumulative[mine & complete], paths[mine & complete]
        count = len(chosen)
        mean = chosen.mean(axis=0) if count else np.full(len(OFFSETS), np.nan)
        error = chosen.std(axis=0, ddof=1) / math.sqrt(count) if count > 1 else np.full(len(OFFSETS), np.nan)
        pieces.append(pd.DataFrame({
            "event": name, "offset": OFFSETS, "events": count, "events_off_data": int((mine & ~complete).sum()),
            "abnormal_return": chosen_paths.mean(axis=0) if count else np.nan, "car": mean,
            "car_low": mean - Z_95 * error, "car_high": mean + Z_95 * error, "abnormal_to": against}))
    if not pieces:
        return pd.DataFrame({column: pd.Series(dtype="float64") for column in COLUMNS})
    return pd.concat(pieces, ignore_index=True)[COLUMNS]


def write_event_study(folder: Path, news: pd.DataFrame, outcomes: pd.DataFrame) -> Path | None:
    """Write ``folder/event_study.csv`` (through a temporary name) when ``news`` has event types (the events
    provider was on); return its path, or None.

    >>> write_event_study(stage, inputs.items, inputs.outcomes)
    """
    if "event" not in news.columns:
        return None
    path = Path(folder) / FILE_NAME
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        event_study(news, outcomes).to_csv(temporary, index=False)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------- the tear sheet's section


def _chart(study: pd.DataFrame) -> str:
    """One panel per event type: the mean CAR (%) by offset, its 95% band shaded, offset 0 marked."""
    from reports import _plots

    names = list(dict.fromkeys(study["event"]))
    columns = 2 if len(names) > 1 else 1
    rows = -(-len(names) // columns)
    figure = _plots.Figure(figsize=(_plots.WIDTH_INCHES, 2.1 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns, sharex=True, squeeze=False).ravel())
    for axis, name in zip(axes, names):
        part = study[study["event"] == name]
        offsets = part["offset"].to_numpy()
        axis.fill_between(offsets, 100 * part["car_low"].to_numpy(float), 100 * part["car_high"].to_numpy(float),
                          alpha=0.25, linewidth=0)
        axis.plot(offsets, 100 * part["car"].to_numpy(float), linewidth=1.3, marker=".")
        axis.axhline(0.0, color="grey", linewidth=0.6)
        axis.axvline(0.0, color="grey", linewidth=0.6, linestyle="--")
        axis.set_title(_plots._label(f"{name} (events {int(part['events'].iloc[0])})"), fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.tick_params(labelsize=8)
    for axis in axes[len(names):]:
        axis.set_visible(False)
    for axis in axes[-columns:]:
        axis.set_xlabel("sessions from the first session that may use the item", fontsize=8)
    figure.supylabel("mean CAR (%)", fontsize=9)
    return _plots._image(figure, "event study: mean cumulative abnormal return by event type")


def _table(study: pd.DataFrame) -> str:
    from reports._html import _integer, _percent, _table as html_table

    def at(part: pd.DataFrame, offset: int, column: str = "car") -> float:
        return float(part.loc[part["offset"] == offset, column].iloc[0])

    rows = []
    for name, part in study.groupby("event", sort=True):
        low, high = at(part, AFTER_SESSIONS, "car_low"), at(part, AFTER_SESSIONS, "car_high")
        rows.append({"Event type": name, "Events": int(part["events"].iloc[0]),
                     "Off the data": int(part["events_off_data"].iloc[0]),
                     "CAR -5..-1": at(part, -1), "AR day 0": at(part, 0, "abnormal_return"),
                     f"CAR -5..+{AFTER_SESSIONS}": at(part, AFTER_SESSIONS),
                     "95% band": "–" if not (math.isfinite(low) and math.isfinite(high))
                     else f"{_percent(low)} to {_percent(high)}"})
    frame = pd.DataFrame(rows)
    formats = {"Events": _integer, "Off the data": _integer, "CAR -5..-1": _percent, "AR day 0": _percent,
               f"CAR -5..+{AFTER_SESSIONS}": _percent}
    return html_table(frame, formats, index=False)


def event_study_section(run_dir: Path) -> str:
    """The tear sheet's "Event study" section from ``run_dir/event_study.csv`` (chart and table); "" without it.

    >>> event_study_section(Path("runs/20250101-120000-regression-csv"))
    """
    path = Path(run_dir) / FILE_NAME
    if not path.exists():
        return ""
    try:
        study = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    missing = [column for column in COLUMNS if column not in study.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    heading = "<h3>Event study</h3>"
    if study.empty:
        return heading + '\n<p class="note">No news item has an event type in this run.</p>'
    against = ("Abnormal returns are measured against the equal-weighted universe (the mean return of every "
               "instrument that session)." if str(study["abnormal_to"].iloc[0]) == UNIVERSE else
               "With one instrument its only benchmark is itself: these are raw returns, not abnormal ones.")
    note = (f"For each event type, the mean cumulative abnormal return (CAR) from {BEFORE_SESSIONS} sessions before "
            f"to {AFTER_SESSIONS} after the first session that may use the item (offset 0), with its 95% band (mean "
            f"± {Z_95} standard errors) and the number of events (one per ticker, session and type). Returns are "
            f"open to open: offset 0 is what a decision using the item can first earn, offset -1 the move before "
            f"the item was usable. {against} Events whose window runs off the data are counted apart and left "
            f"out. It describes the data: no decision reads it ({FILE_NAME}).")
    return "\n".join([heading, f'<p class="note">{html.escape(note)}</p>', _chart(study), _table(study)])
