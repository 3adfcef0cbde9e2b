"""Parameter sweeps: Hydra's multirun syntax, run in parallel (a process pool, or Ray tasks), results in DuckDB.

``python -m engine.run -m strategy=regression strategy.threshold=0,0.0005 walk_forward.train_sessions=250,500``
Every run is keyed by a hash of its resolved config; jobs with identical configs are merged into one run. Runs
already done in the sweep folder are skipped unless their inputs changed since (``run_fingerprint``: the data
files' contents, each signal provider's identity such as its model's weights, newsbt's code and dependency
versions) or they hold fewer files than asked (``run_files``: light, now all), each finished run is written to ``results.duckdb`` as soon as it ends (a crash loses only the runs in
flight), a failing run records its error without stopping the others, and the signals each distinct signal
config needs (``signal_key``: what the providers declare) are computed once, before the runs, so the runs only
read the cache.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb
import numpy as np
import pandas as pd
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict

from engine.config import task_container, validate_config
from engine.errors import ConfigError, NewsbtError
from engine.prefit import available_cores

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
    """Runs with equal keys read the same cached signals: the data, the providers' configs, latency and paths;
    and the walk-forward windows when a learned rule runs a learned provider (fitted per window), as the
    providers declare (``learned``), whatever they are.

    >>> signal_key(job) == signal_key(other_job)
    """
    from engine.config import provider_parameters, rule_class

    part = {key: job.get(key) for key in SIGNAL_KEYS}
    enabled = [provider_parameters(str(slot), values) for slot, values in (job.get("signals") or {}).items()]
    windowed = any(checked is not None and checked[1].learned for checked in enabled)
    if windowed and rule_class(job["strategy"]["_target_"]).learned:
        part["walk_forward"] = job["walk_forward"]
    return json.dumps(part, sort_keys=True, default=str)


# --- what a run's numbers depend on besides its config ----------------------------------------------------------

# The packages whose code can change a run's numbers (reports/ computes the metrics); hydra_plugins/ only launches.
CODE_PACKAGES = ("engine", "signals", "strategies", "reports")


def code_version() -> dict[str, Any]:
    """newsbt's version, the SHA-256 of the Python source of ``CODE_PACKAGES`` (so an edit to the code of a
    source checkout counts, not only a version bump) and the installed versions of newsbt's dependencies.

    >>> code_version()["newsbt"]
    """
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(folder).rglob("*.py")):
                digest.update(f"{package}/{path.relative_to(folder).as_posix()}\0".encode())
                digest.update(path.read_bytes() + b"\0")
    try:
        version = importlib.metadata.version("newsbt")
        requirements = importlib.metadata.requires("newsbt") or []
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        version, requirements = "not installed", []
    dependencies = {}
    for requirement in requirements:
        if "extra ==" not in requirement:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
            try:
                dependencies[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                dependencies[name] = None
    return {"newsbt": version, "source_sha256": digest.hexdigest(), "dependencies": dependencies}


class DataHashes:
    """The files a ``data`` config reads, with their content hashes; each file is hashed once per sweep.

    >>> hashes = DataHashes(); hashes.of(job["data"])  # {"prices": "<sha256>", "news": "<sha256>"}
    """

    def __init__(self) -> None:
        self._memo: dict[Path, str] = {}

    def file(self, value: Any) -> str:
        """SHA-256 of the file at ``value`` (relative paths from the current directory, as the csv loader reads
        them), or ``missing <path>`` (the run then fails and records why)."""
        from engine.cache import file_sha256

        path = Path(str(value)).expanduser()
        path = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if path not in self._memo:
            self._memo[path] = file_sha256(path) if path.is_file() else f"missing {path}"
        return self._memo[path]

    def of(self, data: dict) -> dict[str, Any]:
        """A catalogued dataset: the catalog's SHA-256 of each of its files (every load checks the files against
        them, so they stand for the contents). Any other type: the hash of every ``path`` the config names. Both:
        the hash of each securities.csv that ticker linking reads."""
        from engine.datasets import load_catalog

        kind = data.get("type") or data.get("name")
        catalog = load_catalog()
        # securities.csv files the ticker linking reads (when it is on), by their paths as given
        found: dict[str, Any] = {}
        if ((data.get("news") or {}).get("link_tickers") or "off") != "off":
            for source in data.get("securities") or []:
                if str(source).lower().endswith(".csv"):
                    found[f"securities:{source}"] = self.file(source)
        if kind in catalog:
            return {**{f"catalog:{kind}/{entry['path']}": entry["sha256"] for entry in catalog[kind]["files"]}, **found}

        def walk(node: Any, where: str) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "path" and value is not None and not isinstance(value, (dict, list)):
                        found[where or "path"] = self.file(value)
                    else:
                        walk(value, f"{where}.{key}" if where else str(key))

        walk(data, "")
        return found


def execute_fingerprint(job: dict) -> dict:
    """Each enabled provider's ``params()`` for ``job`` by slot (in a worker): what identifies its output, such
    as the fingerprint of the transformer model's weights or the lexicon's word lists. Trains a missing model,
    as the signal preparation would. Never raises: a failure is returned as ``{"error": ...}``.

    >>> execute_fingerprint(job)["sentiment"]  # {"provider": "lexicon", "wordlists_sha256": "..."}
    """
    from engine.cache import project_path
    from engine.providers import build_providers

    _limit_torch_threads()
    try:
        slots = build_providers(job["signals"], [project_path(root) for root in job["paths"]["roots"]],
                                project_path(job["paths"]["cache"]))
        params = {slot.slot: slot.provider.params() for slot in slots}
        return json.loads(json.dumps(params, sort_keys=True, default=str))
    except Exception as failure:  # noqa: BLE001 - the run fails later with the same error, recorded per run
        return {"error": f"{type(failure).__name__}: {failure}"}


def rule_source_sha256(target: str) -> str | None:
    """SHA-256 of the module defining a rule ``_target_`` outside newsbt's own packages (already in
    ``code_version``); None for newsbt's rules or a target that does not load (that run fails and says so)."""
    from engine.cache import file_sha256

    try:
        module = importlib.import_module(target.rpartition(".")[0])
    except Exception:  # noqa: BLE001 - reported by the run itself
        return None
    if module.__name__.split(".")[0] in CODE_PACKAGES or not getattr(module, "__file__", None):
        return None
    return file_sha256(module.__file__)


