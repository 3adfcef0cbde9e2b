"""Sweeps: identical results for 1 worker, 2 workers and Ray; resume after a crash; a failing run is isolated;
one summary row per run; signals computed once per distinct signal config."""
import os
import re
import signal
import subprocess
import sys

import duckdb
import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.test_end_to_end import write_dataset

METRICS = ["sharpe", "cagr", "max_drawdown", "var_95", "trades", "final_value", "in_sample_sharpe"]


def sweep_command(folder, sweeps, *overrides):
    return [sys.executable, "-m", "engine.run", "-m", "data=csv", f"data.prices.path={folder}/prices.csv",
            "data.prices.ticker=PLANT", f"data.news.path={folder}/news.csv", "signals.sentiment=lexicon",
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
                           ("ray", ["hydra.launcher.backend=ray", "hydra.launcher.workers=2"])]:
        output = sweep(tmp_path, tmp_path / name, *GRID, *launcher)
        frames[name] = results(tmp_path / name)
        assert len(frames[name]) == 4 and (frames[name]["status"] == "ok").all()
        # Signals once: scored at most once (in the preparation step, on a cold cache); every run read the cache.
        counts = {k: int(v) for k, v in re.findall(r"(lexicon\.\w+) (\d+)", output.stdout)}
        assert counts.get("lexicon.miss", 0) == (1 if name == "one" else 0)
        assert counts["lexicon.hit"] + counts.get("lexicon.miss", 0) == 5
    for name in ("two", "ray"):
        pd.testing.assert_frame_equal(frames["one"][["run_id", *METRICS]], frames[name][["run_id", *METRICS]])
    assert not (tmp_path / "ray" / "csv" / "ray").exists()  # Ray's files stayed in, and left, the sweep folder
    page = (tmp_path / "one" / "csv" / "summary.html").read_text()
    runs_table = page.split('<table id="runs"', 1)[1].split("<tbody", 1)[1].split("</tbody>", 1)[0]
    assert len(re.findall(r"<tr[ >]", runs_table)) == 4


@pytest.mark.slow
def test_failing_run_is_recorded_and_the_others_finish(tmp_path):
    write_dataset(tmp_path)
    sweep(tmp_path, tmp_path / "s", "strategy.window_sessions=-1,2", "hydra.launcher.workers=2")
    frame = results(tmp_path / "s").set_index("strategy.window_sessions")
    assert frame.loc["2", "status"] == "ok"
    assert frame.loc["-1", "status"] == "error"
    assert "strategy.window_sessions" in frame.loc["-1", "error"]


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
