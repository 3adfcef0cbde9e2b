"""Signal providers as plug-ins: a provider defined here, outside signals/, with one YAML file of its own, runs end
to end, learned and not learned; providers run in the order their needs require (a cycle is a config error);
each is cached under its own key; the sweep's signal preparation follows from the declarations; ticker linking
through a run; the run's news.parquet and stage_seconds; progress lines without a terminal."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine import grid
from engine.cache import CACHE_STATS
from engine.config import PositiveNumber, validate_config
from engine.errors import ConfigError
from engine.progress import Progress
from engine.providers import SignalPlan, Slot, plan_providers
from engine.run import linking_line, run
from engine.signal import SignalProvider
from tests.conftest import ROOT

CONF = str(ROOT / "conf")
TRAIN, STEP, SESSIONS = 40, 20, 80  # two walk-forward windows: sessions 40-59 and 60-79 decided
# The items of each day, and what is known of them by hand: words, and tone with the word lists below
# (positive GAIN, PROFIT; negative LOSS): (positive - negative) / (positive + negative), 0 without a hit.
TEXTS = {"profit gain": (2, 1.0), "loss": (1, -1.0), "profit and more profit": (4, 1.0),
         "quiet session with no words of note": (7, 0.0), "gain loss gain": (3, 1 / 3)}
ORDER = list(TEXTS)


# --- the toy providers: plug-ins defined outside signals/ ------------------------------------------------------

class NewsWords(SignalProvider):
    """Not learned: the mean number of words of a session's items, times ``scale``."""

    name = "toywords"
    columns = ("toy_words",)
    item_columns = ("toy_words",)

    def __init__(self, scale: PositiveNumber):
        self.scale = scale

    def transform(self, news: pd.DataFrame) -> pd.DataFrame:
        words = news["text"].str.split().str.len().astype("float64") * self.scale
        frame = pd.DataFrame({"ticker": news["ticker"], "session": news["session"], "toy_words": words})
        return frame.groupby(["ticker", "session"]).mean()


class Centred(SignalProvider):
    """Learned from session features: ``toy_words`` less its mean over the training rows, plus ``shift``."""

    name = "toycentre"
    needs = ("toy_words",)
    columns = ("toy_centred",)
    learned = True
    fits: list = []  # (columns, last session) of every fit

    def __init__(self, shift: float = 0.0):
        self.shift = shift

    def fit(self, rows: pd.DataFrame) -> "Centred":
        Centred.fits.append((list(rows.columns), rows.index.get_level_values("session").max()))
        self.mean_ = rows["toy_words"].mean()
        return self

    def transform(self, rows: pd.DataFrame) -> pd.Series:
        return (rows["toy_words"] - self.mean_ + self.shift).rename("toy_centred")


class NotAProvider:
    def __init__(self, scale: float = 1.0):
        self.scale = scale


class Reads(SignalProvider):
    """For the ordering tests: needs ``needs``, produces ``produces``."""

    def __init__(self, needs, produces, learned=False):
        self.needs, self.columns, self.learned = tuple(needs), tuple(produces), learned


# --- fixtures ----------------------------------------------------------------------------------------------------

def write_dataset(folder: Path) -> pd.DatetimeIndex:
    """prices.csv (one instrument), news.csv (two items before each open), word lists, and the providers' YAML
    files in a config folder of their own (``conf_extra``)."""
    dates = pd.bdate_range("2019-01-02", periods=SESSIONS)
    opens = 100 * np.cumprod(1 + 0.01 * np.sin(np.arange(SESSIONS)))
    pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "open": opens, "high": opens * 1.01, "low": opens * 0.99,
                  "close": opens * 1.002, "volume": 1000}).to_csv(folder / "prices.csv", index=False)
    rows = [(f"{day:%Y-%m-%d}T08:{minute}:00-05:00", ORDER[(number + shift) % 5])
            for number, day in enumerate(dates) for minute, shift in (("00", 0), ("05", 2))]
    pd.DataFrame(rows, columns=["timestamp", "text"]).to_csv(folder / "news.csv", index=False)
    lists = folder / "roots" / "loughran-mcdonald-wordlists"
    lists.mkdir(parents=True)
    (lists / "LoughranMcDonald_Positive.csv").write_text("GAIN,2009\nPROFIT,2009\n", encoding="ascii")
    (lists / "LoughranMcDonald_Negative.csv").write_text("LOSS,2009\n", encoding="ascii")
    for slot, option, text in [("toy", "words", f"_target_: {__name__}.NewsWords\nscale: 2.0\n"),
                               ("centre", "centre", f"_target_: {__name__}.Centred\nenabled: true\nshift: 0.0\n")]:
        (folder / "conf_extra" / "signals" / slot).mkdir(parents=True)
        (folder / "conf_extra" / "signals" / slot / f"{option}.yaml").write_text(text)
    return dates


