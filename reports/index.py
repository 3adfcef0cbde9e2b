"""The index of every run: ``runs/index.html``, one row per run folder (date, strategy, dataset, the overrides
that differ from the defaults, headline metrics, a link to its report), sortable and filterable in the page
itself, with links to the sweeps' summary pages. ``python -m reports.index [--runs DIR] [--sweeps DIR]``.

Reads only the run folders' files (config.yaml, .hydra/, metrics.json) and the sweeps' results.duckdb; a run
folder that is incomplete or unreadable gets a row that says so.
"""
from __future__ import annotations

import datetime
import functools
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import DataError, NewsbtError
from engine.grid import RESULTS_FILE as SWEEP_RESULTS_FILE, SUMMARY_FILE as SWEEP_SUMMARY_FILE
from reports._html import (
    FILTER_SCRIPT, SORT_SCRIPT, OneLineParser, _cell, _document, _href, _link, _number, _number_cell, _percent, _write_text_atomic,
)

INDEX_FILE = "index.html"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# The metric columns of the index: (header, metrics.json key, format).
METRIC_COLUMNS = [
    ("Sharpe", "sharpe", _number(2)),
    ("CAGR", "cagr", _percent),
    ("Max drawdown", "max_drawdown", _percent),
    ("VaR 95%", "var_95", _percent),
    ("OOS MSE", "oos_mse", _number(8)),
]
# Hydra's default run folder name starts with the local time of the run: ${now:%Y%m%d-%H%M%S}.
FOLDER_TIME = re.compile(r"^(\d{8}-\d{6})")
# libyaml's safe loader when PyYAML has it (an index reads every run's config.yaml).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Sweep folders are looked for this deep under the sweeps folder (the default layout is sweeps/<data.name>).
SWEEP_DEPTH = 2


# ---------------------------------------------------------------- configs and their differences


def read_yaml(path: Path) -> Any:
    """The YAML document at ``path``; a DataError naming the file when it cannot be read or parsed."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{path}: cannot read ({type(error).__name__}: {str(error).splitlines()[0]})") from error


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"a": {"b": 1}}`` becomes ``{"a.b": 1}``. Lists and
    empty mappings are values.

    >>> flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))["strategy.name"]
    """
    if not isinstance(config, dict) or not config:
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def value_text(value: Any) -> str:
    """A config value as written on Hydra's command line: null, true, [a,b], 10.0."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _groups() -> list[str]:
    """The config groups of conf/, nested ones included (strategy, data, signals/sentiment, ...), Hydra's own
    left out."""
    return sorted(p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*")
                  if p.is_dir() and p.relative_to(CONF_DIR).parts[0] != "hydra")


def _compose(overrides: tuple[str, ...], hydra_config: bool = False):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # Inside a running Hydra app (the end of `python -m engine.run`) Hydra is initialised already.
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


@functools.lru_cache(maxsize=1)
def default_choices() -> dict[str, str]:
    """The option each config group takes by default (conf/config.yaml's defaults list and the nested ones, such
    as signals/sentiment), Hydra's own groups left out."""
    choices = _compose((), hydra_config=True).hydra.runtime.choices
    groups = set(_groups())
    return {group: str(option) for group, option in choices.items() if group in groups and option is not None}


