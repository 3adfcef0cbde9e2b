"""One schema for the whole newsbt config, checked before any work starts; and the run folder a run may clean up.

``validate_config(cfg)`` checks a composed config (paths, latency_minutes, walk_forward, data by its type,
signals, strategy, broker, risk, report) and raises one ``ConfigError`` naming the first bad key. A rule's
parameters, and each signal provider's (``signals.<slot>``), are checked against the signature of what its
``_target_`` names (the annotations are the schema), so a new rule or provider needs no entry here. ``preflight(argv)`` composes the command line exactly as Hydra will (every job of a
``-m`` sweep) and validates it before Hydra creates any folder; ``RunFolderCallback`` notes what a run folder
held before the run, so that ``discard_run_folder`` removes only what the failed run created.
"""
from __future__ import annotations

import codecs
import contextlib
import difflib
import importlib
import inspect
import os
import pickle
import re
import shutil
import sys
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, with_config
from typing_extensions import TypedDict

from engine.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Number = Annotated[float, Field(allow_inf_nan=False)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeNumber = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# Configs are checked as written: no coercion ("5" is not 5, 1 is not true), so what was checked is what runs.
_STRICT = ConfigDict(extra="forbid", strict=True)


# --- value types ---------------------------------------------------------------------------------------------

def time_zone(value: str) -> str:
    """``value`` when it is a time zone name pandas knows, else a ValueError naming it (the schema adds the key).

    >>> time_zone("America/New_York")
    """
    try:
        pd.Timestamp("2000-01-01").tz_localize(value)  # the same call the loaders make
    except Exception:  # unknown names raise KeyError, ValueError or pytz errors
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as America/New_York, or UTC)") from None
    return value


def _clock(value: str) -> str:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"expected a clock time like 09:30, got {value!r}")
    return value


def _iso_date(value: str) -> str:
    try:
        day = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(f"expected an ISO date like 2014-01-02, got {value!r}") from None
    if day.tz is not None or day != day.normalize():
        raise ValueError(f"expected a date without time or zone, got {value!r}")
    return value


def _encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None
    return value


