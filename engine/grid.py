"""Parameter sweeps: Hydra's multirun syntax, run in parallel (a process pool, or Ray tasks), results in DuckDB.

``python -m engine.run -m strategy=regression strategy.threshold=0,0.0005 walk_forward.train_sessions=250,500``
Every run is keyed by a hash of its resolved config. Runs already done in the sweep folder are skipped, each
finished run is written to ``results.duckdb`` as soon as it ends (a crash loses only the runs in flight), a
failing run records its error without stopping the others, and the signals each distinct signal config needs
are computed once, before the runs, so the runs only read the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb
import numpy as np
import pandas as pd
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict

from engine.errors import ConfigError, NewsbtError

log = logging.getLogger("newsbt.grid")

RESULTS_FILE = "results.duckdb"
RAY_TEMP_MAX_CHARS = 40
SUMMARY_FILE = "summary.html"
# Keys of a job config that decide its signals (what prepare_signals computes and caches).
SIGNAL_KEYS = ("data", "signals", "latency_minutes", "paths")


# Where outputs and caches go changes no number: left out of the run id, so a sweep moved elsewhere keeps its ids.
OUTPUT_PATH_KEYS = ("runs", "sweeps", "cache")


def config_hash(job: dict) -> str:
    """The run id: SHA-256 (first 16 hex) of the resolved job config, output and cache paths left out."""
    identity = dict(job, paths={k: v for k, v in job.get("paths", {}).items() if k not in OUTPUT_PATH_KEYS})
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def signal_key(job: dict) -> str:
    """Runs with equal keys read the same cached signals."""
    from hydra.utils import get_class

    part = {key: job.get(key) for key in SIGNAL_KEYS}
    if getattr(get_class(job["strategy"]["_target_"]), "learned", False) and job["signals"]["topics"]["enabled"]:
        part["walk_forward"] = job["walk_forward"]  # topic models are fitted per walk-forward window
    return json.dumps(part, sort_keys=True, default=str)


def _init_worker(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    logging.getLogger("gensim").setLevel(logging.WARNING)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _import_engine() -> None:
    import engine.run  # noqa: F401 - the heavy imports every run needs


def execute_prepare(job: dict) -> dict:
    """Compute and cache the signals of ``job`` (in a worker); return the cache counts or the error."""
    from engine.cache import CACHE_STATS
    from engine.run import prepare_signals

    before = Counter(CACHE_STATS)
    try:
        prepare_signals(OmegaConf.create(job))
        error = None
    except NewsbtError as failure:
        error = str(failure)
    except Exception as failure:  # noqa: BLE001 - reported per signal config, the sweep goes on
        error = f"{type(failure).__name__}: {failure}"
    return {"cache": dict(Counter(CACHE_STATS) - before), "error": error}


def execute_run(job: dict, run_dir: str) -> dict:
    """Run one backtest (in a worker); never raises: returns status, error, metrics and cache counts."""
    from engine.cache import CACHE_STATS
    from engine.run import run

    before = Counter(CACHE_STATS)
    started = time.perf_counter()
    try:
        metrics, status, error = run(OmegaConf.create(job), Path(run_dir)), "ok", None
    except NewsbtError as failure:
        metrics, status, error = {}, "error", str(failure)
    except Exception as failure:  # noqa: BLE001 - one broken run must not stop the sweep
        metrics, status, error = {}, "error", f"{type(failure).__name__}: {failure}\n{traceback.format_exc(limit=3)}"
        log.debug(error)
    if status != "ok" and Path(run_dir).is_dir() and not any(Path(run_dir).iterdir()):
        Path(run_dir).rmdir()
    return {"status": status, "error": error, "metrics": metrics, "cache": dict(Counter(CACHE_STATS) - before),
            "elapsed_seconds": round(time.perf_counter() - started, 3)}


# --- executors -------------------------------------------------------------------------------------------------

class LocalPool:
    """A pool of ``workers`` spawned processes for one sweep (both its phases share the same workers)."""

    def __init__(self, workers: int):
        self.workers = workers

    def __enter__(self) -> "LocalPool":
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        context = multiprocessing.get_context("spawn")  # no fork after torch/duckdb threads exist
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_init_worker,
                                        initargs=(threads,))
        # Start every worker now: their imports overlap with composing the sweep's configs.
        for _ in range(self.workers):
            self.pool.submit(_import_engine)
        return self

    def map(self, function: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        futures = {self.pool.submit(function, *args): number for number, args in enumerate(calls)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RaySession:
    """A Ray connection for one sweep: a private local Ray writing only under the sweep folder (no token),
    or a given cluster address."""

    def __init__(self, sweep_dir: Path, workers: int, address: str | None):
        self.sweep_dir, self.workers, self.address = sweep_dir, workers, address

    def __enter__(self) -> "RaySession":
        os.environ["RAY_AUTH_MODE"] = "disabled"
        temporary = (self.sweep_dir / "ray").resolve()
        temporary.mkdir(parents=True, exist_ok=True)
        self.link = None
        if len(str(temporary)) > RAY_TEMP_MAX_CHARS:
            # Ray's socket paths (about 62 characters below its temp dir) must fit in 107 bytes: point a short
            # link at the folder inside the sweep, so Ray's files still land there.
            self.link = Path("/tmp") / f"newsbt-ray-{hashlib.sha256(str(temporary).encode()).hexdigest()[:8]}"
            if self.link.is_symlink() or self.link.exists():
                self.link.unlink()
            self.link.symlink_to(temporary, target_is_directory=True)
            temporary = self.link
        os.environ["RAY_TMPDIR"] = str(temporary)
        import ray

        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if self.address:
            ray.init(address=self.address, **options)
        else:
            ray.init(num_cpus=self.workers, _temp_dir=str(temporary), **options)
        self.ray = ray
        return self

    def map(self, function: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        remote = self.ray.remote(num_cpus=1)(_ray_call)
        pending = {remote.remote(function, threads, *args): number for number, args in enumerate(calls)}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for reference in done:
                yield pending.pop(reference), self.ray.get(reference)

    def __exit__(self, *exc) -> None:
        if getattr(self, "ray", None) is not None:
            self.ray.shutdown()
        if getattr(self, "link", None) is not None and self.link.is_symlink():
            self.link.unlink()


def _ray_call(function: Callable, threads: int, *args):
    _init_worker(threads)
    return function(*args)


# --- results store ---------------------------------------------------------------------------------------------

CORE_COLUMNS = {"run_id": "VARCHAR PRIMARY KEY", "status": "VARCHAR", "error": "VARCHAR", "overrides": "VARCHAR",
                "run_dir": "VARCHAR", "elapsed_seconds": "DOUBLE", "finished_at": "TIMESTAMP", "cache": "VARCHAR"}


class ResultsStore:
    """One row per run in ``results.duckdb``: identity, status and error, one column per parameter (VARCHAR)
    and per numeric metric (DOUBLE). Only the sweep's driver process writes it.

    >>> store = ResultsStore(sweep_dir); store.done_ids()
    """

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / RESULTS_FILE
        self.connection = duckdb.connect(str(self.path))
        columns = ", ".join(f'"{name}" {kind}' for name, kind in CORE_COLUMNS.items())
        self.connection.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")

    def _columns(self) -> set[str]:
        return {row[0] for row in self.connection.execute("DESCRIBE runs").fetchall()}

    def done_ids(self) -> set[str]:
        return {row[0] for row in self.connection.execute("SELECT run_id FROM runs WHERE status = 'ok'").fetchall()}

    def write(self, run_id: str, params: dict[str, str], overrides: str, run_dir: str, outcome: dict) -> None:
        row: dict[str, Any] = {"run_id": run_id, "status": outcome["status"], "error": outcome["error"],
                               "overrides": overrides, "run_dir": run_dir, "elapsed_seconds": outcome["elapsed_seconds"],
                               "finished_at": pd.Timestamp.now(tz="UTC").tz_localize(None).to_pydatetime(),
                               "cache": json.dumps(outcome["cache"], sort_keys=True)}
        kinds = {}
        for key, value in params.items():
            row[key], kinds[key] = str(value), "VARCHAR"
        for key, value in outcome["metrics"].items():
            if key in row or key in ("run_dir",):
                continue
            if isinstance(value, (bool, int, float, np.integer, np.floating)) or value is None:
                row[key] = None if value is None or (isinstance(value, float) and not np.isfinite(value)) else float(value)
                kinds[key] = "DOUBLE"
        existing = self._columns()
        for key, kind in kinds.items():
            if key not in existing:
                self.connection.execute(f'ALTER TABLE runs ADD COLUMN "{key}" {kind}')
        names = list(row)
        placeholders = ", ".join("?" for _ in names)
        quoted = ", ".join(f'"{name}"' for name in names)
        self.connection.execute(f"INSERT OR REPLACE INTO runs ({quoted}) VALUES ({placeholders})", [row[n] for n in names])

    def frame(self, run_ids: Sequence[str]) -> pd.DataFrame:
        ids = pd.DataFrame({"run_id": list(run_ids)})
        self.connection.register("wanted", ids)
        return self.connection.execute("SELECT runs.* FROM runs JOIN wanted USING (run_id) ORDER BY run_id").df()

    def close(self) -> None:
        self.connection.close()


# --- the sweep -------------------------------------------------------------------------------------------------

def _job_container(sweep_config: DictConfig) -> dict:
    container = OmegaConf.to_container(sweep_config, resolve=False)
    container.pop("hydra", None)
    job = OmegaConf.create(container)
    return OmegaConf.to_container(job, resolve=True)


def _params(overrides: Sequence[str]) -> dict[str, str]:
    params = {}
    for override in filter_overrides(overrides):
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    return params


def launch_sweep(hydra_context, config: DictConfig, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                 backend: str, workers: int | None, ray_address: str | None, metric: str,
                 heatmap: Sequence[str] | None) -> list[JobReturn]:
    """Run a Hydra multirun sweep (called by the ``newsbt`` launcher); see the module docstring."""
    try:
        return _launch(hydra_context, config, job_overrides, initial_job_idx, backend, workers, ray_address,
                       metric, heatmap)
    except NewsbtError as error:
        print(f"newsbt: error: {error}", file=sys.stderr)
        sys.exit(2)


def _launch(hydra_context, config, job_overrides, initial_job_idx, backend, workers, ray_address, metric, heatmap):
    if backend not in ("local", "ray"):
        raise ConfigError(f"hydra.launcher.backend: must be 'local' or 'ray', got {backend!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"hydra.launcher.workers: must be a positive integer or null, got {workers!r}")
    workers = workers or os.cpu_count() or 1
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(sweep_dir)
    executor = RaySession(sweep_dir, workers, ray_address) if backend == "ray" else LocalPool(workers)
    executor.__enter__()
    try:
        return _run_sweep(hydra_context, config, job_overrides, initial_job_idx, backend, workers, metric,
                          heatmap, sweep_dir, store, executor)
    finally:
        executor.__exit__(None, None, None)
        if backend == "ray":
            shutil.rmtree(sweep_dir / "ray", ignore_errors=True)


def _run_sweep(hydra_context, config, job_overrides, initial_job_idx, backend, workers, metric, heatmap, sweep_dir,
               store, executor):
    jobs = []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = number
            sweep_config.hydra.job.num = number
        job = _job_container(sweep_config)
        run_id = config_hash(job)
        jobs.append({"number": number, "overrides": list(overrides), "job": job, "run_id": run_id,
                     "params": _params(overrides), "run_dir": str(sweep_dir / "runs" / run_id),
                     "config": sweep_config})
    done = store.done_ids()
    pending = [job for job in jobs if job["run_id"] not in done]
    print(f"sweep {sweep_dir}: {len(jobs)} runs, {len(jobs) - len(pending)} already done, {len(pending)} to run "
          f"({backend}, {workers} workers)", flush=True)

    cache_counts: Counter = Counter()
    # 1. Each distinct signal config once, so no two runs ever compute the same signals. A config whose
    # signals fail is reported here; its runs then fail with the same error, recorded per run.
    distinct: dict[str, dict] = {}
    for job in pending:
        distinct.setdefault(signal_key(job["job"]), job["job"])
    for _, outcome in executor.map(execute_prepare, [(job,) for job in distinct.values()]):
        cache_counts.update(outcome["cache"])
        if outcome["error"]:
            print(f"  signals could not be prepared: {outcome['error'].splitlines()[0]}", flush=True)
    # 2. The runs, each stored as soon as it ends.
    failed = 0
    try:
        for index, outcome in executor.map(execute_run, [(job["job"], job["run_dir"]) for job in pending]):
            job = pending[index]
            overrides = " ".join(filter_overrides(job["overrides"]))
            cache_counts.update(outcome["cache"])
            store.write(job["run_id"], job["params"], overrides, job["run_dir"], outcome)
            failed += outcome["status"] != "ok"
            state = "ok" if outcome["status"] == "ok" else f"error: {outcome['error'].splitlines()[0]}"
            print(f"  run {job['number']} [{job['run_id']}] {overrides}: {state}", flush=True)
    except BrokenProcessPool:
        raise NewsbtError(f"a sweep worker died; finished runs are saved in {store.path}: "
                          "run the same command again to resume") from None
    if failed:
        print(f"{failed} of {len(pending)} runs failed; their errors are in {store.path} and the summary", flush=True)

    results = store.frame([job["run_id"] for job in jobs])
    store.close()
    summary = write_summary(sweep_dir, results, sorted({k for job in jobs for k in job["params"]}), metric, heatmap,
                            dict(cache_counts))
    print(f"cache: {', '.join(f'{k} {v}' for k, v in sorted(cache_counts.items())) or 'nothing computed'}")
    print(f"results: {sweep_dir / RESULTS_FILE}\nsummary: {summary}")
    return [JobReturn(overrides=job["overrides"], cfg=job["config"], hydra_cfg=config, working_dir=job["run_dir"],
                      task_name="engine.run", status=JobStatus.COMPLETED,
                      _return_value=results.set_index("run_id").loc[job["run_id"]].to_dict()
                      if job["run_id"] in set(results["run_id"]) else None)
            for job in jobs]


def write_summary(sweep_dir: Path, results: pd.DataFrame, params: list[str], metric: str,
                  heatmap: Sequence[str] | None, cache_counts: dict) -> Path:
    """The sweep's HTML summary (reports.sweep), with the best run's return moments for the deflated Sharpe."""
    from reports.sweep import write_sweep_summary

    skew = kurtosis = None
    ok = results[results["status"] == "ok"]
    if len(ok) and metric in ok and ok[metric].notna().any():
        best = ok.loc[ok[metric].idxmax()]
        equity = Path(best["run_dir"]) / "equity.csv"
        if equity.exists():
            returns = pd.read_csv(equity)["returns"]
            skew, kurtosis = float(returns.skew()), float(returns.kurt() + 3)
    return write_sweep_summary(results, params, sweep_dir / SUMMARY_FILE, metric=metric,
                               heatmap=tuple(heatmap) if heatmap else None, best_skew=skew, best_kurtosis=kurtosis,
                               cache_stats=cache_counts, title=f"newsbt sweep: {sweep_dir.name}")
