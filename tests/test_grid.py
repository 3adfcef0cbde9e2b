"""Sweeps: identical results for 1 worker, 2 workers and Ray; resume after a crash; a failing run is isolated;
one summary row per run; signals computed once per distinct signal config; identical configs merged; a run
whose inputs changed is re-run on resume; the private local Ray reachable only from this machine."""
import hashlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from engine import grid
from engine.errors import ConfigError
from engine.grid import RaySession
from engine.run import run
from tests.conftest import ROOT
from tests.test_end_to_end import compose_cfg, write_dataset

METRICS = ["sharpe", "cagr", "max_drawdown", "var_95", "trades", "final_value", "in_sample_sharpe"]


def sweep_command(folder, sweeps, *overrides):
    return [sys.executable, "-m", "engine.run", "-m", "data=csv", f"data.prices.path={folder}/prices.csv",
            "data.prices.ticker=PLANT", f"data.news.path={folder}/news.csv", "data.news.columns.ticker=null",
            "signals/sentiment=lexicon",
            "report.enabled=false", f"paths.cache={folder}/cache", f"paths.sweeps={sweeps}",
            "walk_forward.train_sessions=120", "strategy.baseline_sessions=null", *overrides]


def sweep(folder, sweeps, *overrides):
    done = subprocess.run(sweep_command(folder, sweeps, *overrides), cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def results(sweeps):
    with duckdb.connect(str(sweeps / "csv" / "results.duckdb"), read_only=True) as connection:
        return connection.execute("SELECT * FROM runs ORDER BY run_id").df()


GRID = ["strategy.window_sessions=1,3", "strategy.threshold=0,0.5"]


@pytest.mark.slow
def test_one_worker_two_workers_and_ray_give_identical_results(tmp_path):
    write_dataset(tmp_path)
    frames = {}
    for name, launcher in [("one", ["hydra.launcher.workers=1"]), ("two", ["hydra.launcher.workers=2"]),
                           ("spawned", ["hydra.launcher.workers=2", "hydra.launcher.start_method=spawn"]),
                           ("ray", ["hydra.launcher.backend=ray", "hydra.launcher.workers=2"])]:
        output = sweep(tmp_path, tmp_path / name, *GRID, *launcher)
        started = {"one": "local, 1 forked", "two": "local, 2 forked", "spawned": "local, 2 spawned", "ray": "ray, 2"}
        assert f"({started[name]} workers)" in output.stdout
        frames[name] = results(tmp_path / name)
        assert len(frames[name]) == 4 and (frames[name]["status"] == "ok").all()
        # Signals once: scored at most once (in the preparation step, on a cold cache); every run read the cache.
        counts = {k: int(v) for k, v in re.findall(r"(lexicon\.\w+) (\d+)", output.stdout)}
        assert counts.get("lexicon.miss", 0) == (1 if name == "one" else 0)
        assert counts["lexicon.hit"] + counts.get("lexicon.miss", 0) == 5
    for name in ("two", "spawned", "ray"):
        pd.testing.assert_frame_equal(frames["one"][["run_id", *METRICS]], frames[name][["run_id", *METRICS]])
    assert not (tmp_path / "ray" / "csv" / "ray").exists()  # Ray's files stayed in, and left, the sweep folder
    page = (tmp_path / "one" / "csv" / "summary.html").read_text()
    runs_table = page.split('<table id="runs"', 1)[1].split("<tbody", 1)[1].split("</tbody>", 1)[0]
    assert len(re.findall(r"<tr[ >]", runs_table)) == 4


def test_workers_are_forked_only_while_no_thread_or_threaded_library_is_there(monkeypatch):
    import threading

    assert grid.can_fork() == (threading.active_count() == 1
                               and not any(name in sys.modules for name in grid.FORK_UNSAFE_MODULES))
    for name in grid.FORK_UNSAFE_MODULES:  # as if none were imported (earlier tests import torch and Ray)
        monkeypatch.delitem(sys.modules, name, raising=False)
    if threading.active_count() == 1:
        assert grid.can_fork()
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert not grid.can_fork()  # a lock another thread holds would stay held in the child
    finally:
        release.set()
        thread.join()
    monkeypatch.setitem(sys.modules, "torch", sys)  # any module object: only its name counts
    assert not grid.can_fork()
    assert grid.LocalPool(2, "spawn").start_method == "spawn"


@pytest.mark.slow
def test_failing_run_is_recorded_and_the_others_finish(tmp_path):
    write_dataset(tmp_path)
    # A value only the data can refute (the prices end in 2020): the config schema, which fails a whole sweep
    # before it starts, lets it through; its run fails alone.
    sweep(tmp_path, tmp_path / "s", "data.start=2019-01-02,2030-01-02", "hydra.launcher.workers=2")
    frame = results(tmp_path / "s").set_index("data.start")
    assert frame.loc["2019-01-02", "status"] == "ok"
    assert frame.loc["2030-01-02", "status"] == "error"
    assert "data.start" in frame.loc["2030-01-02", "error"]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    write_dataset(tmp_path)
    sweeps = tmp_path / "s"
    grid = ["strategy.window_sessions=1,2,3,4", "hydra.launcher.workers=1"]
    process = subprocess.Popen(sweep_command(tmp_path, sweeps, *grid), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finished = 0
    for line in process.stdout:
        finished += line.strip().startswith("run ")
        if finished == 2:
            os.killpg(process.pid, signal.SIGKILL)  # the driver and its worker, mid-sweep
            break
    process.wait(timeout=60)
    output = sweep(tmp_path, sweeps, *grid)
    done_before = int(re.search(r"(\d+) already done", output.stdout).group(1))
    assert 2 <= done_before < 4
    frame = results(sweeps)
    assert len(frame) == 4 and (frame["status"] == "ok").all() and frame["run_id"].is_unique


def run_lines(output):
    return [line.strip() for line in output.stdout.splitlines() if line.strip().startswith("run ")]


def cache_counts(output):
    return {key: int(value) for key, value in re.findall(r"(lexicon\.\w+) (\d+)", output.stdout)}


def test_identical_configs_in_a_sweep_share_one_run(tmp_path):
    write_dataset(tmp_path)
    output = sweep(tmp_path, tmp_path / "s", "strategy.threshold=0.1,0.1", "hydra.launcher.workers=1")
    assert "2 jobs, 1 distinct runs (1 duplicates merged)" in output.stdout
    frame = results(tmp_path / "s")
    assert len(frame) == 1 and frame["status"].tolist() == ["ok"]
    # Both jobs are reported ok, the second as the first's run; the backtest ran once: its signals were read
    # from the cache once (the preparation step scored the texts: the one miss).
    first, second = run_lines(output)
    assert first.startswith("run 0 ") and first.endswith(": ok")
    assert second.startswith("run 1 ") and second.endswith(": ok (same config as run 0)")
    assert cache_counts(output) == {"lexicon.miss": 1, "lexicon.hit": 1}


def test_resume_reruns_a_run_whose_prices_file_changed(tmp_path):
    write_dataset(tmp_path)
    sweeps, grid_overrides = tmp_path / "s", ["strategy.window_sessions=2", "hydra.launcher.workers=1"]
    sweep(tmp_path, sweeps, *grid_overrides)
    before = results(sweeps).iloc[0]
    # New prices (another random path), same news: the stored run is stale.
    other = tmp_path / "other"
    other.mkdir()
    write_dataset(other, seed=4)
    (tmp_path / "prices.csv").write_bytes((other / "prices.csv").read_bytes())
    output = sweep(tmp_path, sweeps, *grid_overrides)
    assert "0 already done, 1 stale" in output.stdout and "1 to run" in output.stdout
    after = results(sweeps).iloc[0]
    assert after["run_id"] == before["run_id"] and after["status"] == "ok"
    assert after["final_value"] != before["final_value"]
    # The stored inputs name the prices file's content (SHA-256 of its bytes, computed here independently).
    assert json.loads(before["inputs"])["data"]["prices"] != json.loads(after["inputs"])["data"]["prices"]
    assert json.loads(after["inputs"])["data"]["prices"] == hashlib.sha256((tmp_path / "prices.csv").read_bytes()).hexdigest()
    # The re-run's numbers are those of a fresh run on the new prices.
    cfg = compose_cfg(tmp_path, "data.news.columns.ticker=null", "strategy.window_sessions=2",
                      "strategy.baseline_sessions=null")
    fresh = run(cfg, tmp_path / "fresh")
    assert after["final_value"] == pytest.approx(fresh["final_value"], rel=1e-12)
    assert after["sharpe"] == pytest.approx(fresh["sharpe"], rel=1e-12)


def test_source_hash_follows_the_code(tmp_path, monkeypatch):
    package = tmp_path / "newsbt_probe_package"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(grid, "CODE_PACKAGES", ("newsbt_probe_package",))
    first = grid.code_version()
    # The same digest worked out here: relative path, NUL, bytes, NUL per file.
    expected = hashlib.sha256(b"newsbt_probe_package/__init__.py\0VALUE = 1\n\0").hexdigest()
    assert first["source_sha256"] == expected
    (package / "__init__.py").write_text("VALUE = 2\n")
    assert grid.code_version()["source_sha256"] != expected
    assert first["newsbt"] and "pandas" in first["dependencies"]


def test_fingerprint_follows_the_sentiment_word_lists(tmp_path):
    lists = tmp_path / "roots" / "loughran-mcdonald-wordlists"
    lists.mkdir(parents=True)
    (lists / "LoughranMcDonald_Positive.csv").write_text("GAIN,2009\nPROFIT,2009\n", encoding="ascii")
    (lists / "LoughranMcDonald_Negative.csv").write_text("LOSS,2009\n", encoding="ascii")
    cfg = compose_cfg(tmp_path, f"paths.roots=[{tmp_path / 'roots'}]")
    job = OmegaConf.to_container(cfg, resolve=True)
    first = grid.execute_fingerprint(job)
    # The sentiment provider's identity: the SHA-256 of its sorted words, worked out here; one entry per slot.
    assert first["sentiment"] == {"provider": "lexicon",
                                  "wordlists_sha256": hashlib.sha256(b"GAIN\nPROFIT\n|\nLOSS").hexdigest()}
    assert set(first) == {"sentiment", "topics", "regimes", "events"}
    (lists / "LoughranMcDonald_Negative.csv").write_text("LOSS,2009\nWEAK,2009\n", encoding="ascii")
    second = grid.execute_fingerprint(job)
    assert second["sentiment"]["wordlists_sha256"] == hashlib.sha256(b"GAIN\nPROFIT\n|\nLOSS\nWEAK").hexdigest()
    code, data = {"newsbt": "x"}, grid.DataHashes()
    assert grid.run_fingerprint(grid.run_inputs(job, data, first, code)) != \
        grid.run_fingerprint(grid.run_inputs(job, data, second, code))


# --- the private local Ray --------------------------------------------------------------------------------------

def ray_sockets():
    """(process name, address) of every listening TCP socket and bound UDP socket of this process and its
    descendants (the local Ray's GCS, raylet, agents and workers)."""
    import psutil  # shipped inside ray (ray/thirdparty_files), importable once ray is imported

    found = []
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            name, connections = process.name(), process.net_connections(kind="inet")
        except psutil.Error:  # a process that ended meanwhile
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN or (connection.type == 2 and connection.laddr):  # 2: UDP
                found.append((name, connection.laddr.ip))
    return found


def is_loopback(address):
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket bound to IPv4 loopback
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.fixture(scope="module")
def private_ray(tmp_path_factory):
    """One private local Ray for the tests below (a start costs seconds): it runs one task while someone else's
    file sits at the short-link name the old code used (and replaced); what was seen is recorded."""
    sweep_dir = tmp_path_factory.mktemp("ray") / "a-sweep-folder-whose-path-is-long"
    temporary = (sweep_dir / "ray").resolve()
    assert len(str(temporary)) > grid.RAY_TEMP_MAX_CHARS  # so a short link is needed
    planted = Path("/tmp") / f"newsbt-ray-{hashlib.sha256(str(temporary).encode()).hexdigest()[:8]}"
    planted.write_text("not newsbt's")
    seen = {"temporary": temporary}
    try:
        with RaySession(sweep_dir, workers=1, address=None) as session:
            seen["task_pids"] = [pid for _, pid in session.map(os.getpid, [()])]
            seen["sockets"] = ray_sockets()
            seen["planted_during"] = planted.read_text() if planted.is_file() else None
            link = session.link
            seen["link_target"] = link.resolve() if link is not None and link.is_symlink() else None
            seen["link_folder_mode"] = link.parent.stat().st_mode & 0o777 if link is not None else None
            seen["ray_sessions_in_sweep"] = len(list(temporary.glob("session_*")))
        seen["planted_after"] = planted.read_text() if planted.is_file() else None
        seen["link_folder_left"] = link is not None and link.parent.exists()
        yield seen
    finally:
        planted.unlink(missing_ok=True)


def test_private_local_ray_listens_on_loopback_only(private_ray):
    assert len(private_ray["task_pids"]) == 1  # a worker process was up
    sockets = private_ray["sockets"]
    assert {"gcs_server", "raylet"} <= {name for name, _ in sockets}, sockets  # Ray's servers were seen
    assert all(is_loopback(address) for _, address in sockets), sockets


def test_ray_short_link_leaves_an_existing_path_alone(private_ray):
    assert private_ray["planted_during"] == private_ray["planted_after"] == "not newsbt's"
    assert private_ray["link_target"] == private_ray["temporary"]  # Ray's files go to the sweep folder...
    assert private_ray["ray_sessions_in_sweep"] >= 1  # ...and landed there
    assert private_ray["link_folder_mode"] == 0o700  # the link sits in a private folder of its own
    assert not private_ray["link_folder_left"]  # which is gone afterwards


def test_a_vectorised_screen_re_runs_its_best_runs_with_backtrader(tmp_path):
    write_dataset(tmp_path)
    screen = ["engine=vectorized", "hydra.launcher.workers=1", "hydra.launcher.screen_top_k=2",
              "hydra.launcher.run_files=light"]
    output = sweep(tmp_path, tmp_path / "s", *GRID, *screen)
    frame = results(tmp_path / "s")
    screened = frame[frame["screen_of"].isna()]
    rechecks = frame[frame["screen_of"].notna()].set_index("screen_of")
    assert len(screened) == 4 and (screened["engine"] == "vectorized").all()
    assert len(rechecks) == 2 and (rechecks["engine"] == "backtrader").all() and (rechecks["status"] == "ok").all()
    # The re-runs are the two best screened runs by sharpe (ties: any two of the best), under their own ids.
    best = screened.sort_values("sharpe", ascending=False)
    assert sorted(rechecks["sharpe"]) == sorted(best["sharpe"].head(2))
    assert set(rechecks.index) <= set(best[best["sharpe"] >= best["sharpe"].iloc[1]]["run_id"])
    assert not set(rechecks["run_id"]) & set(screened["run_id"])
    # Both engines give the same numbers, run by run, and the summary says so.
    pairs = screened.set_index("run_id").loc[rechecks.index]
    for column in ("sharpe", "final_value", "trades"):
        assert rechecks[column].tolist() == pairs[column].tolist()
    assert (rechecks["overrides"].str.endswith("engine=backtrader")).all()
    # The screen wrote light run folders (the same metrics), the re-runs every file.
    light, full = (set(path.name for path in Path(folder).iterdir()) for folder in (pairs.iloc[0]["run_dir"], rechecks.iloc[0]["run_dir"]))
    assert {"metrics.json", "equity.csv", "fills.csv"} <= light and not light & {"decisions.csv", "news.parquet", "signals.parquet"}
    assert {"decisions.csv", "news.parquet", "signals.parquet"} <= full
    assert 'max |&Delta; sharpe| = <b class="agreement">0</b>' in (tmp_path / "s" / "csv" / "summary.html").read_text()
    assert "max |Δ sharpe| between the engines 0," in output.stdout
    # Resumed: nothing runs again, the re-runs included.
    again = sweep(tmp_path, tmp_path / "s", *GRID, *screen)
    assert "4 already done" in again.stdout and "(2 already done)" in again.stdout and "re-run of" not in again.stdout


def test_a_light_sweep_resumed_with_all_files_runs_again_to_write_them(tmp_path):
    write_dataset(tmp_path)
    sweeps = tmp_path / "s"
    grid_overrides = ["strategy.window_sessions=2", "hydra.launcher.workers=1"]
    sweep(tmp_path, sweeps, *grid_overrides, "hydra.launcher.run_files=light")
    run_dir = Path(results(sweeps)["run_dir"].iloc[0])
    assert not (run_dir / "signals.parquet").exists()
    light_metrics = json.loads((run_dir / "metrics.json").read_text())
    # Asked for every file now: the light run is not done, it runs again and writes them.
    output = sweep(tmp_path, sweeps, *grid_overrides, "hydra.launcher.run_files=all")
    assert "0 already done" in output.stdout and "1 with fewer files than asked (run again)" in output.stdout
    assert {"signals.parquet", "news.parquet", "decisions.csv"} <= {path.name for path in run_dir.iterdir()}
    frame = results(sweeps)
    assert len(frame) == 1 and frame["run_files"].tolist() == ["all"]
    all_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {k: v for k, v in all_metrics.items() if k != "stage_seconds"} == \
        {k: v for k, v in light_metrics.items() if k != "stage_seconds"}
    # A run with every file is done for a light sweep, and for one asking for all of them.
    for files in ("light", "all"):
        again = sweep(tmp_path, sweeps, *grid_overrides, f"hydra.launcher.run_files={files}")
        assert "1 already done" in again.stdout and "0 to run" in again.stdout


def test_a_row_stored_before_run_files_was_recorded_reads_its_folder(tmp_path):
    store = grid.ResultsStore(tmp_path)
    outcome = {"status": "ok", "error": None, "elapsed_seconds": 1.0, "cache": {}, "metrics": {"sharpe": 1.0}}
    for run_id, files in (("full", ["signals.parquet", "metrics.json"]), ("light", ["metrics.json"])):
        (tmp_path / run_id).mkdir()
        for name in files:
            (tmp_path / run_id / name).write_text("x")
        store.write(run_id, {}, "", str(tmp_path / run_id), outcome, "f", {}, run_files="all")
    store.connection.execute("UPDATE runs SET run_files = NULL")
    assert store.done_runs() == {"full": ("f", "all"), "light": ("f", "light")}
    store.close()


SWEEP_ARGUMENTS = ["data=djia", "strategy=sentiment,cluster", "signals/sentiment=lexicon,transformer",
                   "strategy.name=first,second", "+extra.note=1", "~risk.var_limit", "broker.cash=5000,6000",
                   "hydra.launcher.workers=1"]


@pytest.fixture(scope="module")
def hydra_app():
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from engine.config import CONFIG_PATH, RUN_MODULE_FILE

    GlobalHydra.instance().clear()
    search_path = create_automatic_config_search_path(str(RUN_MODULE_FILE), None, CONFIG_PATH)
    yield Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)
    GlobalHydra.instance().clear()


def test_jobs_composed_once_per_choice_of_groups_equal_hydras_own_composition(hydra_app):
    from hydra.types import RunMode

    from engine.config import _sweep_jobs

    master = hydra_app.compose_config("config", SWEEP_ARGUMENTS, run_mode=RunMode.MULTIRUN,
                                      with_log_configuration=False)
    jobs = _sweep_jobs(hydra_app, master, list(master.hydra.overrides.task))
    assert len(jobs) == 16
    loader = hydra_app.config_loader
    composed = list(grid.compose_jobs(loader, master, jobs))
    for job, fast in zip(jobs, composed):
        slow = loader.load_sweep_config(master, job)  # Hydra composing the job alone
        # the whole config, the hydra node (its record of the overrides, the output dir name) included
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(slow)
        assert OmegaConf.is_struct(fast) and OmegaConf.is_struct(slow)
    by_job = {tuple(job): config for job, config in zip(jobs, composed)}
    first = by_job[("data=djia", "strategy=cluster", "signals/sentiment=lexicon", "strategy.name=second",
                    "+extra.note=1", "~risk.var_limit=null", "broker.cash=6000")]
    assert first.strategy.name == "second" and first.broker.cash == 6000 and first.extra.note == 1
    assert "var_limit" not in first.risk and first.signals.sentiment._target_.endswith("LexiconSentiment")
    assert first.strategy._target_.endswith("ClusterRule")


def test_the_launcher_takes_the_jobs_its_sweeper_checked_only_for_that_very_sweep(hydra_app):
    from hydra.types import RunMode

    from engine.config import _sweep_jobs

    arguments = ["data=djia", "signals/sentiment=lexicon", "strategy.threshold=0,0.01,0.02", "broker.cash=5000,6000"]
    master = hydra_app.compose_config("config", arguments, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
    jobs = _sweep_jobs(hydra_app, master, list(master.hydra.overrides.task))
    assert len(jobs) == 6
    checked = grid.checked_jobs(hydra_app.config_loader, master, jobs)
    for (config, job), expected in zip(checked, grid.compose_jobs(hydra_app.config_loader, master, jobs)):
        assert OmegaConf.to_yaml(config) == OmegaConf.to_yaml(expected) and "hydra" not in job
        # the job a worker runs: the config without its hydra node, resolved (nothing to resolve here)
        alone = OmegaConf.create({k: v for k, v in OmegaConf.to_container(config).items() if k != "hydra"})
        assert job == OmegaConf.to_container(alone, resolve=True, throw_on_missing=False)
    # an interpolation in a job is resolved against the job's own values
    (_, job), = grid.checked_jobs(hydra_app.config_loader, master,
                                  [["data=djia", "signals/sentiment=lexicon", "strategy.name=${data.name}-x"]])
    assert job["strategy"]["name"] == "djia-x"
    grid.keep_checked_jobs(master, jobs, checked)
    # an equal config of another sweep
    other = hydra_app.compose_config("config", arguments, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
    assert grid._take_checked(other, jobs[:2]) == [None, None]
    assert grid._take_checked(master, jobs[:2]) == checked[:2]
    assert grid._take_checked(master, jobs[:3]) == [None, None, checked[2]]  # each taken once
    with pytest.raises(ConfigError, match="strategy.threshold: must be a number, got 'abc'"):
        grid.checked_jobs(hydra_app.config_loader, master, [["data=djia", "strategy.threshold=abc"]])


@pytest.mark.parametrize("bad", [["strategy.nope=1"], ["+broker.cash=1"], ["~risk.nope"], ["strategy=nope"]])
def test_a_job_that_does_not_compose_fails_as_in_hydra(hydra_app, bad):
    from hydra.types import RunMode

    master = hydra_app.compose_config("config", ["hydra.launcher.workers=1"], run_mode=RunMode.MULTIRUN,
                                      with_log_configuration=False)
    with pytest.raises(Exception) as hydra_error:
        hydra_app.config_loader.load_sweep_config(master, bad)
    with pytest.raises(type(hydra_error.value)) as ours:
        list(grid.compose_jobs(hydra_app.config_loader, master, [bad]))
    assert str(ours.value) == str(hydra_error.value)


def sha256_of_frame(frame):
    """engine.cache.fingerprint of one frame, written out from its definition: column names, then pandas' row
    hashes (values and index), then the part separator."""
    digest = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    digest.update(b"\x1f")
    return digest.hexdigest()


def news_like_frame(rows=50):
    sessions = pd.date_range("2020-01-02 14:30", periods=rows, freq="D", tz="UTC")
    return pd.DataFrame({"ticker": pd.array(["AAA", "BBB"] * (rows // 2), dtype="str"), "session": sessions,
                         "text": pd.array([f"headline number {n}" for n in range(rows)], dtype="str"),
                         "score": np.linspace(-1, 1, rows), "count": np.arange(rows)})


def test_a_frame_is_hashed_once_and_any_edited_value_gives_another_key(monkeypatch):
    from engine import cache

    hashed = []
    real = pd.util.hash_pandas_object
    monkeypatch.setattr(pd.util, "hash_pandas_object", lambda *a, **k: hashed.append(1) or real(*a, **k))
    monkeypatch.setattr(cache, "_ROW_HASHES", type(cache._ROW_HASHES)())
    frame = news_like_frame()
    first = cache.fingerprint(frame)
    assert first == sha256_of_frame(frame) and len(hashed) == 2  # pandas hashed it (and the reference did)
    assert cache.fingerprint(frame[["ticker", "session", "text", "score", "count"]]) == first  # a new frame object
    assert cache.fingerprint(frame.copy()) == first and len(hashed) == 2  # same content: hashed no more
    edits = [("text", 7, "headline number 7!"), ("score", 3, 0.5), ("count", 0, 99), ("ticker", 4, "CCC"),
             ("session", 9, pd.Timestamp("2021-01-01", tz="UTC"))]
    keys = {first}
    for column, row, value in edits:
        edited = news_like_frame()
        edited.loc[row, column] = value  # one value, edited in place
        key = cache.fingerprint(edited)
        assert key == sha256_of_frame(edited) and key not in keys
        keys.add(key)
    # In place on the very frame already hashed (its memory reused): still another key, the right one.
    values = frame["score"].to_numpy(copy=False)
    if values.flags.writeable:
        values[5] = 42.0
        assert cache.fingerprint(frame) == sha256_of_frame(frame) != first
    frame.loc[5, "score"] = 43.0
    assert cache.fingerprint(frame) == sha256_of_frame(frame) != first
    # The index is part of the content.
    assert cache.fingerprint(news_like_frame().set_index("count")) != \
        cache.fingerprint(news_like_frame().set_index("count").rename(index=lambda n: n + 1))
    # Frames of numbers only (cheap for pandas to hash) are memoised where they come back, in a sweep's workers.
    numbers = news_like_frame()[["session", "score", "count"]]
    hashed.clear()
    cache.fingerprint(numbers), cache.fingerprint(numbers)
    assert len(hashed) == 2
    monkeypatch.setattr(cache, "_MEMOISE_NUMBERS", [True])
    cache.fingerprint(numbers), cache.fingerprint(numbers.copy())
    assert len(hashed) == 3
    numbers.loc[2, "count"] = -1
    assert cache.fingerprint(numbers) == sha256_of_frame(numbers) and len(hashed) == 5


def test_kept_cache_frames_are_copies_and_follow_the_file(tmp_path, monkeypatch):
    from engine import cache

    monkeypatch.setattr(cache, "_READ_FRAMES", type(cache._READ_FRAMES)())
    cache.keep_in_memory(1 << 20)
    try:
        store = cache.SignalCache(tmp_path)
        computed = []

        def compute(value):
            return lambda: computed.append(value) or pd.DataFrame({"x": [value, value]})

        assert store.get_or_compute("p", {"k": 1}, compute(1.0))["x"].tolist() == [1.0, 1.0]
        read = store.get_or_compute("p", {"k": 1}, compute(2.0))
        read.loc[0, "x"] = -5.0  # the caller's edit
        read.index = [7, 8]
        again = store.get_or_compute("p", {"k": 1}, compute(3.0))
        assert again["x"].tolist() == [1.0, 1.0] and again.index.tolist() == [0, 1] and computed == [1.0]
        # The file replaced (another process, or a user): read again; removed: computed again.
        path = store.path("p", {"k": 1})
        pd.DataFrame({"x": [4.0, 4.0, 4.0]}).to_parquet(path)
        assert store.get_or_compute("p", {"k": 1}, compute(5.0))["x"].tolist() == [4.0, 4.0, 4.0]
        path.unlink()
        assert store.get_or_compute("p", {"k": 1}, compute(6.0))["x"].tolist() == [6.0, 6.0]
        assert computed == [1.0, 6.0]
    finally:
        cache.keep_in_memory(0)


def test_the_benchmark_is_computed_once_per_bars_and_broker(monkeypatch):
    from engine import run as run_module
    from engine.run import _benchmark_values
    from engine.vectorized import run_vectorized
    from tests.conftest import make_prices

    monkeypatch.setattr(run_module, "_BENCHMARKS", {})
    calls = []

    def counted(bars, broker):
        calls.append(1)
        return run_vectorized(bars, broker)

    dates = pd.bdate_range("2020-01-02", periods=6)
    prices = make_prices(dates, [10, 11, 12, 11, 13, 14], [11, 12, 11, 13, 14, 15])
    bars = run_module.backtest_bars(prices, pd.Series(
        1.0, index=pd.MultiIndex.from_arrays([prices["ticker"], prices["timestamp"]], names=["ticker", "session"])))
    broker = {"cash": 1000.0, "commission_bps": 0.0, "slippage_bps": 0.0, "fractional": False,
              "rebalance_band": float("inf")}
    first = _benchmark_values(counted, bars, broker)
    # All in at the second session's open: 1000 // 11 = 90 units, 10 left in cash; marked at each close.
    assert first.tolist()[1:] == [10 + 90 * close for close in [12, 11, 13, 14, 15]]
    assert _benchmark_values(counted, bars.copy(), dict(broker)).tolist() == first.tolist() and len(calls) == 1
    moved = bars.copy()
    moved.iloc[3, moved.columns.get_loc("close")] = 20.0  # one value of the bars
    assert _benchmark_values(counted, moved, broker)[3] == 10 + 90 * 20.0 and len(calls) == 2
    richer = _benchmark_values(counted, bars, dict(broker, cash=2000.0))  # 181 units, 9 in cash
    assert richer[1] == 9 + 181 * 12 and len(calls) == 3
    bars.iloc[4, bars.columns.get_loc("close")] = 30.0  # the very frame already keyed, edited in place
    assert _benchmark_values(counted, bars, broker)[4] == 10 + 90 * 30.0 and len(calls) == 4
    later = bars.set_axis(bars.index.set_levels(bars.index.levels[1] + pd.Timedelta(days=7), level=1))
    _benchmark_values(counted, later, broker)  # the same values a week later: other bars
    assert len(calls) == 5


@pytest.mark.parametrize("overrides", [
    ["strategy=cluster", "data=djia"], ["strategy=regression", "data=stocknet", "signals/sentiment=transformer"],
    ["strategy=sentiment", "data=csv"], ["strategy=buy_and_hold", "engine=vectorized"],
])
def test_config_yaml_is_omegaconfs_text(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from engine.run import config_yaml

    GlobalHydra.instance().clear()  # an earlier test's command may have left Hydra initialised
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert config_yaml(cfg) == OmegaConf.to_yaml(cfg, resolve=True)
    # Strings that would read back as booleans, numbers or null are quoted; odd text survives.
    tricky = OmegaConf.create({
        "strings": ["yes", "No", "on", "1e3", "0x10", "1_000", ".inf", "null", "~", "", " lead", "a: b", "#hash",
                    "multi\nline", "é ü 株", "-", "[x]", "{y}", "*star", "x " * 60, "2020-01-02", "12:30"],
        "numbers": [0, -1, 1e-9, 1e300, float("inf"), float("nan"), True, None],
        "nested": {"empty_list": [], "empty_dict": {}, "key with space": {"deep": "${strings.0}"}},
    })
    text = config_yaml(tricky)
    assert text == OmegaConf.to_yaml(tricky, resolve=True)
    assert OmegaConf.to_yaml(OmegaConf.create(text)) == OmegaConf.to_yaml(tricky, resolve=True)
    # Text libyaml writes otherwise (characters beyond the BMP, C1 controls, line separators, long keys): OmegaConf's.
    odd = OmegaConf.create({"name": "🚀", "nel": "a\x85b", "lines": "x\u2028y", "k" * 127: 1, "bom": "\ufeffz"})
    assert config_yaml(odd) == OmegaConf.to_yaml(odd, resolve=True)
    rng = np.random.default_rng(3)
    pool = list("ab :#'\"\\-?,[]{}*&!|>%@`\t\n\r\x00\x07\x1b\x7f\x85\xa0é\u2028\u2029\ufeff\ufffd😀") + ["yes", "1e3"]
    values = ["".join(rng.choice(pool, size=rng.integers(0, 8))) for _ in range(2000)]
    random = OmegaConf.create({"values": values, "keyed": {f"k{n}{value}": n for n, value in enumerate(values[:200])}})
    assert config_yaml(random) == OmegaConf.to_yaml(random, resolve=True)


def test_workers_default_to_the_cores_this_process_may_use(monkeypatch):
    from engine.prefit import available_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)  # as `taskset -c 1` would allow
    assert available_cores() == 1
    grid.start_local_pool(None)
    try:
        assert grid._STARTED[0].workers == 1
    finally:
        grid.discard_local_pool()


def test_a_sweep_piped_into_a_reader_that_stops_finishes_quietly(tmp_path):
    # `python -m engine.run -m ... | head -1`: the reader goes after the first line; the sweep still runs every
    # job and writes its results, with no BrokenPipeError traceback.
    write_dataset(tmp_path)
    command = sweep_command(tmp_path, tmp_path / "sweeps", *GRID)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    first = process.stdout.readline()
    process.stdout.close()  # the reader is gone
    _, errors = process.communicate(timeout=600)
    assert first.startswith(b"sweep ") and process.returncode == 0, errors.decode()[-2000:]
    assert b"Traceback" not in errors and b"BrokenPipe" not in errors
    stored = results(tmp_path / "sweeps")
    assert len(stored) == 4 and (stored["status"] == "ok").all()


def test_a_command_composes_each_config_once_and_hands_out_copies(hydra_app, monkeypatch):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.types import RunMode

    from engine.config import compositions_remembered

    made = []
    real = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration",
                        lambda self, *a, **k: made.append(k.get("run_mode")) or real(self, *a, **k))
    overrides = ["strategy=cluster", "broker.cash=5000"]
    with compositions_remembered():
        first = hydra_app.compose_config("config", overrides, run_mode=RunMode.RUN)
        first.broker.cash = 1.0  # Hydra edits what it gets: the next caller must not see it
        again = hydra_app.compose_config("config", list(overrides), run_mode=RunMode.RUN)
        assert again.broker.cash == 5000 and again.strategy.name == "cluster" and len(made) == 1
        hydra_app.compose_config("config", overrides, run_mode=RunMode.MULTIRUN)  # another mode: composed
        hydra_app.compose_config("config", [*overrides, "risk.stop_loss=0.1"], run_mode=RunMode.RUN)  # others
        assert len(made) == 3
        # made without checking sweep overrides: not handed to a caller asking for the check, the other way it is
        hydra_app.compose_config("config", ["strategy=regression"], run_mode=RunMode.MULTIRUN,
                                 validate_sweep_overrides=False)
        hydra_app.compose_config("config", ["strategy=regression"], run_mode=RunMode.MULTIRUN)
        hydra_app.compose_config("config", ["strategy=regression"], run_mode=RunMode.MULTIRUN,
                                 validate_sweep_overrides=False)
        assert len(made) == 5
    hydra_app.compose_config("config", overrides, run_mode=RunMode.RUN)  # after the command: read again
    assert len(made) == 6


def test_forked_workers_print_what_spawned_ones_print(tmp_path):
    # A forked worker inherits the command's Hydra logging (INFO to stdout); it must log as a spawned one does.
    write_dataset(tmp_path)
    outputs = {}
    for method in ("auto", "spawn"):
        command = [part for part in sweep_command(tmp_path, tmp_path / method, "strategy=regression",
                                                  "strategy.threshold=0,0.5", "hydra.launcher.workers=2",
                                                  f"hydra.launcher.start_method={method}")
                   if part != "strategy.baseline_sessions=null"]  # a key of the sentiment rule only
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[method] = done.stdout + done.stderr
    assert "forked workers" in outputs["auto"] and "spawned workers" in outputs["spawn"]
    for method, output in outputs.items():
        assert "walk-forward:" not in output, method  # the workers' INFO progress lines stay out of the output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_no_worker_outlives_the_command_that_started_it(start_method):
    # A command that ends without shutting its pool down (an abrupt exit): its workers, idle and waiting for
    # tasks, must end too instead of waiting for ever.
    script = (
        "import os, sys\n"
        "from engine.grid import LocalPool\n"
        f"pool = LocalPool(2, {start_method!r}).__enter__()\n"
        "[future.result() for future in [pool.pool.submit(os.getpid) for _ in range(4)]]\n"
        "print(' '.join(map(str, pool.pool._processes)), flush=True)\n"
        "os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:  # the old behaviour: clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert left == []