def _names(value: Any) -> Any:
    """One name or a list of names (``data.tickers=AAPL`` or ``data.tickers=[AAPL,MSFT]``), or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ValueError(f"must be a name or a list of names, got {value!r}")


def _n_init(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"must be a positive integer or 'auto', got {value!r}")


def _feature_patterns(value: list[str]) -> list[str]:
    from engine.features import feature_pattern_problem

    problem = feature_pattern_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _securities(value: list[str]) -> list[str]:
    for source in value:
        if source in SECURITY_SOURCES:
            continue
        if not source.lower().endswith(".csv"):
            raise ValueError(f"{source!r} is neither a built-in security master ({', '.join(SECURITY_SOURCES)}) nor "
                             f"the path of a securities.csv")
        # Checked here, before any work, and whether or not linking is on (off, the file would go unread).
        if not Path(source).expanduser().is_file():
            raise ValueError(f"{source!r}: file not found (relative to {Path.cwd()})")
    return value


TimeZone = Annotated[str, AfterValidator(time_zone)]
Clock = Annotated[str, AfterValidator(_clock)]
IsoDate = Annotated[str, AfterValidator(_iso_date)]
Encoding = Annotated[str, AfterValidator(_encoding)]
Names = Annotated[Any, AfterValidator(_names)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]  # in (0, 1]
PositiveIntOrAuto = Annotated[Any, AfterValidator(_n_init)]  # a positive integer or "auto"
# Pre-open feature columns: names or ``prefix*`` patterns (``*``: every one); a diagnostic column named outright
# (the session's bar, forward_return) is refused with the key, before any work.
FeaturePatterns = Annotated[list[str], Field(min_length=1), AfterValidator(_feature_patterns)]
SECURITY_SOURCES = ("stocknet", "indices")  # engine.securities.load_master's built-in sources
# Security masters for ticker linking, merged in order: built-in names, or paths of securities.csv files.
Securities = Annotated[list[str], Field(min_length=1), AfterValidator(_securities)]
LINK_MODES = ("off", "fill-missing", "always")  # signals.linking.LINK_MODES


# --- the schema, one model per config group ------------------------------------------------------------------

class _Section(BaseModel):
    model_config = _STRICT


class Paths(_Section):
    roots: Annotated[list[str], Field(min_length=1)]
    cache: str
    models: str
    runs: str
    sweeps: str


class WalkForward(_Section):
    train_sessions: PositiveInt
    step_sessions: PositiveInt
    mode: Literal["expanding", "rolling"]


class Broker(_Section):
    cash: PositiveNumber
    commission_bps: NonNegativeNumber
    slippage_bps: NonNegativeNumber
    fractional: bool
    rebalance_band: NonNegativeNumber


class Risk(_Section):
    max_position: PositiveNumber | None
    max_gross_exposure: PositiveNumber | None
    target_volatility: PositiveNumber | None
    max_leverage: PositiveNumber | None
    stop_loss: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None
    var_limit: PositiveNumber | None
    var_window_sessions: Annotated[int, Field(ge=10)] | None


class Report(_Section):
    enabled: bool


@with_config(ConfigDict(extra="forbid", strict=True))
class Training(TypedDict):
    """How ``signals.finetune.ensure_model`` trains (the names of its RECIPES, METHODS, TRAIN_PRECISIONS,
    TRAIN_DEVICES)."""

    recipe: Literal["default", "long", "dapt"]
    method: Literal["full", "lora"]
    precision: Literal["fp32", "bf16"]
    device: Literal["cpu", "cuda"]


class DatasetNews(_Section):
    """``data.news`` of a catalogued dataset: what is done to its news after loading."""

    link_tickers: Literal[LINK_MODES]


class _Data(_Section):
    name: str
    start: IsoDate | None
    end: IsoDate | None
    exchange_timezone: TimeZone
    session_open: Clock
    session_close: Clock
    news_lookback_days: NonNegativeInt


class DjiaData(_Data):
    type: Literal["djia"]
    news_timezone: TimeZone
    news: DatasetNews
    securities: Securities


class StocknetData(_Data):
    type: Literal["stocknet"]
    tickers: Names
    drop_retweets: bool
    languages: Names
    news: DatasetNews
    securities: Securities


class PriceColumns(_Section):
    ticker: str | None
    date: str
    open: str
    high: str
    low: str
    close: str
    volume: str | None


class CsvPrices(_Section):
    path: str
    encoding: Encoding
    ticker: str | None
    columns: PriceColumns


class NewsColumns(_Section):
    timestamp: str
    text: str
    ticker: str | None


class CsvNews(_Section):
    path: str | None
    columns: NewsColumns
    timezone: TimeZone | None
    encoding: Encoding
    link_tickers: Literal[LINK_MODES]


class CsvData(_Data):
    type: Literal["csv"]
    prices: CsvPrices
    news: CsvNews
    securities: Securities


DATA_TYPES: dict[str, type[_Data]] = {"djia": DjiaData, "stocknet": StocknetData, "csv": CsvData}


class Config(_Section):
    """The task config; ``data`` (by its type), ``signals`` (each provider by its target) and ``strategy`` (by its
    rule) are checked on their own."""

    paths: Paths
    latency_minutes: NonNegativeNumber
    engine: Literal["backtrader", "vectorized"]  # engine.backtest.run_backtest or engine.vectorized.run_vectorized
    walk_forward: WalkForward
    data: dict[str, Any]
    signals: dict[str, Any]
    strategy: dict[str, Any]
    broker: Broker
    report: Report
    risk: Risk


class Launcher(_Section):
    """``hydra.launcher`` of the newsbt sweep launcher (``_target_`` aside)."""

    backend: Literal["local", "ray"]
    workers: PositiveInt | None
    ray_address: str | None
    metric: str
    heatmap: list[str] | None
    # Re-run the best k runs by ``metric`` with engine=backtrader after an engine=vectorized sweep (null: none).
    # Optional here so that a launcher config written before it still validates.
    screen_top_k: PositiveInt | None = None
    # The files of each run (engine.run.run's ``files``): all, or light (same metrics, no detail files).
    run_files: Literal["all", "light"] = "all"
    # How local workers start: auto (forked where that is safe, else spawned; engine.grid.can_fork) or spawn.
    start_method: Literal["auto", "spawn"] = "auto"


NEWSBT_LAUNCHER = "hydra_plugins.newsbt_launcher.launcher.NewsbtLauncher"
NEWSBT_SWEEPER = "hydra_plugins.newsbt_launcher.sweeper.NewsbtSweeper"  # BasicSweeper's jobs, composed faster
# Metrics engine.run adds to performance_metrics' own (reports/metrics.py), by which a sweep may rank its runs.
RUN_METRICS = ("final_value", "in_sample_sharpe", "out_of_sample_sharpe")


# --- checking ------------------------------------------------------------------------------------------------

_KINDS = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false", "string_type": "a string",
          "list_type": "a list", "dict_type": "a mapping of keys", "model_type": "a mapping of keys",
          "finite_number": "a finite number"}


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known: {', '.join(known)})" if known else ""


def _fields_at(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    for position, name in enumerate(path):
        field = model.model_fields.get(name)
        annotation = getattr(field, "annotation", None)
        if typing.is_typeddict(annotation) and position == len(path) - 1:
            return list(typing.get_type_hints(annotation))
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [field.alias or name for name, field in model.model_fields.items()]


def _message(error: dict, prefix: str, model: type[BaseModel]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(part for part in [prefix, *loc] if part) or prefix or "config"
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key{_suggest(loc[-1], _fields_at(model, loc[:-1]))}"
    if kind == "missing":
        return f"{key}: required"
    if kind == "value_error":
        text = error["msg"].removeprefix("Value error, ")
        return f"{key}: {text}"
    if kind == "too_short":
        return f"{key}: must have at least {error['ctx']['min_length']} item(s), got {value!r}"
    if _KINDS.get(kind):
        return f"{key}: must be {_KINDS[kind]}, got {value!r}"
    text = error["msg"].replace("Input should be", "must be", 1)
    return f"{key}: {text[:1].lower()}{text[1:]}, got {value!r}"


def check_section(model: type[BaseModel], values: dict, prefix: str) -> dict:
    """Return ``values`` if they fit ``model``, else raise a ConfigError naming the first bad key under ``prefix``.

    >>> check_section(WalkForward, {"train_sessions": 0, "step_sessions": 5, "mode": "rolling"}, "walk_forward")
    """
    try:
        model.model_validate(_python(values))
    except ValidationError as error:
        # A misspelt key also leaves the right one missing: the unknown key is the mistake to name.
        first = min(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise ConfigError(_message(first, prefix, model)) from None
    return values


def _python(value: Any) -> Any:
    """Numpy scalars (from frames and computed values) as the Python numbers a config would hold."""
    if isinstance(value, dict):
        return {key: _python(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_python(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value


def task_container(cfg: Any) -> dict:
    """The task config of a composed ``cfg`` (a DictConfig; its ``hydra`` node left out) as plain, resolved
    containers (what a run reads; a value not given stays "???"); an interpolation that does not resolve is a
    ConfigError naming its key.

    >>> job = task_container(sweep_config)  # {"data": {...}, "strategy": {...}, ...}
    """
    from omegaconf import OmegaConf
    from omegaconf.basecontainer import BaseContainer
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, BaseContainer):  # each section but hydra's (most of a composed config, never read by a run)
        container = {}
        for key in cfg.keys():
            if key != "hydra":
                node = cfg._get_node(key)
                container[key] = (OmegaConf.to_container(node, resolve=False) if isinstance(node, BaseContainer)
                                  else node._value())
    else:
        container = OmegaConf.to_container(cfg, resolve=False)
        container.pop("hydra", None)
    if not _interpolates(container):  # nothing to resolve: already what resolving would give
        return container
    try:
        return OmegaConf.to_container(OmegaConf.create(container), resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError(f"{key}: {_first_line(getattr(error, 'msg', None) or error)}") from None


def _interpolates(node: Any) -> bool:
    """Whether a plain config holds an interpolation (``${...}``) anywhere."""
    if isinstance(node, dict):
        return any(_interpolates(value) for value in node.values())
    if isinstance(node, list):
        return any(_interpolates(value) for value in node)
    return isinstance(node, str) and "${" in node


def _plain(cfg: Any) -> dict:
    """The task config (``hydra`` left out) as plain, resolved containers; "???" (a value not given) dropped, so
    that it reads as a missing, required key."""
    from omegaconf import DictConfig

    if isinstance(cfg, DictConfig):
        container = task_container(cfg)
    else:
        container = {key: value for key, value in dict(cfg).items() if key != "hydra"}

    def drop_missing(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_missing(v) for k, v in value.items() if v != "???"}
        if isinstance(value, list):
            return [drop_missing(v) for v in value]
        return value

    return drop_missing(container)


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else str(text)


def _load_target(target: Any, key: str, what: str) -> Any:
    """The object a ``_target_`` ("package.module.name") names; ConfigError naming ``key`` if it cannot be loaded."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{key}: must name {what} as package.module.name, got {target!r}")
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(f"{key}: cannot load {target!r} (no module named {error.name!r})") from None
    except Exception as error:  # a broken module: say what broke it, in one line
        raise ConfigError(f"{key}: cannot load {target!r} ({type(error).__name__}: {_first_line(error)})") from None
    found = getattr(module, name, None)
    if found is None:
        raise ConfigError(f"{key}: module {module_name!r} has no {what.split()[-1]} {name!r}")
    return found


