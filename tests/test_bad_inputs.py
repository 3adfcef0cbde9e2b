"""Bad input, one row each: one line ``newsbt: error: <key or file>: <what is wrong>``, exit status 2, and
nothing written, checked before any work; and a failed run removes only what it created itself.

The rows marked CLI run ``python -m engine.run`` as a subprocess (all started at once, so they overlap); the
others go through the same entry in this process (``engine.run.cli``), which is what the subprocess runs.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine.config import (RunFolderCallback, Training, discard_run_folder, preflight, record_run_folder,
                           validate_config, validate_launcher)
from engine.datasets import load_dataset
from engine.errors import ConfigError, DataError
from engine.run import cli
from tests.conftest import ROOT

SESSIONS = pd.bdate_range("2019-01-02", periods=30)


def write_inputs(folder: Path) -> None:
    """prices.csv (30 good bars), bad_prices.csv (the same with one bar stamped at midnight UTC) and news.csv."""
    opens = 100 + np.arange(len(SESSIONS), dtype=float)
    prices = pd.DataFrame({"date": SESSIONS.strftime("%Y-%m-%d"), "open": opens, "high": opens + 1,
                           "low": opens - 1, "close": opens + 0.5, "volume": 1000})
    prices.to_csv(folder / "prices.csv", index=False)
    prices.loc[3, "date"] = "2019-01-07T00:00:00Z"  # line 5 of the file (the header is line 1)
    prices.to_csv(folder / "bad_prices.csv", index=False)
    pd.DataFrame({"timestamp": [f"{day:%Y-%m-%d}T08:00:00-05:00" for day in SESSIONS],
                  "text": ["strong profit gains" if i % 2 else "losses decline" for i in range(len(SESSIONS))]}
                 ).to_csv(folder / "news.csv", index=False)


def base(folder: Path) -> list[str]:
    """A valid run on the tiny csv files, every output path inside ``folder``."""
    return ["data=csv", f"data.prices.path={folder}/prices.csv", "data.prices.ticker=X",
            f"data.news.path={folder}/news.csv", "data.news.columns.ticker=null", "signals/sentiment=lexicon",
            "report.enabled=false", *paths(folder)]


def paths(folder: Path) -> list[str]:
    return [f"paths.runs={folder}/runs", f"paths.sweeps={folder}/sweeps", f"paths.cache={folder}/cache",
            f"paths.models={folder}/models"]


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its content (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@dataclass
class Row:
    name: str
    overrides: list[str]  # {folder} is the row's own folder
    expected: str  # the whole stderr, one line
    use_base: bool = True
    cli: bool = False  # through a real `python -m engine.run` subprocess
    prepare: list[str] = field(default_factory=list)  # files to create under the folder first (user files)

    def argv(self, folder: Path) -> list[str]:
        overrides = [o.format(folder=folder) for o in self.overrides]
        if self.use_base:
            return [*(["-m"] if "-m" in overrides else []), *base(folder), *[o for o in overrides if o != "-m"]]
        return overrides + paths(folder)


BAD_STAMP = ("{folder}/bad_prices.csv: line 5: date '2019-01-07T00:00:00Z' in column 'date' has a time of day or a "
             "zone; write the session's date only, e.g. 2019-01-02")
ROWS = [
    Row("cash", ["broker.cash=abc"], "broker.cash: must be a number, got 'abc'", cli=True),
    Row("rebalance_band", ["broker.rebalance_band=abc"], "broker.rebalance_band: must be a number, got 'abc'"),
    Row("latency", ["latency_minutes=abc"], "latency_minutes: must be a number, got 'abc'"),
    Row("threshold", ["strategy.threshold=abc"], "strategy.threshold: must be a number, got 'abc'"),
    Row("alpha", ["strategy=regression", "strategy.alpha=abc"], "strategy.alpha: must be a number, got 'abc'"),
    Row("min_t_stat", ["strategy=cluster", "strategy.min_t_stat=abc"],
        "strategy.min_t_stat: must be a number, got 'abc'"),
    Row("min_train_rows", ["strategy=regression", "strategy.min_train_rows=abc"],
        "strategy.min_train_rows: must be an integer, got 'abc'"),
    Row("window_negative", ["strategy.window_sessions=-2"], "strategy.window_sessions: must be greater than 0, got -2"),
    Row("news_timezone_csv", ["data.news.timezone=Not/AZone"],
        "data.news.timezone: unknown time zone 'Not/AZone' (an IANA name such as America/New_York, or UTC)"),
    Row("exchange_timezone", ["data.exchange_timezone=Not/AZone"],
        "data.exchange_timezone: unknown time zone 'Not/AZone' (an IANA name such as America/New_York, or UTC)"),
    Row("news_timezone_djia", ["data=djia", "data.news_timezone=Not/AZone", "signals/sentiment=lexicon"],
        "data.news_timezone: unknown time zone 'Not/AZone' (an IANA name such as America/New_York, or UTC)",
        use_base=False),
    Row("unknown_key", ["strategy.windw_sessions=3"],
        "strategy.windw_sessions: unknown key (did you mean window_sessions?)", cli=True),
    Row("unknown_key_appended", ["+strategy.windw_sessions=3"],
        "strategy.windw_sessions: unknown key (did you mean window_sessions?)"),
    Row("unknown_option", ["strategy=sentimnt"],
        "strategy: unknown option 'sentimnt' (did you mean sentiment?)"),
    Row("sweep_without_m", ["strategy.threshold=0,1"],
        "strategy.threshold: '0,1' is a sweep; add -m to run one job per value, or write [0,1] for a list"),
    Row("sweep_target", ["-m", "strategy._target_=nosuch.Rule", "strategy.threshold=0,1"],
        "strategy._target_: cannot load 'nosuch.Rule' (no module named 'nosuch')", cli=True),
    # a sweep's jobs are checked by the newsbt sweeper, before Hydra makes the sweep folder
    Row("sweep_one_bad_job", ["-m", "strategy.threshold=0,abc"], "strategy.threshold: must be a number, got 'abc'",
        cli=True),
    Row("sweep_unknown_key", ["-m", "strategy.threshhold=0,1"],
        "strategy.threshhold: unknown key (did you mean threshold?)", cli=True),
    Row("sweep_metric", ["-m", "hydra.launcher.metric=sharp", "strategy.threshold=0,1"],
        "hydra.launcher.metric: unknown metric 'sharp' (did you mean sharpe?)", cli=True),
    Row("sweep_heatmap", ["-m", "hydra.launcher.heatmap=[strategy.treshold,strategy.window_sessions]",
                          "strategy.threshold=0,1", "strategy.window_sessions=1,2"],
        "hydra.launcher.heatmap: 'strategy.treshold' is not a parameter of this sweep "
        "(did you mean strategy.threshold?)"),
    # A securities file that does not exist is named even when linking is off (it would go unread).
    Row("securities_missing_linking_off", ["data.securities=[{folder}/nofile.csv]"],
        "data.securities: '{folder}/nofile.csv': file not found (relative to " + str(Path.cwd()) + ")"),
    # A window with no bar, one end open: no Python None in the line.
    Row("end_before_every_bar", ["data.end=2018-06-29"],
        "data.start/data.end: no price bars on or before 2018-06-29 (data has 2019-01-02 .. 2019-02-12)", cli=True),
    # A file error is found while the run works, after Hydra made the run folder: that folder goes again.
    Row("price_stamp_with_zone", ["data.prices.path={folder}/bad_prices.csv"], BAD_STAMP, cli=True),
    # The run folder existed, with the user's file in it: the file stays, and so does the folder.
    Row("existing_run_folder", ["data.prices.path={folder}/bad_prices.csv", "hydra.run.dir={folder}/mine"],
        BAD_STAMP, cli=True, prepare=["mine/notes.txt"]),
    # `hydra.run.dir=.` in a project: the run folder is the one holding the input files themselves.
    Row("run_folder_is_the_inputs_folder", ["data.prices.path={folder}/bad_prices.csv", "hydra.run.dir={folder}"],
        BAD_STAMP, cli=True),
]


def prepare(row: Row, folder: Path) -> dict:
    write_inputs(folder)
    for relative in row.prepare:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text("the user's own file\n")
    return tree(folder)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Start every CLI row's subprocess at once; each test then waits for its own."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    started = {}
    for row in [r for r in ROWS if r.cli]:
        folder = tmp_path_factory.mktemp(row.name)
        before = prepare(row, folder)
        process = subprocess.Popen([sys.executable, "-m", "engine.run", *row.argv(folder)], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[row.name] = (folder, before, process)
    yield started
    for _, _, process in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("row", [r for r in ROWS if r.cli], ids=lambda r: r.name)
def test_cli_prints_one_line_exits_2_and_writes_nothing(row, cli_runs):
    folder, before, process = cli_runs[row.name]
    _, stderr = process.communicate(timeout=300)
    assert stderr == f"newsbt: error: {row.expected.format(folder=folder)}\n"
    assert process.returncode == 2
    assert tree(folder) == before


@pytest.mark.parametrize("row", [r for r in ROWS if not r.cli], ids=lambda r: r.name)
def test_bad_config_is_refused_before_any_work(row, tmp_path, capsys, monkeypatch):
    before = prepare(row, tmp_path)
    monkeypatch.setattr(sys, "argv", ["engine/run.py", *row.argv(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"newsbt: error: {row.expected.format(folder=tmp_path)}\n"
    assert tree(tmp_path) == before


# --- the schema ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", ["djia", "stocknet", "csv"])
def test_every_shipped_config_passes_the_schema(data, tmp_path):
    """Each dataset with each rule, and a sweep with the launcher's defaults: a key added to a YAML file without
    its place in the schema (engine/config.py) fails here."""
    extra = [f"data.prices.path={tmp_path}/prices.csv"] if data == "csv" else []
    for strategy in ["sentiment", "regression", "cluster", "buy_and_hold"]:
        preflight([f"data={data}", f"strategy={strategy}", *extra])
    preflight(["-m", f"data={data}", "strategy=regression", "strategy.threshold=0,0.001", *extra])


def module_constants(relative: str) -> dict:
    """The top-level tuple constants, and the keys of dict constants, of a module, read from its source (importing
    signals/ would load torch)."""
    constants = {}
    for node in ast.parse((ROOT / relative).read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if isinstance(node.value, ast.Tuple):
                constants[node.targets[0].id] = set(ast.literal_eval(node.value))
            elif isinstance(node.value, ast.Dict):
                constants[node.targets[0].id] = {ast.literal_eval(key) for key in node.value.keys}
    return constants


def test_schema_choices_are_the_ones_the_code_knows():
    """The transformer provider's schema is its factory's signature (engine.config.parameter_schema); the
    training choices are engine.config's ``Training``: both must list what signals/ knows."""
    from engine.config import parameter_schema
    from signals.transformer import provider

    transformer, finetune = module_constants("signals/transformer.py"), module_constants("signals/finetune.py")
    schema = parameter_schema(provider, ("context",))

    def choices(annotation):
        return set(typing.get_args(annotation))

    assert choices(schema.model_fields["precision"].annotation) == transformer["PRECISIONS"]
    assert choices(schema.model_fields["device"].annotation) == transformer["DEVICES"]
    training = typing.get_type_hints(Training)
    assert choices(training["recipe"]) == finetune["RECIPES"]
    assert choices(training["precision"]) == finetune["TRAIN_PRECISIONS"]
    assert choices(training["device"]) == finetune["TRAIN_DEVICES"]
    assert choices(training["method"]) == finetune["METHODS"]
    assert "context" not in schema.model_fields  # the engine's to give, never a config key