@functools.lru_cache(maxsize=64)
def _default_config(choices: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The flattened config composed from conf/ with these group choices and no other override."""
    from omegaconf import OmegaConf

    config = _compose(tuple(f"{group}={option}" for group, option in choices))
    return flatten(OmegaConf.to_container(config, resolve=True))


def default_paths() -> tuple[Path, Path]:
    """``paths.runs`` and ``paths.sweeps`` of the default config, as Hydra reads them (from the current folder)."""
    config = _default_config(())
    return Path(str(config["paths.runs"])), Path(str(config["paths.sweeps"]))


def _run_choices(config: dict, hydra_dir: Path) -> dict[str, str]:
    """The option each config group had in a run: .hydra/hydra.yaml's record when there is one, else the
    ``group=option`` entries of .hydra/overrides.yaml, else the option named like the group's ``name`` key
    (conf/strategy/cluster.yaml has name: cluster), else the default."""
    groups = _groups()
    choices = dict(default_choices())
    hydra_file = hydra_dir / "hydra.yaml"
    if hydra_file.is_file():
        recorded = (((read_yaml(hydra_file) or {}).get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        choices.update({g: str(o) for g, o in recorded.items() if g in groups and o is not None})
        return choices
    for group in groups:
        section = config.get(group)
        if isinstance(section, dict) and (CONF_DIR / group / f"{section.get('name')}.yaml").is_file():
            choices[group] = str(section["name"])
    overrides_file = hydra_dir / "overrides.yaml"
    if overrides_file.is_file():
        for override in read_yaml(overrides_file) or []:
            key, _, option = str(override).lstrip("+~").partition("=")
            if key in groups and option:
                choices[key] = option
    return choices


def run_overrides(config: dict, hydra_dir: Path) -> list[str]:
    """What a run changed from the defaults, as ``key=value`` overrides: first the config groups whose option
    differs from the default (``strategy=cluster``), then every key of its config.yaml whose value differs
    from the config those choices compose to (keys a group choice brings with it are not repeated).

    >>> run_overrides(read_yaml(run_dir / "config.yaml"), run_dir / ".hydra")
    ['strategy=cluster', 'signals.sentiment=lexicon', 'walk_forward.train_sessions=252']
    """
    choices = _run_choices(config, hydra_dir)
    defaults = default_choices()
    changed = [f"{group}={option}" for group, option in sorted(choices.items()) if defaults.get(group) != option]
    composed = _default_config(tuple(sorted(choices.items())))
    differing = [
        f"{key}={value_text(value)}"
        for key, value in sorted(flatten(config).items())
        if key not in composed or composed[key] != value
    ]
    return changed + differing


# ---------------------------------------------------------------- run folders


@dataclass
class RunRow:
    """One row of the index: what could be read of one run folder."""

    folder: Path
    status: str = "ok"  # ok | incomplete | unreadable
    problems: list[str] = field(default_factory=list)
    date: str = ""
    strategy: str | None = None
    dataset: str | None = None
    overrides: list[str] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    has_report: bool = False


def _folder_date(folder: Path) -> str:
    """The run's local start time from its folder name (Hydra's default), else the newest file's modification time."""
    if match := FOLDER_TIME.match(folder.name):
        try:
            return datetime.datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            pass
    times = [p.stat().st_mtime for p in (folder / "metrics.json", folder / "config.yaml", folder) if p.exists()]
    return datetime.datetime.fromtimestamp(max(times)).strftime("%Y-%m-%d %H:%M:%S")


def _name(config: Any, group: str) -> str | None:
    section = config.get(group) if isinstance(config, dict) else None
    return str(section["name"]) if isinstance(section, dict) and section.get("name") is not None else None


def read_run(folder: Path) -> RunRow:
    """What the index shows of one run folder; never raises for a bad folder, says what is wrong instead.

    >>> read_run(Path("runs/20250101-120000-cluster-djia")).status
    'ok'
    """
    row = RunRow(folder=folder)
    try:
        row.date = _folder_date(folder)
        row.has_report = (folder / "report.html").is_file()
        metrics_file = folder / "metrics.json"
        if metrics_file.is_file():
            try:
                metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                raise DataError(f"metrics.json: cannot read ({type(error).__name__}: {error})") from error
            if not isinstance(metrics, dict):
                raise DataError("metrics.json: not a JSON object")
            row.metrics = metrics
        else:
            row.status = "incomplete"
            row.problems.append("no metrics.json: still running, or stopped before the end")
        # config.yaml is written with metrics.json; a run still going has only Hydra's .hydra/config.yaml.
        config_file = folder / "config.yaml"
        if not config_file.is_file():
            config_file = folder / ".hydra" / "config.yaml"
        if config_file.is_file():
            config = read_yaml(config_file)
            if not isinstance(config, dict):
                raise DataError(f"{config_file.relative_to(folder)}: not a mapping")
            row.strategy, row.dataset = _name(config, "strategy"), _name(config, "data")
            if config_file.parent == folder:
                try:
                    row.overrides = run_overrides(config, folder / ".hydra")
                except Exception as error:  # noqa: BLE001 - e.g. a group option conf/ no longer has
                    row.problems.append(f"overrides unknown ({type(error).__name__}: {str(error).splitlines()[0]})")
        elif row.status == "ok":
            row.problems.append("no config.yaml")
    except (NewsbtError, OSError) as error:
        row.status = "unreadable"
        row.problems.append(str(error).replace(f"{folder}/", ""))
    except Exception as error:  # noqa: BLE001 - a broken folder (or config that no longer composes) is listed
        row.status = "unreadable"
        row.problems.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return row