def rule_class(target: Any) -> type:
    """The rule class named by ``strategy._target_`` ("package.module.Class"); ConfigError if it cannot be loaded
    or is not an ``engine.strategy.Rule``.

    >>> rule_class("strategies.sentiment.SentimentRule")
    """
    from engine.strategy import Rule

    cls = _load_target(target, "strategy._target_", "a rule class")
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        module_name, _, class_name = target.rpartition(".")
        raise ConfigError(f"strategy._target_: module {module_name!r} is not a rule (a subclass of "
                          f"engine.strategy.Rule): {class_name!r}")
    return cls


def provider_class(target: Any, key: str) -> tuple[Any, type]:
    """(what ``signals.<slot>._target_`` names, the ``SignalProvider`` class it builds): a provider class, or a
    factory function whose return annotation is one. ConfigError naming ``key`` otherwise.

    >>> provider_class("signals.lexicon.LexiconSentiment", "signals.sentiment._target_")
    """
    from engine.signal import SignalProvider

    found = _load_target(target, key, "a signal provider")
    built = found
    if not isinstance(found, type) and callable(found):
        try:
            built = typing.get_type_hints(found).get("return")
        except Exception:  # an annotation that cannot be resolved: treated as none
            built = None
    if not (isinstance(built, type) and issubclass(built, SignalProvider)):
        raise ConfigError(f"{key}: {target!r} is not a signal provider (a subclass of engine.signal.SignalProvider, "
                          f"or a function annotated to return one)")
    return found, built