def compose_run(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="run"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("override,message", [
    ("risk.stop_loss=1.5", "risk.stop_loss: must be less than 1, got 1.5"),
    ("risk.var_window_sessions=5", "risk.var_window_sessions: must be greater than or equal to 10, got 5"),
    ("walk_forward.mode=sideways", "walk_forward.mode: must be 'expanding' or 'rolling', got 'sideways'"),
    ("signals.topics.no_above=1.5", "signals.topics.no_above: must be less than or equal to 1, got 1.5"),
    ("data.start=2016-01-01T10:00", "data.start: expected a date without time or zone, got '2016-01-01T10:00'"),
    ("data.session_open=25:00", "data.session_open: expected a clock time like 09:30, got '25:00'"),
    ("report.enabled=1", "report.enabled: must be true or false, got 1"),
    ("signals.sentiment.training.method=adapters",
     "signals.sentiment.training.method: must be 'full' or 'lora', got 'adapters'"),
    ("+data.tickers=[AAPL]", "data.tickers: unknown key (known: name, start, end, exchange_timezone, session_open, "
                             "session_close, news_lookback_days, type, news_timezone, news, securities)"),
])
def test_schema_names_the_key_and_the_value(override, message):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_run(override))
    assert str(error.value) == message


def test_regimes_features_may_not_name_a_diagnostic_column():
    with pytest.raises(ConfigError, match=r"^signals\.regimes\.features: 'forward_return' is not known before"):
        validate_config(compose_run("signals.regimes.features=[sentiment,forward_return]"))