def overrides(folder: Path, *extra: str) -> list[str]:
    return ["data=csv", f"data.prices.path={folder}/prices.csv", "data.prices.ticker=PLANT",
            f"data.news.path={folder}/news.csv", "data.news.columns.ticker=null", "signals/sentiment=lexicon",
            f"paths.roots=[{folder}/roots]", f"paths.cache={folder}/cache", "report.enabled=false",
            f"walk_forward.train_sessions={TRAIN}", f"walk_forward.step_sessions={STEP}",
            "signals.topics.enabled=false", "signals.regimes.enabled=false", "signals.events.enabled=false",
            f"hydra.searchpath=[file://{folder}/conf_extra]", "+signals/toy=words", "+signals/centre=centre",
            "strategy=regression", "strategy.features=[toy_centred,toy_words]", "strategy.min_train_rows=10",
            *extra]


def compose_cfg(folder: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides(folder, *extra))


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, pd.DatetimeIndex]:
    return tmp_path, write_dataset(tmp_path)


def expected_words(dates: pd.DatetimeIndex, scale: float = 2.0) -> pd.Series:
    """Each session's mean word count of its two items, times ``scale``, by date: worked out from ``TEXTS``."""
    return pd.Series([scale * (TEXTS[ORDER[n % 5]][0] + TEXTS[ORDER[(n + 2) % 5]][0]) / 2 for n in range(len(dates))],
                     index=dates.strftime("%Y-%m-%d"))


def open_of(day: pd.Timestamp) -> pd.Timestamp:
    """The 09:30 New York open of ``day``, in UTC."""
    return pd.Timestamp(f"{day:%Y-%m-%d} 09:30", tz="America/New_York").tz_convert("UTC")


def session_dates(frame: pd.DataFrame) -> list[str]:
    return list(pd.DatetimeIndex(frame.index.get_level_values("session")).tz_convert("America/New_York")
                .strftime("%Y-%m-%d"))


def cache_delta(before: Counter) -> dict:
    return {key: value for key, value in (Counter(CACHE_STATS) - before).items() if value}


# --- end to end -------------------------------------------------------------------------------------------------

def test_a_provider_of_ones_own_runs_end_to_end_learned_and_not(dataset):
    folder, dates = dataset
    Centred.fits = []
    metrics = run(compose_cfg(folder), folder / "run")
    signals = pd.read_parquet(folder / "run" / "signals.parquet")
    words = expected_words(dates)
    # Not learned: computed once over all the data, a feature of every session.
    assert np.allclose(signals["toy_words"].to_numpy(), words.loc[session_dates(signals)].to_numpy())
    # Learned: fitted per window on toy_words (what it needs, nothing else: no label, no diagnostic) of the
    # sessions before the window only, then applied to the window's sessions.
    assert Centred.fits == [(["toy_words"], open_of(dates[TRAIN - 1])), (["toy_words"], open_of(dates[TRAIN + STEP - 1]))]
    for first, last in [(TRAIN, TRAIN + STEP), (TRAIN + STEP, SESSIONS)]:
        training_mean = words.iloc[:first].mean()
        decided = signals[[d in set(dates[first:last].strftime("%Y-%m-%d")) for d in session_dates(signals)]]
        assert np.allclose(decided["toy_centred"].to_numpy(),
                           words.loc[session_dates(decided)].to_numpy() - training_mean)
    assert metrics["sessions"] == SESSIONS - TRAIN + 1  # the decided sessions and the one priming the feeds