@lru_cache(maxsize=None)
def parameter_schema(target: Any, engine_supplied: tuple[str, ...] = ()) -> type[BaseModel]:
    """A schema of the parameters of ``target`` (a class's constructor, or a function): each annotation is its
    type (and limits, e.g. ``PositiveInt``), a parameter without a default is required, and a name the target
    lacks is an unknown key. ``engine_supplied`` parameters (a provider's ``context``) are no config keys."""
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target, include_extras=True)
    except Exception:  # an annotation that cannot be resolved checks nothing rather than failing
        hints = {}
    fields: dict[str, Any] = {}
    open_ended = False
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            open_ended |= parameter.kind == parameter.VAR_KEYWORD
            continue
        if name in engine_supplied:
            continue
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (hints.get(name, Any), default)
    config = ConfigDict(extra="allow" if open_ended else "forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{getattr(target, '__name__', 'Target')}Parameters", __config__=config, **fields)


def strategy_parameters(strategy: dict) -> tuple[type, dict]:
    """The rule class of a plain ``strategy`` config and its checked constructor parameters."""
    params = dict(strategy)
    if not isinstance(params.pop("name", ""), str):
        raise ConfigError(f"strategy.name: must be a string, got {strategy['name']!r}")
    if "_target_" not in params:
        raise ConfigError("strategy._target_: required (which rule class to use)")
    cls = rule_class(params.pop("_target_"))
    check_section(parameter_schema(cls), params, "strategy")
    return cls, params