def test_rule_parameters_come_from_the_rule_constructor():
    """A rule of the user's own (this module's ``PlainRule``) is checked against its constructor alone."""
    strategy = {"name": "plain", "_target_": f"{__name__}.PlainRule", "lookback": 3, "scale": 0.5}
    config = OmegaConf.to_container(compose_run(), resolve=False)
    config.pop("hydra")
    config["strategy"] = strategy
    validate_config(config)
    for change, message in [({"lookback": 2.5}, "strategy.lookback: must be an integer, got 2.5"),
                            ({"scale": None}, "strategy.scale: must be a number, got None"),
                            ({"lookbak": 3}, "strategy.lookbak: unknown key (did you mean lookback?)"),
                            ({"_target_": f"{__name__}.NotARule"},
                             f"strategy._target_: module {__name__!r} is not a rule (a subclass of "
                             f"engine.strategy.Rule): 'NotARule'")]:
        broken = dict(strategy, **change)
        if "lookbak" in change:
            broken.pop("lookback")
        with pytest.raises(ConfigError) as error:
            validate_config(dict(config, strategy=broken))
        assert str(error.value) == message


from engine.strategy import Rule  # noqa: E402 - the planted rules below need it


class PlainRule(Rule):
    def __init__(self, lookback: int, scale: float = 1.0):
        self.lookback, self.scale = lookback, scale