def run_inputs(job: dict, data: DataHashes, provider_params: dict, code: dict) -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: the data files, the signal providers, the code."""
    return {"data": data.of(job["data"]), "signals": provider_params, "code": code,
            "rule_source": rule_source_sha256(str(job.get("strategy", {}).get("_target_")))}


def run_fingerprint(inputs: dict) -> str:
    """SHA-256 (first 16 hex) of ``run_inputs``: a stored run whose fingerprint differs is stale and re-run."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _provider_key(job: dict) -> str:
    """Jobs with equal keys build the same signal providers."""
    return json.dumps({key: job.get(key) for key in ("signals", "paths")}, sort_keys=True, default=str)


# Signal frames a worker keeps in memory after reading them from the cache (its runs read the same ones).
WORKER_KEPT_FRAMES_BYTES = 256 << 20
_WORKER_THREADS: list[int] = []


def _end_with_parent(parent: int) -> None:
    """Have the kernel stop this worker when the process that started it ends (Linux's PR_SET_PDEATHSIG), so no
    worker outlives its sweep command, however that command ends: a worker waiting for tasks would otherwise wait
    for ever. Elsewhere, or where prctl is unavailable, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the command ended before the line above took effect
        os._exit(0)


def _init_worker(threads: int, parent: int | None = None) -> None:
    from engine.cache import keep_in_memory
    from engine.run import leave_process

    if parent is not None:
        _end_with_parent(parent)

    # Registered first: once the pool has its last result and every later exit handler has run, the worker ends
    # without tearing down what it holds, which the sweep's command would wait for.
    atexit.register(leave_process)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # A forked worker inherits the command's logging as Hydra set it up (INFO to stdout); a spawned one starts
    # bare. Bare for both: the sweep prints the same lines however its workers started (warnings still reach stderr).
    for logger in [logging.root, *logging.root.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]:
                logger.removeHandler(handler)
    logging.root.setLevel(logging.WARNING)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    logging.getLogger("gensim").setLevel(logging.WARNING)
    keep_in_memory(WORKER_KEPT_FRAMES_BYTES)
    _WORKER_THREADS[:] = [threads]
    _limit_torch_threads()


def _limit_torch_threads() -> None:
    """torch's threads in a worker: its share of the cores, set once torch is imported (torch takes seconds to
    import, and a sweep that scores no text never needs it; before its import OMP_NUM_THREADS says the same)."""
    torch = sys.modules.get("torch")
    if torch is not None and _WORKER_THREADS and torch.get_num_threads() != _WORKER_THREADS[0]:
        torch.set_num_threads(_WORKER_THREADS[0])


def _import_engine() -> None:
    import engine.run  # noqa: F401 - the heavy imports every run needs
    import engine.vectorized  # noqa: F401
    import reports.metrics  # noqa: F401


def execute_prepare(job: dict, load_only: bool = False) -> dict:
    """Compute and cache the signals of ``job`` (in a worker); return the cache counts or the error. ``load_only``:
    only load its data (``engine.run.load_data``) and build its providers (importing their code), as its first run
    would, for a worker that would otherwise wait for the signals."""
    from engine.cache import CACHE_STATS
    from engine.run import load_data, prepare_signals

    _limit_torch_threads()
    before = Counter(CACHE_STATS)
    try:
        if load_only:
            execute_fingerprint(job)
            load_data(OmegaConf.create(job))
        else:
            prepare_signals(OmegaConf.create(job))
        error = None
    except NewsbtError as failure:
        error = str(failure)
    except Exception as failure:  # noqa: BLE001 - reported per signal config, the sweep goes on
        error = f"{type(failure).__name__}: {failure}"
    return {"cache": dict(Counter(CACHE_STATS) - before), "error": error}


def execute_run(job: dict, run_dir: str, files: str = "all") -> dict:
    """Run one backtest (in a worker) writing ``files`` (engine.run.run); never raises: returns status, error,
    metrics and cache counts."""
    from engine.cache import CACHE_STATS
    from engine.run import run

    _limit_torch_threads()
    before = Counter(CACHE_STATS)
    started = time.perf_counter()
    try:
        # the sweep checked this job's config before any runs (_run_sweep), so the run does not check it again
        metrics, status, error = run(OmegaConf.create(job), Path(run_dir), files, validated=True), "ok", None
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

# Modules whose threads or state a forked child must not inherit half-way: a process that imported one of them
# starts its workers with "spawn".
FORK_UNSAFE_MODULES = ("torch", "ray", "tensorflow", "jax")


def can_fork() -> bool:
    """Whether this process may start its sweep workers by forking: on Linux, while it runs no thread besides its
    main one (a lock held by another thread at the fork stays held forever in the child) and has not imported a
    library that keeps threads or devices of its own (``FORK_UNSAFE_MODULES``). numpy's OpenBLAS threads are
    safe: OpenBLAS stops them around a fork."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and threading.active_count() == 1 and not any(name in sys.modules for name in FORK_UNSAFE_MODULES))