PROVIDER_ENGINE_KEYS = ("_target_", "enabled")  # keys of signals.<slot> the engine reads, not the provider


def provider_parameters(slot: str, values: Any) -> tuple[Any, type, dict] | None:
    """For ``signals.<slot>``: (its target, the provider class it builds, the checked parameters), or None when
    the slot is null or ``enabled: false``. Parameters are checked against the target's signature, as a rule's
    are; ``context`` is the engine's to give.

    >>> target, cls, params = provider_parameters("topics", config["signals"]["topics"])
    """
    key = f"signals.{slot}"
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: must be a provider's config (a mapping with _target_), got {values!r}; pick "
                          f"one of conf/signals/{slot}/ with signals/{slot}=<name>, e.g. signals/sentiment=lexicon")
    params = dict(values)
    enabled = params.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled: must be true or false, got {enabled!r}")
    if "_target_" not in params:
        raise ConfigError(f"{key}._target_: required (which signal provider to build)")
    target, cls = provider_class(params.pop("_target_"), f"{key}._target_")
    check_section(parameter_schema(target, ("context",)), params, key)
    return (target, cls, params) if enabled else None


def validate_config(cfg: Any) -> None:
    """Check a composed config (a DictConfig or plain dict; its ``hydra`` part is left out) against the schema;
    raise a ConfigError naming the first bad key.

    >>> validate_config(compose("config", overrides=["broker.cash=abc"]))  # ConfigError: broker.cash: must be a number, got 'abc'
    """
    from engine.features import check_feature_patterns

    config = _plain(cfg)
    check_section(Config, config, "")
    data = config["data"]
    kind = data.get("type")
    if kind not in DATA_TYPES:
        raise ConfigError(f"data.type: unknown dataset type {kind!r} (known: {', '.join(sorted(DATA_TYPES))})")
    check_section(DATA_TYPES[kind], data, "data")
    if data["start"] is not None and data["end"] is not None and pd.Timestamp(data["start"]) > pd.Timestamp(data["end"]):
        raise ConfigError(f"data.start: {data['start']} is after data.end {data['end']}")
    if _clock_minutes(data["session_open"]) >= _clock_minutes(data["session_close"]):
        raise ConfigError(f"data.session_close: {data['session_close']} is not after data.session_open "
                          f"{data['session_open']}")
    if kind == "stocknet" and data["tickers"] is not None:
        from engine.datasets import load_catalog

        known = load_catalog()["stocknet"]["tickers"]
        for ticker in [data["tickers"]] if isinstance(data["tickers"], str) else data["tickers"]:
            if ticker not in known:
                raise ConfigError(f"data.tickers: unknown stocknet ticker {ticker!r}; known: {', '.join(known)}")
    for slot, values in config["signals"].items():
        provider_parameters(str(slot), values)
    strategy = config["strategy"]
    strategy_parameters(strategy)
    if strategy.get("features") is not None:
        check_feature_patterns(strategy["features"], "strategy.features")


def _clock_minutes(value: str) -> int:
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