def _runs_table(rows: list[RunRow], runs_root: Path) -> str:
    head = ["Run", "Date", "Status", "Strategy", "Dataset", "Overrides", *[h for h, _, _ in METRIC_COLUMNS], "Report"]
    lines = [
        '<table id="runs" class="sortable">',
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        status = row.status + (f": {'; '.join(row.problems)}" if row.problems else "")
        overrides = "–" if row.overrides is None else (" ".join(row.overrides) or "(defaults)")
        cells = [
            _cell(row.folder.name, css="text"),
            _cell(row.date or "–", row.date, "text nowrap"),
            _cell(status, css="text" if row.status == "ok" else "error"),
            _cell(row.strategy or "–", css="text"),
            _cell(row.dataset or "–", css="text"),
            f'<td class="text"><code>{html.escape(overrides)}</code></td>',
        ]
        for _, key, format_value in METRIC_COLUMNS:
            value = row.metrics.get(key)
            cells.append(_number_cell(value if isinstance(value, (int, float)) else None, format_value,
                                      {"data-metric": key}))
        href = _href(row.folder / "report.html", runs_root) if row.has_report else None
        cells.append(f"<td>{_link(href, 'report')}</td>")
        css = "" if row.status == "ok" else ' class="failed"'
        lines.append(f'<tr{css} data-run="{html.escape(row.folder.name)}">' + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


# ---------------------------------------------------------------- sweeps


@dataclass
class SweepRow:
    folder: Path
    status: str = "ok"
    runs: int | None = None
    succeeded: int | None = None
    best_sharpe: float | None = None
    last_finished: str = ""


def _sweep_folders(sweeps_root: Path) -> list[Path]:
    """Folders at most SWEEP_DEPTH below ``sweeps_root`` (or itself) holding a summary page or results."""
    found: list[Path] = []

    def visit(folder: Path, depth: int) -> None:
        if (folder / SWEEP_SUMMARY_FILE).is_file() or (folder / SWEEP_RESULTS_FILE).is_file():
            found.append(folder)
            return
        if depth < SWEEP_DEPTH:
            for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                visit(child, depth + 1)

    if sweeps_root.is_dir():
        visit(sweeps_root, 0)
    return found


def read_sweep(folder: Path) -> SweepRow:
    """Counts and best Sharpe ratio of a sweep folder from its results.duckdb (read-only); never raises."""
    import duckdb

    row = SweepRow(folder=folder)
    results = folder / SWEEP_RESULTS_FILE
    if not (folder / SWEEP_SUMMARY_FILE).is_file():
        row.status = "no summary.html yet: running, or stopped before the end"
    if not results.is_file():
        row.status = "no results.duckdb"
        return row
    try:
        with duckdb.connect(str(results), read_only=True) as connection:
            columns = {r[0] for r in connection.execute("DESCRIBE runs").fetchall()}
            row.runs, row.succeeded, last = connection.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = 'ok'), max(finished_at) FROM runs"
            ).fetchone()
            if "sharpe" in columns:
                row.best_sharpe = connection.execute("SELECT max(sharpe) FROM runs WHERE status = 'ok'").fetchone()[0]
            row.last_finished = str(last)[:19] if last is not None else ""
    except duckdb.Error as error:
        row.status = f"results.duckdb unreadable (in use by a running sweep?): {str(error).splitlines()[0]}"
    return row