class LocalPool:
    """A pool of ``workers`` processes for one sweep (both its phases share the same workers). Forked when
    ``can_fork``: the engine's modules are imported once, here, and every worker starts with them, instead of
    each spawned worker importing them again (and re-running the command's ``__main__`` module first): about a
    second of CPU per worker. Otherwise spawned, each importing the engine while the sweep's jobs are composed.
    Either way a worker computes the same numbers: it imports the same modules and every run seeds itself."""

    def __init__(self, workers: int, start_method: str = "auto"):
        self.workers = workers
        self.start_method = "fork" if start_method == "auto" and can_fork() else "spawn"

    def __enter__(self) -> "LocalPool":
        if getattr(self, "pool", None) is not None:  # started early (start_local_pool)
            return self
        threads = max(1, available_cores() // self.workers)
        if self.start_method == "fork":
            _import_engine()
        self.pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_init_worker,
                                        initargs=(threads, os.getpid()),
                                        mp_context=multiprocessing.get_context(self.start_method))
        # Start every worker now (a forking pool forks them all at its first task, before its own threads start):
        # spawned workers' imports overlap with composing the sweep's configs.
        for _ in range(self.workers):
            self.pool.submit(_import_engine)
        return self

    def map(self, function: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        futures = {self.pool.submit(function, *args): number for number, args in enumerate(calls)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None


# The local pool the newsbt sweeper started before composing the sweep's jobs (its workers import and load data
# meanwhile), for the launcher of the same sweep in this process.
_STARTED: list[LocalPool] = []


def start_local_pool(workers: int | None, start_method: str = "auto") -> None:
    """Start the worker processes of the local sweep about to launch (``workers``: hydra.launcher.workers, None
    for one per core; ``start_method``: hydra.launcher.start_method), before its jobs are composed; ``_launch``
    takes them. A pool nobody takes is shut down when the process exits (its workers only imported modules and
    loaded data), or at once by ``discard_local_pool``.

    >>> start_local_pool(2)
    """
    for pool in _STARTED:
        pool.__exit__()
    _STARTED[:] = [LocalPool(workers or available_cores(), start_method).__enter__()]


def execute_load(job: dict) -> None:
    """Load the data of ``job`` in this worker (``engine.run.load_data``: read, link, align, count the news; kept
    in memory, nothing written), as its first run or signal preparation would. Never raises: a failure shows
    again, reported, when the sweep loads the same data."""
    from engine.run import load_data

    try:
        load_data(OmegaConf.create(job))
    except Exception:  # noqa: BLE001 - the sweep's own phases report it
        pass


def warm_up_local_pool(master: DictConfig) -> None:
    """Let each worker of the pool ``start_local_pool`` started load the data of the sweep's own config
    (``master``: its overrides without the swept values) while this process composes and checks its jobs: the
    jobs of a sweep that does not sweep the data config then find it loaded. Nothing is written; a sweep over
    data keys loads its own data later, as it would without this.

    >>> start_local_pool(2); warm_up_local_pool(config)
    """
    if not _STARTED:
        return
    try:
        job = task_container(master)
    except Exception:  # noqa: BLE001 - the sweep's check reports a config that does not resolve
        return
    for _ in range(_STARTED[0].workers):
        _STARTED[0].pool.submit(execute_load, job)


def discard_local_pool() -> None:
    """Stop the workers ``start_local_pool`` started, at once, for a sweep that ends before it runs (a bad job):
    they hold nothing written, and waiting for a warm-up load would only delay the error."""
    for started in _STARTED:
        for process in list(started.pool._processes.values()):  # noqa: SLF001 - Python 3.11 has no terminate_workers
            process.terminate()
        started.pool.shutdown(wait=False, cancel_futures=True)
    _STARTED.clear()


def _local_pool(workers: int, start_method: str) -> LocalPool:
    """The pool started early for ``workers`` workers started so, or a new one."""
    started = _STARTED.pop() if _STARTED else None
    if started is not None and started.workers == workers and (start_method == "auto" or
                                                               started.start_method == start_method):
        return started
    if started is not None:
        started.__exit__()
    return LocalPool(workers, start_method)


# The shared secret of the private local Ray (token authentication): one per driver process, because Ray's token
# loader keeps the first token it reads for the life of the process. Kept in the environment of the processes
# Ray starts, never written to a file.
_LOCAL_RAY_TOKEN = secrets.token_hex(32)


class RaySession:
    """A Ray connection for one sweep: a private local Ray, or the cluster at ``address`` (the user's choice).

    The private local Ray listens on the loopback interface only (its node IP is 127.0.0.1: Ray's own local-only
    mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), requires a random token on every connection
    (``RAY_AUTH_MODE=token``) and writes only under the sweep folder (``RAY_TMPDIR``).

    >>> with RaySession(sweep_dir, workers=2, address=None) as ray_tasks: list(ray_tasks.map(function, calls))
    """

    def __init__(self, sweep_dir: Path, workers: int, address: str | None):
        self.sweep_dir, self.workers, self.address = sweep_dir, workers, address
        self.ray = self.link = None
        self._saved_environment: dict[str, str | None] = {}
        self._saved_cluster_flag: bool | None = None

    def _set_environment(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self._saved_environment.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def __enter__(self) -> "RaySession":
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)  # what a failed start set up is undone as after a sweep
            raise

    def _start(self) -> "RaySession":
        temporary = (self.sweep_dir / "ray").resolve()
        temporary.mkdir(parents=True, exist_ok=True)
        if len(str(temporary)) > RAY_TEMP_MAX_CHARS:
            # Ray's socket paths (about 62 characters below its temp dir) must fit in 107 bytes: point a short
            # link at the folder inside the sweep, so Ray's files still land there. The link lives in a fresh
            # folder of an unpredictable name (mode 0700), so nothing already in /tmp is ever followed or replaced.
            short = Path(tempfile.mkdtemp(prefix="newsbt-ray-", dir="/tmp" if Path("/tmp").is_dir() else None))
            self.link = short / "t"
            self.link.symlink_to(temporary, target_is_directory=True)
            temporary = self.link
        self._set_environment({"RAY_TMPDIR": str(temporary)})
        if not self.address:
            self._set_environment({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                                   "RAY_AUTH_TOKEN": _LOCAL_RAY_TOKEN})
        import ray

        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if self.address:
            ray.init(address=self.address, **options)
        else:
            from ray._private import ray_constants

            # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when first imported: this process may have imported it
            # before the variable was set.
            self._saved_cluster_flag, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
            ray.init(num_cpus=self.workers, _temp_dir=str(temporary), **options)
        self.ray = ray
        if not self.address and not _is_loopback(ray.util.get_node_ip_address()):
            raise NewsbtError(f"the private local Ray took node IP {ray.util.get_node_ip_address()} instead of "
                              "the loopback address; refusing to run it reachable from the network")
        return self

    def map(self, function: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        threads = max(1, available_cores() // self.workers)
        remote = self.ray.remote(num_cpus=1)(_ray_call)
        pending = {remote.remote(function, threads, *args): number for number, args in enumerate(calls)}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for reference in done:
                yield pending.pop(reference), self.ray.get(reference)

    def __exit__(self, *exc) -> None:
        if self.ray is not None:
            self.ray.shutdown()
        if self._saved_cluster_flag is not None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER, self._saved_cluster_flag = self._saved_cluster_flag, None
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment = {}
        if self.link is not None:  # only what __enter__ created: the link and its fresh folder
            if self.link.is_symlink():
                self.link.unlink()
            with contextlib.suppress(OSError):  # not empty: something else was put there, left alone
                self.link.parent.rmdir()
            self.link = None


def _is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _ray_call(function: Callable, threads: int, *args):
    _init_worker(threads)
    return function(*args)


# --- results store ---------------------------------------------------------------------------------------------

CORE_COLUMNS = {"run_id": "VARCHAR PRIMARY KEY", "status": "VARCHAR", "error": "VARCHAR", "overrides": "VARCHAR",
                "run_dir": "VARCHAR", "elapsed_seconds": "DOUBLE", "finished_at": "TIMESTAMP", "cache": "VARCHAR",
                "fingerprint": "VARCHAR", "inputs": "VARCHAR", "engine": "VARCHAR", "screen_of": "VARCHAR",
                "run_files": "VARCHAR"}


class ResultsStore:
    """One row per run in ``results.duckdb``: identity, status and error, the fingerprint of its inputs (and
    the inputs as JSON), one column per parameter (VARCHAR) and per numeric metric (DOUBLE). Only the sweep's
    driver process writes it.

    >>> store = ResultsStore(sweep_dir); store.done_runs()
    """

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / RESULTS_FILE
        self.connection = duckdb.connect(str(self.path))
        self.connection.execute("SET threads = 1")  # one row at a time: its threads would only take the workers' cores
        columns = ", ".join(f'"{name}" {kind}' for name, kind in CORE_COLUMNS.items())
        self.connection.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
        existing = self._columns()  # a results file written before a core column existed
        for name, kind in CORE_COLUMNS.items():
            if name not in existing:
                self.connection.execute(f'ALTER TABLE runs ADD COLUMN "{name}" {kind}')
        self.columns = self._columns()  # only this process writes the file: kept, not asked for each row

    def _columns(self) -> set[str]:
        return {row[0] for row in self.connection.execute("DESCRIBE runs").fetchall()}

    def done_runs(self) -> dict[str, tuple[str | None, str]]:
        """run_id -> (input fingerprint, the files its folder holds: ``light`` or ``all``) of every successful
        run; the fingerprint is None for runs stored without one. A row stored before ``run_files`` was recorded
        holds all files when its folder has signals.parquet (written only with all of them).

        >>> store.done_runs()  # {"3f2a...": ("9c1e...", "light"), ...}
        """
        query = "SELECT run_id, fingerprint, run_files, run_dir FROM runs WHERE status = 'ok'"
        return {run_id: (fingerprint, files or ("all" if run_dir and (Path(run_dir) / "signals.parquet").is_file()
                                                 else "light"))
                for run_id, fingerprint, files, run_dir in self.connection.execute(query).fetchall()}

    def write(self, run_id: str, params: dict[str, str], overrides: str, run_dir: str, outcome: dict,
              fingerprint: str, inputs: dict, engine: str | None = None, screen_of: str | None = None,
              run_files: str = "all") -> None:
        """Store one run's row (``screen_of``: for a backtrader re-run of a screened run, that run's id;
        ``run_files``: the files it wrote, hydra.launcher.run_files)."""
        row: dict[str, Any] = {"run_id": run_id, "status": outcome["status"], "error": outcome["error"],
                               "engine": engine, "screen_of": screen_of, "run_files": run_files,
                               "overrides": overrides, "run_dir": run_dir, "elapsed_seconds": outcome["elapsed_seconds"],
                               "finished_at": pd.Timestamp.now(tz="UTC").tz_localize(None).to_pydatetime(),
                               "cache": json.dumps(outcome["cache"], sort_keys=True), "fingerprint": fingerprint,
                               "inputs": json.dumps(inputs, sort_keys=True, default=str)}
        kinds = {}
        for key, value in params.items():
            row[key], kinds[key] = str(value), "VARCHAR"
        for key, value in outcome["metrics"].items():
            if key in row or key in ("run_dir",):
                continue
            if isinstance(value, (bool, int, float, np.integer, np.floating)) or value is None:
                row[key] = None if value is None or (isinstance(value, float) and not np.isfinite(value)) else float(value)
                kinds[key] = "DOUBLE"
        for key, kind in kinds.items():
            if key not in self.columns:
                self.connection.execute(f'ALTER TABLE runs ADD COLUMN "{key}" {kind}')
                self.columns.add(key)
        names = list(row)
        placeholders = ", ".join("?" for _ in names)
        quoted = ", ".join(f'"{name}"' for name in names)
        # the row replaced in one transaction (half the work of INSERT OR REPLACE)
        self.connection.execute("BEGIN TRANSACTION")
        try:
            self.connection.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            self.connection.execute(f"INSERT INTO runs ({quoted}) VALUES ({placeholders})", [row[n] for n in names])
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise

    def frame(self, run_ids: Sequence[str]) -> pd.DataFrame:
        ids = pd.DataFrame({"run_id": list(run_ids)})
        self.connection.register("wanted", ids)
        return self.connection.execute("SELECT runs.* FROM runs JOIN wanted USING (run_id) ORDER BY run_id").df()

    def close(self) -> None:
        self.connection.close()


# --- the sweep -------------------------------------------------------------------------------------------------

def compose_jobs(config_loader, master: DictConfig, job_overrides: Sequence[Sequence[str]]) -> Iterator[DictConfig]:
    """Each job's config, in order, exactly as Hydra's ``config_loader.load_sweep_config(master, overrides)``
    composes it, with one composition per distinct choice of config groups instead of one per job (a composition
    reads and merges every YAML file: a quarter of a second, several times a screening run). A job's value overrides
    (``key=value``, ``+key=value``, ``~key`` on keys that are no config group: Hydra's own split) are applied to a
    copy of that composition by Hydra's own code, as Hydra applies them after composing; the hydra node's
    record of the overrides is then the job's own. A job overriding a ``hydra.*`` key is composed alone.

    >>> configs = list(compose_jobs(hydra_context.config_loader, config, job_overrides))
    """
    import pickle

    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    hydra_overrides = list(OmegaConf.to_container(master.hydra.overrides.hydra))
    # the repository a composition reads config groups from (the search path, with the primary config's own)
    _, repository = config_loader._parse_overrides_and_create_caching_repo(master.hydra.job.config_name,
                                                                           hydra_overrides)
    bases: dict[tuple[str, ...], bytes] = {}
    # Each distinct override line parsed once (Hydra's grammar: a few milliseconds a line, and every job repeats
    # the sweep's common ones), and whether it sets a value (not a config group) asked once; Hydra only reads a
    # parsed override.
    parsed_lines: dict[str, Any] = {}
    sets_value: dict[str, bool] = {}
    for overrides in job_overrides:
        new = [line for line in dict.fromkeys(overrides) if line not in parsed_lines]
        parsed_lines.update(zip(new, parser.parse_overrides(new)))
        parsed = [parsed_lines[line] for line in overrides]
        if any(o.is_hydra_override() or o.is_sweep_override() for o in parsed):
            yield config_loader.load_sweep_config(master, list(overrides))
            continue
        for o in parsed:
            if o.input_line not in sets_value:
                sets_value[o.input_line] = isinstance(o.value(), dict) or not repository.group_exists(o.key_or_group)
        is_value = [sets_value[o.input_line] for o in parsed]
        values = [o for o, value in zip(parsed, is_value) if value]
        groups = tuple(o.input_line for o, value in zip(parsed, is_value) if not value)
        if groups not in bases:  # kept pickled: unpickling copies a DictConfig in a fifth of deepcopy's time
            bases[groups] = pickle.dumps(config_loader.load_sweep_config(master, list(groups)),
                                         protocol=pickle.HIGHEST_PROTOCOL)
        config = pickle.loads(bases[groups])
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, config)
        except OmegaConfBaseException as error:  # as Hydra's load_configuration reports it
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from error
        naming = config.hydra.job.config.override_dirname
        config.hydra.overrides.task = [o.input_line for o in parsed]
        config.hydra.job.override_dirname = get_overrides_dirname(
            overrides=parsed, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
        OmegaConf.copy_cache(from_config=master, to_config=config)
        yield config


def checked_jobs(config_loader, master: DictConfig, job_overrides: Sequence[Sequence[str]]
                 ) -> list[tuple[DictConfig, dict]]:
    """Each job's composed config (``compose_jobs``) and its plain, resolved container (what a worker runs),
    checked by ``validate_config``; the first bad value raises a ConfigError naming its key.

    >>> [(config, job), ...] = checked_jobs(hydra_context.config_loader, config, job_overrides)
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from engine.config import _hydra_error

    checked = []
    try:
        for sweep_config in compose_jobs(config_loader, master, job_overrides):
            job = task_container(sweep_config)  # what a worker runs
            validate_config(job)  # every job, before any runs: a bad value fails the sweep, not one run
            checked.append((sweep_config, job))
    except (HydraException, OmegaConfBaseException) as error:
        raise _hydra_error(error) from None
    return checked


# Jobs the newsbt sweeper composed and checked before Hydra made the sweep folder (``hydra_plugins``'
# NewsbtSweeper), by their overrides, for the launcher of the same sweep in this process, so that each job is
# composed once: ``keep_checked_jobs`` stores them with the sweep's config, ``_run_sweep`` takes those of its batch
# when its config is that very object; a job not there is composed by ``_run_sweep``.
_CHECKED: dict[str, Any] = {"config": None, "jobs": {}}


def keep_checked_jobs(master: DictConfig, jobs: Sequence[Sequence[str]], checked: list[tuple[DictConfig, dict]]
                      ) -> None:
    """Keep ``checked_jobs``' result for the launcher of the sweep whose config is ``master``."""
    _CHECKED.update(config=master, jobs={tuple(job): pair for job, pair in zip(jobs, checked)})


def _take_checked(master: DictConfig, job_overrides: Sequence[Sequence[str]]) -> list[tuple[DictConfig, dict] | None]:
    """The kept (config, job) of each of ``job_overrides`` (None where none is kept for this sweep)."""
    if _CHECKED["config"] is not master:
        return [None] * len(job_overrides)
    return [_CHECKED["jobs"].pop(tuple(overrides), None) for overrides in job_overrides]


def _params(overrides: Sequence[str]) -> dict[str, str]:
    params = {}
    for override in filter_overrides(overrides):
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    return params


@dataclass(frozen=True)
class SweepOptions:
    """``hydra.launcher``'s settings of one sweep (``conf/hydra/launcher/newsbt.yaml`` documents each)."""

    backend: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    metric: str = "sharpe"
    heatmap: Sequence[str] | None = None
    screen_top_k: int | None = None
    run_files: str = "all"
    start_method: str = "auto"


def launch_sweep(hydra_context, config: DictConfig, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                 **launcher: Any) -> list[JobReturn]:
    """Run a Hydra multirun sweep (called by the ``newsbt`` launcher with its settings, ``SweepOptions``); see the
    module docstring. ``screen_top_k``: re-run the best k engine=vectorized runs by ``metric`` with
    engine=backtrader (``screen_again``); ``run_files``: the files of each run of the sweep (engine.run.run's
    ``files``; the re-runs write all of theirs)."""
    try:
        return _launch(hydra_context, config, job_overrides, initial_job_idx, SweepOptions(**launcher))
    except NewsbtError as error:
        print(f"newsbt: error: {error}", file=sys.stderr)
        sys.exit(2)


def _launch(hydra_context, config: DictConfig, job_overrides, initial_job_idx: int, options: SweepOptions):
    if options.backend not in ("local", "ray"):
        raise ConfigError(f"hydra.launcher.backend: must be 'local' or 'ray', got {options.backend!r}")
    if options.workers is not None and (not isinstance(options.workers, int) or options.workers < 1):
        raise ConfigError(f"hydra.launcher.workers: must be a positive integer or null, got {options.workers!r}")
    options = replace(options, workers=options.workers or available_cores())
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    executor = RaySession(sweep_dir, options.workers, options.ray_address) if options.backend == "ray" \
        else _local_pool(options.workers, options.start_method)
    try:
        with executor:  # before the results store: a local pool may fork, and DuckDB's threads must not exist yet
            store = ResultsStore(sweep_dir)
            return _run_sweep(hydra_context, config, job_overrides, initial_job_idx, options, sweep_dir, store,
                              executor)
    finally:
        if options.backend == "ray":
            shutil.rmtree(sweep_dir / "ray", ignore_errors=True)


class _Clock:
    """Seconds of each phase of a sweep, printed at its end (``bench/grid.py`` reads the line)."""

    def __init__(self) -> None:
        self.last, self.seconds = time.perf_counter(), {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


def _run_sweep(hydra_context, config: DictConfig, job_overrides, initial_job_idx: int, options: SweepOptions,
               sweep_dir: Path, store: ResultsStore, executor) -> list[JobReturn]:
    clock = _Clock()
    jobs = []
    known = _take_checked(config, job_overrides)
    missing = [overrides for overrides, found in zip(job_overrides, known) if found is None]
    composed = iter(checked_jobs(hydra_context.config_loader, config, missing) if missing else [])
    for number, (overrides, found) in enumerate(zip(job_overrides, known), start=initial_job_idx):
        sweep_config, job = found or next(composed)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = number
            sweep_config.hydra.job.num = number
        run_id = config_hash(job)
        jobs.append({"number": number, "overrides": list(overrides), "job": job, "run_id": run_id,
                     "params": _params(overrides), "run_dir": str(sweep_dir / "runs" / run_id),
                     "config": sweep_config})
    # Jobs with identical configs share one run (and its folder): the first of them runs, the others report it.
    runs: dict[str, dict] = {}
    copies: dict[str, list[dict]] = {}
    for job in jobs:
        if job["run_id"] in runs:
            copies.setdefault(job["run_id"], []).append(job)
        else:
            runs[job["run_id"]] = job
    merged = len(jobs) - len(runs)
    clock.lap("composing")
    # 0. A run done before with other inputs (data, signal providers, code) is stale and runs again; one stored
    # with fewer files than this sweep asks for (run_files light, now all) runs again to write them.
    _fingerprint(list(runs.values()), executor)
    stored = store.done_runs()
    pending = [run for run in runs.values() if not _already_done(run, stored, options.run_files)]
    stale = sum(run["run_id"] in stored and stored[run["run_id"]][0] != run["fingerprint"] for run in pending)
    lighter = sum(run["run_id"] in stored and stored[run["run_id"]][0] == run["fingerprint"] for run in pending)
    print(f"sweep {sweep_dir}: {len(jobs)} jobs, {len(runs)} distinct runs ({merged} duplicates merged), "
          f"{len(runs) - len(pending)} already done, {stale} stale (inputs changed: run again), "
          + (f"{lighter} with fewer files than asked (run again), " if lighter else "")
          + f"{len(pending)} to run ({options.backend}, {options.workers} "
          + {"fork": "forked ", "spawn": "spawned "}.get(getattr(executor, "start_method", None), "")
          + "workers)", flush=True)
    clock.lap("fingerprints")

    cache_counts: Counter = Counter()
    # 1. Each distinct signal config once, so no two runs ever compute the same signals. A config whose
    # signals fail is reported here; its runs then fail with the same error, recorded per run.
    distinct: dict[str, dict] = {}
    for job in pending:
        distinct.setdefault(signal_key(job["job"]), job["job"])
    # Workers with no signals to prepare load the data meanwhile, which their first run would do.
    idle = [(job["job"], True) for job in pending[:max(0, options.workers - len(distinct))]]
    for index, outcome in executor.map(execute_prepare, [(job, False) for job in distinct.values()] + idle):
        cache_counts.update(outcome["cache"])
        if outcome["error"] and index < len(distinct):  # a load that fails fails that config's preparation too
            print(f"  signals could not be prepared: {outcome['error'].splitlines()[0]}", flush=True)
    clock.lap("signals")
    # 2. The runs, each stored as soon as it ends.
    failed = 0
    calls = [(job["job"], job["run_dir"], options.run_files) for job in pending]
    try:
        for index, outcome in executor.map(execute_run, calls):
            job = pending[index]
            overrides = " ".join(filter_overrides(job["overrides"]))
            cache_counts.update(outcome["cache"])
            store.write(job["run_id"], job["params"], overrides, job["run_dir"], outcome, job["fingerprint"],
                        job["inputs"], engine=job["job"].get("engine"), run_files=options.run_files)
            failed += outcome["status"] != "ok"
            state = "ok" if outcome["status"] == "ok" else f"error: {outcome['error'].splitlines()[0]}"
            print(f"  run {job['number']} [{job['run_id']}] {overrides}: {state}", flush=True)
            for copy in copies.get(job["run_id"], []):
                print(f"  run {copy['number']} [{job['run_id']}] {' '.join(filter_overrides(copy['overrides']))}: "
                      f"{state.split(':')[0]} (same config as run {job['number']})", flush=True)
    except BrokenProcessPool:
        raise NewsbtError(f"a sweep worker died; finished runs are saved in {store.path}: "
                          "run the same command again to resume") from None
    if failed:
        print(f"{failed} of {len(pending)} runs failed; their errors are in {store.path} and the summary", flush=True)
    clock.lap("runs")

    rechecks = screen_again(list(runs.values()), store, executor, options.metric, options.screen_top_k, sweep_dir,
                            cache_counts) if options.screen_top_k else {}
    results = store.frame(list(runs))
    agreement = engine_agreement(results, store.frame(list(rechecks)), options.metric) if rechecks else None
    if agreement is not None:
        largest = agreement[f"abs_diff_{options.metric}"].max()
        print(f"screen: max |Δ {options.metric}| between the engines {largest:.3g}, "
              f"max |Δ final_value| {agreement['abs_diff_final_value'].max():.3g}", flush=True)
    store.close()
    clock.lap("screen")
    summary = write_summary(sweep_dir, results, sorted({k for job in jobs for k in job["params"]}), options.metric,
                            options.heatmap, dict(cache_counts), agreement)
    clock.lap("summary")
    print(f"cache: {', '.join(f'{k} {v}' for k, v in sorted(cache_counts.items())) or 'nothing computed'}")
    seconds = clock.seconds
    rate = f"{len(pending) / seconds['runs']:.2f} runs/s" if pending and seconds["runs"] > 0 else "no runs"
    print(f"time: composing {seconds['composing']:.2f} s, fingerprints {seconds['fingerprints']:.2f} s, signals "
          f"{seconds['signals']:.2f} s, {len(pending)} runs {seconds['runs']:.2f} s ({rate}), "
          + (f"screen {seconds['screen']:.2f} s, " if rechecks else "") + f"summary {seconds['summary']:.2f} s")
    print(f"results: {sweep_dir / RESULTS_FILE}\nsummary: {summary}")
    return [JobReturn(overrides=job["overrides"], cfg=job["config"], hydra_cfg=config, working_dir=job["run_dir"],
                      task_name="engine.run", status=JobStatus.COMPLETED,
                      _return_value=results.set_index("run_id").loc[job["run_id"]].to_dict()
                      if job["run_id"] in set(results["run_id"]) else None)
            for job in jobs]


# What each value of hydra.launcher.run_files writes, in increasing order: a run stored with one of these is done
# for a sweep asking for it or any before it.
RUN_FILES = ("light", "all")


def _already_done(run: dict, stored: dict[str, tuple[str | None, str]], run_files: str) -> bool:
    """Whether ``run`` is stored as successful with the same input fingerprint and at least the files asked."""
    if run["run_id"] not in stored:
        return False
    fingerprint, files = stored[run["run_id"]]
    return fingerprint == run["fingerprint"] and RUN_FILES.index(files) >= RUN_FILES.index(run_files)


def screen_again(runs: list[dict], store: ResultsStore, executor, metric: str, top_k: int, sweep_dir: Path,
                 cache_counts: Counter) -> dict[str, str]:
    """Re-run with engine=backtrader the ``top_k`` best successful engine=vectorized ``runs`` by ``metric`` (the
    screen), each stored as its own row: its run id is that of its config (engine included), ``screen_of`` the
    screened run's. A re-run already stored with the same inputs is not run again. Returns re-run id -> screened id.

    >>> screen_again(runs, store, executor, "sharpe", 5, sweep_dir, Counter())  # {"<backtrader id>": "<id>", ...}
    """
    from reports.sweep import LOWER_IS_BETTER

    screened = [run for run in runs if run["job"].get("engine") == "vectorized"]
    results = store.frame([run["run_id"] for run in screened])
    ok = results[(results["status"] == "ok") & results[metric].notna()] if metric in results else results.iloc[:0]
    best = ok.sort_values(metric, ascending=metric in LOWER_IS_BETTER, kind="stable")["run_id"].head(top_k)
    by_id = {run["run_id"]: run for run in screened}
    rechecks = []
    for run_id in best:
        run = by_id[run_id]
        job = json.loads(json.dumps(run["job"]))
        job["engine"] = "backtrader"
        recheck_id = config_hash(job)
        overrides = [override for override in run["overrides"] if override.partition("=")[0].lstrip("+~") != "engine"]
        params = {key: value for key, value in run["params"].items() if key != "engine"}
        rechecks.append({**run, "job": job, "run_id": recheck_id, "run_dir": str(sweep_dir / "runs" / recheck_id),
                         "screen_of": run_id, "overrides": [*overrides, "engine=backtrader"],
                         "params": {**params, "engine": "backtrader"} if "engine" in run["params"] else params})
    stored = store.done_runs()
    pending = [run for run in rechecks if not _already_done(run, stored, "all")]
    print(f"screen: the best {len(rechecks)} of {len(ok)} engine=vectorized runs by {metric} again with "
          f"engine=backtrader ({len(rechecks) - len(pending)} already done)", flush=True)
    for index, outcome in executor.map(execute_run, [(run["job"], run["run_dir"]) for run in pending]):
        run = pending[index]
        cache_counts.update(outcome["cache"])
        overrides = " ".join(filter_overrides(run["overrides"]))
        store.write(run["run_id"], run["params"], overrides, run["run_dir"], outcome, run["fingerprint"],
                    run["inputs"], engine="backtrader", screen_of=run["screen_of"])
        state = "ok" if outcome["status"] == "ok" else f"error: {outcome['error'].splitlines()[0]}"
        print(f"  re-run of [{run['screen_of']}] [{run['run_id']}] {overrides}: {state}", flush=True)
    return {run["run_id"]: run["screen_of"] for run in rechecks}


def engine_agreement(results: pd.DataFrame, rechecks: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per backtrader re-run: the screened run's id, the re-run's, ``metric`` and ``final_value`` by
    each engine and the absolute differences (NaN where either run failed).

    >>> engine_agreement(results, store.frame(rechecks), "sharpe")["abs_diff_sharpe"].max()
    """
    columns = list(dict.fromkeys([metric, "final_value"]))
    screened = results.set_index("run_id")
    rows = []
    for _, recheck in rechecks.iterrows():
        row = {"run_id": recheck["screen_of"], "backtrader_run_id": recheck["run_id"], "status": recheck["status"]}
        for column in columns:
            vectorized = pd.to_numeric(screened.at[recheck["screen_of"], column], errors="coerce") \
                if column in screened and recheck["screen_of"] in screened.index else np.nan
            backtrader = pd.to_numeric(recheck.get(column), errors="coerce")
            row[f"{column}_vectorized"], row[f"{column}_backtrader"] = vectorized, backtrader
            row[f"abs_diff_{column}"] = abs(backtrader - vectorized)
        rows.append(row)
    return pd.DataFrame(rows)


def _fingerprint(runs: list[dict], executor) -> None:
    """Set ``inputs`` and ``fingerprint`` of each run: each data file hashed once, each distinct set of
    signal providers built once (in a worker, where a model may be trained), the code hashed once."""
    code, data = code_version(), DataHashes()
    providers: dict[str, dict] = {}
    for run in runs:
        providers.setdefault(_provider_key(run["job"]), run["job"])
    keys = list(providers)
    params = {keys[index]: outcome
              for index, outcome in executor.map(execute_fingerprint, [(job,) for job in providers.values()])}
    for run in runs:
        run["inputs"] = run_inputs(run["job"], data, params[_provider_key(run["job"])], code)
        run["fingerprint"] = run_fingerprint(run["inputs"])


def write_summary(sweep_dir: Path, results: pd.DataFrame, params: list[str], metric: str,
                  heatmap: Sequence[str] | None, cache_counts: dict, agreement: pd.DataFrame | None = None) -> Path:
    """The sweep's HTML summary (reports.sweep), with the best run's return moments for the deflated Sharpe and
    the screen's ``engine_agreement`` (when the sweep re-ran its best runs with backtrader)."""
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
                               cache_stats=cache_counts, title=f"newsbt sweep: {sweep_dir.name}", agreement=agreement,
                               agreement_metric=metric)