def known_metrics() -> list[str]:
    """The metric names a sweep can rank its runs by: every key of ``reports.metrics.performance_metrics``,
    and the ones ``engine.run`` adds (final value, in- and out-of-sample Sharpe)."""
    from reports.metrics import performance_metrics

    sample = pd.Series([0.01, -0.02, 0.015], index=pd.bdate_range("2020-01-01", periods=3))
    return [*performance_metrics(sample, benchmark=sample, trades=0), *RUN_METRICS]


def validate_launcher(launcher: Any, parameters: Sequence[str] | None = None) -> None:
    """Check ``hydra.launcher`` of the newsbt launcher: backend, workers, ray_address, a known ``metric`` and a
    ``heatmap`` of two different swept ``parameters`` (when they are known).

    >>> validate_launcher({"backend": "local", "workers": 2, "ray_address": None, "metric": "sharpe", "heatmap": None})
    """
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(launcher, resolve=True) if isinstance(launcher, DictConfig) else dict(launcher)
    values.pop("_target_", None)
    check_section(Launcher, values, "hydra.launcher")
    metrics = known_metrics()
    if values["metric"] not in metrics:
        raise ConfigError(f"hydra.launcher.metric: unknown metric {values['metric']!r}"
                          f"{_suggest(values['metric'], metrics)}")
    heatmap = values["heatmap"]
    if heatmap is not None:
        if len(heatmap) != 2 or heatmap[0] == heatmap[1]:
            raise ConfigError(f"hydra.launcher.heatmap: needs two different parameters, got {heatmap!r}")
        for key in heatmap:
            if parameters is not None and key not in parameters:
                raise ConfigError(f"hydra.launcher.heatmap: {key!r} is not a parameter of this sweep"
                                  f"{_suggest(key, list(parameters))}")


# --- the command line, before Hydra ---------------------------------------------------------------------------

RUN_MODULE_FILE = Path(__file__).resolve().parent / "run.py"  # where engine.run's @hydra.main looks for ../conf
CONFIG_PATH = "../conf"
CONFIG_NAME = "config"


def _hydra_error(error: Exception) -> ConfigError:
    """A Hydra composition error as one line naming the key (Hydra's own message spans several lines)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException):
        missing = error.missing_cfg_file or "config"
        group, _, option = missing.rpartition("/")
        if group and error.options is not None:
            return ConfigError(f"{group.replace('/', '.')}: unknown option {option!r}"
                               f"{_suggest(option, list(error.options))}")
        return ConfigError(f"{missing}: config not found")
    if isinstance(error, OverrideParseException):
        key = error.override.partition("=")[0].lstrip("+~") or error.override
        return ConfigError(f"{key}: cannot parse {error.override!r} ({_first_line(error.message)})")
    text, cause = str(error), error.__cause__
    quoted = re.search(r"'([^']*)'", text)
    key = quoted.group(1) if quoted else None
    if text.startswith("Could not override") and key:
        parent = getattr(cause, "parent_node", None)
        known = [str(k) for k in parent.keys()] if hasattr(parent, "keys") else []
        return ConfigError(f"{key}: unknown key{_suggest(key.rpartition('.')[2], known)}")
    if text.startswith("Could not append") and key:
        return ConfigError(f"{key}: already in the config; override it without the leading +")
    if text.startswith("Could not delete") and key:
        return ConfigError(f"{key}: cannot delete, it is not in the config")
    if text.startswith(("Ambiguous value for argument", "Sweep parameters")) and key:
        name, _, value = key.partition("=")
        return ConfigError(f"{name}: {value!r} is a sweep; add -m to run one job per value, or write [{value}] "
                           f"for a list")
    match = re.search(r"config group '([^']*)' does not exist", text)
    if match:
        return ConfigError(f"{match.group(1).replace('/', '.')}: no such config group")
    full_key = getattr(cause, "full_key", None) or getattr(error, "full_key", None)
    if full_key:
        detail = getattr(cause, "msg", None) or getattr(error, "msg", None) or cause or error
        return ConfigError(f"{full_key}: {_first_line(detail)}")
    return ConfigError(f"config: {_first_line(text)}")


def _sweep_jobs(hydra_app: Any, master: Any, overrides: list[str]) -> list[list[str]] | None:
    """The override list of every job of a basic-sweeper sweep, as Hydra's BasicSweeper splits them (None for
    another sweeper: its jobs are only known while it runs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = master.hydra.sweeper
    if sweeper.get("_target_") not in ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", NEWSBT_SWEEPER):
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()] + list(overrides)
    parsed = OverridesParser.create(config_loader=hydra_app.config_loader).parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@contextlib.contextmanager