def _sweeps_section(sweeps_root: Path | None, runs_root: Path) -> str:
    if sweeps_root is None:
        return '<p class="note">No sweeps folder given.</p>'
    rows = [read_sweep(folder) for folder in _sweep_folders(sweeps_root)]
    if not rows:
        return f'<p class="note">{html.escape(f"No sweep under {sweeps_root}.")}</p>'
    head = ["Sweep", "Status", "Runs", "Succeeded", "Best Sharpe", "Last run finished (UTC)", "Summary"]
    lines = [
        '<table id="sweeps" class="sortable">',
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        summary = row.folder / SWEEP_SUMMARY_FILE
        name = str(row.folder.relative_to(sweeps_root)) if row.folder != sweeps_root else sweeps_root.name
        cells = [
            _cell(name, css="text"),
            _cell(row.status, css="text" if row.status == "ok" else "error"),
            _number_cell(row.runs, lambda v: "–" if v is None else str(int(v))),
            _number_cell(row.succeeded, lambda v: "–" if v is None else str(int(v))),
            _number_cell(row.best_sharpe, _number(2)),
            _cell(row.last_finished or "–", row.last_finished, "text nowrap"),
            f"<td>{_link(_href(summary, runs_root) if summary.is_file() else None, 'summary')}</td>",
        ]
        lines.append(f'<tr data-sweep="{html.escape(name)}">' + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


# ---------------------------------------------------------------- page


def write_index(runs_root: Path, sweeps_root: Path | None) -> Path:
    """Write ``runs_root/index.html`` (through a temporary name) and return its path: one row per folder
    directly under ``runs_root`` (newest first), then the sweeps found under ``sweeps_root`` (folders with
    summary.html and results.duckdb). A DataError when ``runs_root`` is not a folder.

    >>> write_index(Path("runs"), Path("sweeps"))
    """
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise DataError(f"{runs_root}: no such folder (paths.runs)")
    skip = Path(sweeps_root).resolve() if sweeps_root is not None else None
    folders = [
        p for p in runs_root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.resolve() != skip
    ]
    rows = sorted((read_run(folder) for folder in folders), key=lambda r: (r.date, r.folder.name), reverse=True)
    counts = {status: sum(r.status == status for r in rows) for status in ("ok", "incomplete", "unreadable")}
    summary = (
        f"{len(rows)} run folder(s) in {runs_root}: {counts['ok']} finished, {counts['incomplete']} incomplete, "
        f"{counts['unreadable']} unreadable. Overrides are what each run changed from the defaults of conf/."
    )
    body = [
        f'<p class="note">{html.escape(summary)}</p>',
        "<h2>Runs</h2>",
        '<p class="note">Click a column header to sort by it; type words to keep only the rows that hold them all.</p>',
        '<input class="filter" type="search" data-table="runs" placeholder="filter: e.g. cluster djia" '
        'aria-label="filter runs"> <span id="runs-count" class="note"></span>',
        _runs_table(rows, runs_root),
        "<h2>Sweeps</h2>",
        _sweeps_section(Path(sweeps_root) if sweeps_root is not None else None, runs_root),
    ]
    path = runs_root / INDEX_FILE
    _write_text_atomic(_document("newsbt runs", body, (SORT_SCRIPT, FILTER_SCRIPT)), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m reports.index", description="Write runs/index.html: every run and sweep.")
    parser.add_argument("--runs", type=Path, help="the runs folder (default: paths.runs of conf/config.yaml)")
    parser.add_argument("--sweeps", type=Path, help="the sweeps folder (default: paths.sweeps of conf/config.yaml)")
    arguments = parser.parse_args(argv)
    try:
        runs, sweeps = arguments.runs, arguments.sweeps
        if runs is None or sweeps is None:
            default_runs, default_sweeps = default_paths()
            runs, sweeps = runs or default_runs, sweeps or default_sweeps
        path = write_index(runs, sweeps)
    except NewsbtError as error:
        print(f"newsbt: error: {error}", file=sys.stderr)
        return 2
    print(f"index: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