def test_the_yaml_of_a_new_provider_works_from_the_command_line(dataset):
    folder, dates = dataset
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "engine.run", *overrides(folder, f"hydra.run.dir={folder}/cli")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((folder / "cli" / "metrics.json").read_text())
    # One entry per stage: loading, linking, aligning, each provider by its slot (the learned one's fits inside
    # the walk-forward counted apart from the rule's decisions), the backtests (no report here).
    assert set(metrics["stage_seconds"]) == {"load", "link", "align", "sentiment", "toy", "centre", "decisions",
                                             "backtest"}
    assert all(isinstance(v, float) and v >= 0 for v in metrics["stage_seconds"].values())
    signals = pd.read_parquet(folder / "cli" / "signals.parquet")
    assert {"toy_words", "toy_centred"} <= set(signals.columns)
    # A bad value of the new provider is refused before any work, naming its key.
    bad = subprocess.run([sys.executable, "-m", "engine.run", *overrides(folder, "signals.toy.scale=-1.5",
                                                                          f"hydra.run.dir={folder}/bad")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr == "newsbt: error: signals.toy.scale: must be greater than 0, got -1.5\n"
    assert not (folder / "bad").exists()


def test_news_parquet_keeps_every_aligned_item_with_its_scores(dataset):
    folder, dates = dataset
    run(compose_cfg(folder), folder / "run")
    news = pd.read_parquet(folder / "run" / "news.parquet")
    assert list(news.columns) == ["item", "timestamp", "session", "ticker", "link_method", "source", "text",
                                  "sentiment", "toy_words"]
    assert len(news) == 2 * SESSIONS and news["item"].tolist() == list(range(2 * SESSIONS))
    assert (news["ticker"] == "PLANT").all() and (news["link_method"] == "market").all()  # no ticker column
    # Each item's own tone and word count (times the scale 2), and the session that may first use it: the open
    # of its own day (stamped 08:00 New York, before the 09:30 open).
    assert np.allclose(news["sentiment"], [TEXTS[t][1] for t in news["text"]])
    assert np.allclose(news["toy_words"], [2.0 * TEXTS[t][0] for t in news["text"]])
    assert list(pd.DatetimeIndex(news["session"])) == [open_of(day) for day in dates for _ in range(2)]
    assert (news["timestamp"] < news["session"]).all()


# --- order, cache, sweep preparation ---------------------------------------------------------------------------

def plan(*readers: tuple[str, Reads]) -> SignalPlan:
    return plan_providers([Slot(f"signals.{name}", reader) for name, reader in readers], ["return_1", "return_5"])


def keys(slots) -> list[str]:
    return [slot.key for slot in slots]


def test_providers_run_in_the_order_their_needs_require():
    result = plan(("mix", Reads(["a_*", "b_1"], ["m"])), ("b", Reads(["a_1"], ["b_1"])),
                  ("a", Reads(["news"], ["a_1", "a_2"])), ("price", Reads(["return_*"], ["p"])))
    assert keys(result.fixed) == ["signals.a", "signals.b", "signals.mix", "signals.price"]
    assert result.windowed == []
    # Learned, or needing a learned provider's columns: per window, after everything they need.
    result = plan(("late", Reads(["c"], ["d"])), ("learned", Reads(["a_1"], ["c"], learned=True)),
                  ("a", Reads(["news"], ["a_1"])))
    assert keys(result.fixed) == ["signals.a"] and keys(result.windowed) == ["signals.learned", "signals.late"]


@pytest.mark.parametrize("readers,message", [
    ([("x", Reads(["y_*"], ["x_1"])), ("y", Reads(["x_1"], ["y_1"]))],
     "signals: the providers need each other's columns in a cycle: signals.x needs signals.y needs signals.x"),
    ([("x", Reads(["news"], ["s"])), ("y", Reads(["news"], ["s"]))],
     "signals.y: produces 's', which signals.x already provides"),
    ([("x", Reads(["news"], ["return_1"]))], "signals.x: produces 'return_1', which the price features already provide"),
    ([("x", Reads(["news", "a"], ["s"]))],
     "signals.x: a provider reads news or session features, not both (needs ['news', 'a'])"),
    ([("x", Reads(["news"], ["close"]))], "signals.x: produces 'close', a column not known before the session's open"),
])
def test_a_cycle_or_a_clash_of_columns_is_a_config_error(readers, message):
    with pytest.raises(ConfigError) as error:
        plan(*readers)
    assert str(error.value) == message


def test_a_cycle_in_a_run_fails_before_any_output(dataset, tmp_path):
    folder, _ = dataset
    extra = folder / "conf_extra" / "signals" / "back"
    extra.mkdir()
    (extra / "back.yaml").write_text(f"_target_: {__name__}.Reads\nneeds: [toy_centred]\nproduces: [toy_back]\n")
    (folder / "conf_extra" / "signals" / "centre" / "loop.yaml").write_text(
        f"_target_: {__name__}.Reads\nneeds: [toy_back]\nproduces: [toy_centred]\n")
    with pytest.raises(ConfigError, match=r"^signals: the providers need each other's columns in a cycle: "
                                          r"signals\.centre needs signals\.back needs signals\.centre$"):
        run(compose_cfg(folder, "signals/centre=loop", "+signals/back=back"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_each_provider_is_cached_under_its_own_key(dataset):
    folder, _ = dataset
    before = Counter(CACHE_STATS)
    run(compose_cfg(folder), folder / "a")
    assert cache_delta(before) == {"lexicon.miss": 1, "lexicon-items.miss": 1, "toywords.miss": 1,
                                   "toywords-items.miss": 1, "toycentre-window.miss": 2}
    # Another setting of the learned provider: only it is computed again (two windows).
    before = Counter(CACHE_STATS)
    run(compose_cfg(folder, "signals.centre.shift=1.0"), folder / "b")
    assert cache_delta(before) == {"lexicon.hit": 1, "lexicon-items.hit": 1, "toywords.hit": 1,
                                   "toywords-items.hit": 1, "toycentre-window.miss": 2}
    # Another setting of the provider it needs: both, since what the learned one read changed.
    before = Counter(CACHE_STATS)
    run(compose_cfg(folder, "signals.centre.shift=1.0", "signals.toy.scale=3.0"), folder / "c")
    assert cache_delta(before) == {"lexicon.hit": 1, "lexicon-items.hit": 1, "toywords.miss": 1,
                                   "toywords-items.miss": 1, "toycentre-window.miss": 2}


def job_of(folder: Path, *extra: str) -> dict:
    return OmegaConf.to_container(compose_cfg(folder, *extra), resolve=True)


def test_the_sweep_prepares_what_the_declarations_say_and_the_run_only_reads(dataset):
    folder, _ = dataset
    job = job_of(folder)
    # A learned rule with a learned provider reads signals fitted per walk-forward window: part of its key even
    # though no topic model is on (the old key only knew topics).
    assert json.loads(grid.signal_key(job))["walk_forward"] == job["walk_forward"]
    assert "walk_forward" not in json.loads(grid.signal_key(job_of(folder, "signals.centre.enabled=false")))
    fixed_rule = dict(job, strategy=dict(job["strategy"], _target_="strategies.sentiment.SentimentRule"))
    assert "walk_forward" not in json.loads(grid.signal_key(fixed_rule))
    prepared = grid.execute_prepare(job)
    assert prepared["error"] is None
    assert prepared["cache"] == {"lexicon.miss": 1, "lexicon-items.miss": 1, "toywords.miss": 1,
                                 "toywords-items.miss": 1, "toycentre-window.miss": 2}
    outcome = grid.execute_run(job, str(folder / "run"))
    assert outcome["status"] == "ok", outcome["error"]
    assert outcome["cache"] == {"lexicon.hit": 1, "lexicon-items.hit": 1, "toywords.hit": 1,
                                "toywords-items.hit": 1, "toycentre-window.hit": 2}
    # The sweep's fingerprint names every enabled provider by its slot.
    assert grid.execute_fingerprint(job)["toy"] == {"scale": 2.0}


# --- the config ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    (["signals.toy.scale=-1.5"], "signals.toy.scale: must be greater than 0, got -1.5"),
    (["+signals.toy.scal=1.0"], "signals.toy.scal: unknown key (did you mean scale?)"),
    (["signals.centre.enabled=1"], "signals.centre.enabled: must be true or false, got 1"),
    ([f"signals.toy._target_={__name__}.NotAProvider"],
     f"signals.toy._target_: '{__name__}.NotAProvider' is not a signal provider (a subclass of "
     "engine.signal.SignalProvider, or a function annotated to return one)"),
    (["signals.sentiment=lexicon"],
     "signals.sentiment: must be a provider's config (a mapping with _target_), got 'lexicon'; pick one of "
     "conf/signals/sentiment/ with signals/sentiment=<name>, e.g. signals/sentiment=lexicon"),
    (["signals.regimes.features=[sentiment,close]"],
     "signals.regimes.features: 'close' is not known before the session's open (diagnostic columns: open, high, "
     "low, close, volume, forward_return)"),
])
def test_a_providers_parameters_are_checked_against_its_signature(extra, message, dataset):
    folder, _ = dataset
    with pytest.raises(ConfigError) as error:
        validate_config(compose_cfg(folder, *extra))
    assert str(error.value) == message


# --- ticker linking through a run ---------------------------------------------------------------------------------

LINK_ITEMS = [("", "$AAA beats estimates"), ("", "Qorvantix shares jump"), ("", "markets calm today"),
              ("BBB", "$AAA and $BBB rally"), ("AAA", "quiet day")]


@pytest.fixture
def linking_folder(tmp_path) -> Path:
    dates = pd.bdate_range("2019-01-02", periods=30)
    opens = np.linspace(100, 110, 30)
    pd.concat([pd.DataFrame({"ticker": ticker, "date": dates.strftime("%Y-%m-%d"), "open": opens, "high": opens + 1,
                             "low": opens - 1, "close": opens, "volume": 1000}) for ticker in ("AAA", "BBB")]
              ).to_csv(tmp_path / "prices.csv", index=False)
    pd.DataFrame([(f"{dates[3 + n]:%Y-%m-%d}T08:00:00-05:00", ticker, text) for n, (ticker, text) in enumerate(LINK_ITEMS)],
                 columns=["timestamp", "ticker", "text"]).to_csv(tmp_path / "news.csv", index=False)
    (tmp_path / "securities.csv").write_text("ticker,name\nAAA,Acmetronix Inc\nBBB,Qorvantix Corp\n")
    return tmp_path


def linked_run(folder: Path, mode: str) -> tuple[dict, pd.DataFrame]:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=csv", f"data.prices.path={folder}/prices.csv", f"data.news.path={folder}/news.csv",
            f"data.news.link_tickers={mode}", f"data.securities=[{folder}/securities.csv]", "signals/sentiment=lexicon",
            "report.enabled=false", f"paths.cache={folder}/cache", "strategy.baseline_sessions=null"])
    metrics = run(cfg, folder / mode)
    news = pd.read_parquet(folder / mode / "news.parquet")
    return metrics, news