def compositions_remembered() -> Iterator[None]:
    """Within one command, Hydra composes the same config (name, overrides, mode) up to three times: the preflight
    here, Hydra's ``get_mode`` and its run or sweep, a fifth of a second each. While this is open each composition
    is made once, by Hydra, and handed out again as a copy (unpickled: Hydra edits what it gets). The key holds
    the search path, the config name, the overrides, the mode and ``from_shell``; a composition made without
    checking the sweep overrides is never handed to a caller that asks for the check. Only for one command: a
    YAML file edited before the next command in the same process is read again.

    >>> with compositions_remembered(): preflight(argv); main()
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    original = ConfigLoaderImpl.load_configuration
    made: dict[tuple, tuple[bytes, bool]] = {}

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        search = tuple((path.provider, path.path) for path in self.config_search_path.get_path())
        key = (search, config_name, tuple(overrides), run_mode, from_shell)
        known = made.get(key)
        if known is not None and (known[1] or not validate_sweep_overrides):
            return pickle.loads(known[0])
        cfg = original(self, config_name=config_name, overrides=overrides, run_mode=run_mode, from_shell=from_shell,
                       validate_sweep_overrides=validate_sweep_overrides)
        made[key] = (pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL), validate_sweep_overrides)
        return cfg

    ConfigLoaderImpl.load_configuration = load_configuration
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = original


def preflight(argv: Sequence[str]) -> None:
    """Compose the config of ``python -m engine.run *argv`` as Hydra will and validate it (every job of a ``-m``
    sweep, and the sweep launcher's settings) before Hydra creates any folder; raise a ConfigError naming the
    first bad key. The jobs of a sweep run by the newsbt sweeper and launcher are left to that sweeper, which
    checks them all before it makes the sweep folder. Help and config-printing flags are left to Hydra.

    >>> preflight(["strategy=regression", "strategy.alpha=abc"])  # ConfigError: strategy.alpha: must be a number, got 'abc'
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    args = get_args_parser().parse_args(list(argv))
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.resolve:
        return
    search_path = create_automatic_config_search_path(str(RUN_MODULE_FILE), None, args.config_path or CONFIG_PATH)
    if args.config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{Path(args.config_dir).resolve()}",
                            anchor=SearchPathQuery(provider="schema"))
    config_name = args.config_name or CONFIG_NAME
    overrides = list(args.overrides)
    GlobalHydra.instance().clear()
    try:
        hydra_app = Hydra.create_main_hydra2(task_name=RUN_MODULE_FILE.stem, config_search_path=search_path)
        # The compositions Hydra makes next, made here first (compositions_remembered hands them to Hydra): its
        # get_mode's, whose hydra.mode is the config's own (None unless a config sets it), then the run's or
        # sweep's, with the mode override Hydra adds (hydra._internal.utils._run_app).
        configured = hydra_app.compose_config(config_name, overrides, run_mode=RunMode.MULTIRUN,
                                              with_log_configuration=False, validate_sweep_overrides=False).hydra.mode
        if configured is None or (args.multirun and configured == RunMode.RUN):
            mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
            overrides = [*overrides, f"hydra.mode={mode.name}"]
        else:
            mode = configured
        master = hydra_app.compose_config(config_name, overrides, run_mode=mode, with_log_configuration=False)
        if mode == RunMode.RUN:
            validate_config(master)
            return
        # the task overrides (hydra.* ones left out), which Hydra hands its sweeper
        jobs = _sweep_jobs(hydra_app, master, list(master.hydra.overrides.task))
        if master.hydra.launcher.get("_target_") == NEWSBT_LAUNCHER:
            parameters = None if jobs is None else sorted({o.partition("=")[0].lstrip("+~") for j in jobs for o in j})
            validate_launcher(master.hydra.launcher, parameters)
            if master.hydra.sweeper.get("_target_") == NEWSBT_SWEEPER:
                return  # the newsbt sweeper composes and checks every job before Hydra makes the sweep folder
        from engine.grid import compose_jobs  # one composition per choice of config groups, not per job

        for composed in compose_jobs(hydra_app.config_loader, master, jobs or []):
            validate_config(composed)
    except (HydraException, OmegaConfBaseException) as error:
        raise _hydra_error(error) from None
    finally:
        GlobalHydra.instance().clear()