class NotARule:
    pass


def test_launcher_settings():
    good = {"backend": "local", "workers": None, "ray_address": None, "metric": "sharpe", "heatmap": None}
    validate_launcher(good)
    validate_launcher(dict(good, metric="out_of_sample_sharpe", heatmap=["a", "b"]), ["a", "b", "c"])
    for change, message in [({"backend": "slurm"}, "hydra.launcher.backend: must be 'local' or 'ray', got 'slurm'"),
                            ({"workers": 0}, "hydra.launcher.workers: must be greater than 0, got 0"),
                            ({"start_method": "fork"},  # forced forking is not offered: auto forks when safe
                             "hydra.launcher.start_method: must be 'auto' or 'spawn', got 'fork'"),
                            ({"heatmap": ["a"]}, "hydra.launcher.heatmap: needs two different parameters, got ['a']"),
                            ({"heatmap": ["a", "a"]},
                             "hydra.launcher.heatmap: needs two different parameters, got ['a', 'a']")]:
        with pytest.raises(ConfigError) as error:
            validate_launcher(dict(good, **change), ["a", "b"])
        assert str(error.value) == message


# --- price dates ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stamp", ["2019-01-07T00:00:00Z", "2019-01-07 00:00:00", "2019-01-07T16:00:00-05:00",
                                   "2019-01-07 UTC"])
def test_a_price_date_with_a_time_or_zone_is_refused_with_file_line_and_column(stamp, tmp_path):
    # Old behaviour: midnight UTC converted to New York is 2019-01-06 19:00, so the bar moved to the day before.
    write_inputs(tmp_path)
    prices = pd.read_csv(tmp_path / "prices.csv", dtype=str)
    prices.loc[3, "date"] = stamp
    prices.to_csv(tmp_path / "stamped.csv", index=False)
    config = compose_run(*base(tmp_path), f"data.prices.path={tmp_path}/stamped.csv").data
    with pytest.raises(DataError) as error:
        load_dataset(config, [])
    assert str(error.value) == (f"{tmp_path}/stamped.csv: line 5: date {stamp!r} in column 'date' has a time of day "
                                f"or a zone; write the session's date only, e.g. 2019-01-02")


# --- the run folder: a failed run removes only what it created ------------------------------------------------------

def test_a_created_folder_and_its_created_parents_go_but_not_what_was_there(tmp_path):
    run_dir = tmp_path / "runs" / "deep" / "20200101-sentiment-csv"
    record_run_folder(run_dir, [".hydra", "run.log", ".incomplete"])
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("x")
    (run_dir / "run.log").write_text("log")
    discard_run_folder(run_dir)
    assert list(tmp_path.iterdir()) == []  # runs/ and runs/deep/ were made for this run too


def test_a_created_folder_that_someone_else_wrote_into_stays(tmp_path):
    run_dir = tmp_path / "run"
    record_run_folder(run_dir, [".hydra", "run.log"])
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "theirs.csv").write_text("another run's file")
    discard_run_folder(run_dir)
    assert tree(tmp_path) == {"run": None, "run/theirs.csv": b"another run's file"}


def test_an_existing_folder_keeps_everything_it_held(tmp_path):
    (tmp_path / "run.log").write_text("an older log")
    (tmp_path / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    record_run_folder(tmp_path, [".hydra", "run.log", ".incomplete"])
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text("x")
    (tmp_path / ".incomplete").mkdir()
    discard_run_folder(tmp_path)
    assert tree(tmp_path) == before


def test_a_folder_without_a_record_is_left_alone(tmp_path):
    record_run_folder(tmp_path / "other", [".hydra"])
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    assert discard_run_folder(tmp_path / "run") == []
    assert (tmp_path / "run" / ".hydra").is_dir()


def test_the_callback_records_the_very_folder_hydra_then_creates(tmp_path):
    # A clock to the microsecond in the folder name: had Hydra read the time again, the name would differ.
    cfg = compose_run(f"hydra.run.dir={tmp_path}/${{now:%H%M%S%f}}")
    callback = RunFolderCallback()
    callback.on_run_start(config=cfg)
    recorded = callback.record
    assert recorded.path == Path(OmegaConf.select(cfg, "hydra.run.dir"))
    assert not recorded.existed and recorded.own_entries == {".hydra", "run.log", ".incomplete"}