@pytest.mark.parametrize("mode,report,rows", [
    # Items 0-2 have no ticker; item 3 is BBB's and tags $AAA and $BBB; item 4 is AAA's and names nothing.
    ("off", {"considered": 0, "linked": 0, "unlinked": 0, "by_method": {}, "links": 0, "rows_out": 5},
     [(0, "AAA", "market"), (0, "BBB", "market"), (1, "AAA", "market"), (1, "BBB", "market"), (2, "AAA", "market"),
      (2, "BBB", "market"), (3, "BBB", "source"), (4, "AAA", "source")]),
    ("fill-missing", {"considered": 3, "linked": 2, "unlinked": 1, "by_method": {"cashtag": 1, "name": 1}, "links": 2,
                      "rows_out": 5},
     [(0, "AAA", "cashtag"), (1, "BBB", "name"), (2, "AAA", "market"), (2, "BBB", "market"), (3, "BBB", "source"),
      (4, "AAA", "source")]),
    ("always", {"considered": 5, "linked": 3, "unlinked": 2, "by_method": {"cashtag": 2, "name": 1}, "links": 4,
                "rows_out": 6},
     [(0, "AAA", "cashtag"), (1, "BBB", "name"), (2, "AAA", "market"), (2, "BBB", "market"), (3, "AAA", "cashtag"),
      (3, "BBB", "cashtag"), (4, "AAA", "source")]),
])
def test_link_tickers_modes_through_a_run(mode, report, rows, linking_folder):
    metrics, news = linked_run(linking_folder, mode)
    methods = {"cashtag": 0, "exchange": 0, "symbol": 0, "name": 0, **report["by_method"]}
    assert metrics["news_linking"] == {"mode": mode, **report, "by_method": methods, "rows_in": 5}
    ordered = news.sort_values(["item", "ticker"])
    assert list(zip(ordered["item"], ordered["ticker"], ordered["link_method"])) == rows
    # Every item still reaches a session, and counts once however many tickers it reached.
    assert metrics["news_items"] == metrics["news_aligned"] == 5