# --- the run folder: remove only what a failed run created --------------------------------------------------------

@dataclass(frozen=True)
class FolderRecord:
    """A run folder as it was before Hydra made it: whether it existed, its entries then, the topmost folder
    that Hydra's ``mkdir(parents=True)`` creates, and the entries Hydra and newsbt write into it."""

    path: Path
    existed: bool
    entries: frozenset[str]
    created_top: Path | None
    own_entries: frozenset[str]


_RUN_FOLDER: list[FolderRecord] = []  # the record of this process's run (Hydra runs one job per process)


def record_run_folder(path: Path, own_entries: Sequence[str]) -> FolderRecord:
    """Note what ``path`` held before this run: called before Hydra creates it.

    >>> record_run_folder(Path("runs/x"), [".hydra", "run.log"])
    """
    path = Path(os.path.abspath(path))  # as Hydra names runtime.output_dir
    created_top = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        created_top = folder
    entries = frozenset(p.name for p in path.iterdir()) if path.is_dir() else frozenset()
    record = FolderRecord(path, path.exists(), entries, created_top, frozenset(own_entries))
    _RUN_FOLDER[:] = [record]
    return record


def discard_run_folder(path: Path) -> list[Path]:
    """After a failed run: remove what the run created in ``path``, never anything that was there before it.

    Hydra's and newsbt's own entries (``.hydra``, the job log, newsbt's staging folder) that did not exist
    before are removed; then the folder, and the parents Hydra created for it, if they are left empty. A
    folder with no record (its state before the run unknown) is left as it is. Returns what was removed.

    >>> discard_run_folder(Path(HydraConfig.get().runtime.output_dir))
    """
    path = Path(os.path.abspath(path))
    record = next((r for r in _RUN_FOLDER if r.path == path), None)
    if record is None or not path.is_dir():
        return []
    removed = []
    for name in sorted(record.own_entries - record.entries):
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists() or entry.is_symlink():
            entry.unlink(missing_ok=True)
        else:
            continue
        removed.append(entry)
    if record.existed or record.created_top is None:
        return removed
    for folder in [path, *path.parents]:
        try:
            folder.rmdir()  # only ever an empty folder
        except OSError:
            break
        removed.append(folder)
        if folder == record.created_top:
            break
    return removed


class RunFolderCallback(Callback):
    """``hydra.callbacks.run_folder``: records the run folder before Hydra creates it (see ``discard_run_folder``).

    Reading ``hydra.run.dir`` here also fixes its ``${now:...}`` for this run: Hydra's resolver caches the time
    on this config, which is the one ``run_job`` then creates the folder from.
    """

    record: FolderRecord | None = None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        own = [f"{hydra_cfg.job.name}.log", ".incomplete"]  # Hydra's job log; run()'s staging folder
        if hydra_cfg.output_subdir is not None:
            own.append(str(Path(str(hydra_cfg.output_subdir)).parts[0]))
        self.record = record_run_folder(Path(str(hydra_cfg.run.dir)), own)


def report_and_exit(error: Exception, status: int = 2) -> typing.NoReturn:
    """Print ``newsbt: error: <message>`` as one line on stderr and exit with ``status``."""
    print(f"newsbt: error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(status)