def test_a_sweep_fingerprints_the_securities_file_that_linking_reads(linking_folder):
    import hashlib

    securities = linking_folder / "securities.csv"
    data = {"type": "stocknet", "securities": ["stocknet", str(securities)], "news": {"link_tickers": "always"}}
    hashes = grid.DataHashes().of(data)
    assert hashes[f"securities:{securities}"] == hashlib.sha256(securities.read_bytes()).hexdigest()
    # Linking off: the file changes nothing, so it is no input of the run.
    assert not any(key.startswith("securities:") for key in grid.DataHashes().of(dict(data, news={"link_tickers": "off"})))


def test_the_linking_line_says_what_was_linked_and_how():
    report = {"mode": "fill-missing", "considered": 1200, "linked": 300, "unlinked": 900, "links": 320,
              "by_method": {"cashtag": 10, "exchange": 0, "symbol": 40, "name": 250}, "rows_in": 5000, "rows_out": 5020}
    assert linking_line(report) == ("ticker linking (fill-missing): 1,200 items considered, 300 linked (cashtag 10, "
                                    "exchange 0, symbol 40, name 250), 900 unlinked; 5,000 news rows became 5,020")


# --- progress without a terminal ----------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def progress_lines(total: int, seconds_each: float, caplog) -> list[str]:
    clock = FakeClock()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="newsbt"):
        with Progress(total, "fits", unit="windows", clock=clock) as progress:
            assert progress.bar is None  # pytest's stderr is no terminal
            for _ in range(total):
                clock.now += seconds_each
                progress.update()
    return [record.getMessage() for record in caplog.records]


def test_progress_logs_every_tenth_of_the_work(caplog):
    lines = progress_lines(20, 0.5, caplog)
    # 10% of 20 is 2 windows, one second apart: 2 windows/s throughout.
    assert len(lines) == 10
    assert lines[0] == "fits: 2/20 windows (10%), 2.00 windows/s, 9 s left"
    assert lines[-1] == "fits: 20/20 windows (100%), 2.00 windows/s, 0 s left"


def test_progress_logs_every_30_seconds_when_a_tenth_takes_longer(caplog):
    lines = progress_lines(1000, 1.0, caplog)
    # 10% is 100 windows (100 s): the 30 s rule speaks first, at 30, 60, 90 s ... and at the end.
    assert lines[:3] == ["fits: 30/1000 windows (3%), 1.00 windows/s, 16 min 10 s left",
                         "fits: 60/1000 windows (6%), 1.00 windows/s, 15 min 40 s left",
                         "fits: 90/1000 windows (9%), 1.00 windows/s, 15 min 10 s left"]
    assert len(lines) == 1000 // 30 + 1 and lines[-1].startswith("fits: 1000/1000 windows (100%)")
