"""Fit the cold walk-forward windows of the windowed news readers (the LDA topics) in parallel, before the
walk-forward reads them one window at a time.

Each window's fit is independent of the others (its own past news, its own seeded model), so ``prefit_windows``
computes the windows missing from the signal cache in a small pool of processes (spawned: no fork of a process
holding threads) and stores each through ``SignalCache.get_or_compute`` under the key ``window_signals`` looks for,
in window order: the walk-forward then reads them as if fitted serially, and the entries, the cache counts and
every number of the run are the same (a test compares a parallel fit with the serial one byte for byte). Windowed
providers that read another windowed provider's columns (the regimes, on the topics) stay serial. Only a main
process starts a pool (a sweep's worker never nests one), only with at least two cold windows and two cores.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Sequence

import pandas as pd

from engine.cache import SignalCache
from engine.progress import Progress, StageClock

# At most this many fits at once: each holds its window's news and its corpus (on djia about 0.3 GB).
MAX_WORKERS = 4


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container or `taskset` may allow fewer than the
    machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _compute_entry(slot, window, frame: pd.DataFrame, news: pd.DataFrame) -> pd.DataFrame:
    """One window's cache entry, computed in a worker (what ``window_signals`` computes on a miss)."""
    from engine.providers import window_entry

    return window_entry(slot, window, frame, news)[2]()


def prefit_windows(slots: Sequence, windows: Sequence, features: pd.DataFrame, news: pd.DataFrame | None,
                   cache: SignalCache | None, workers: int | None = None, clock: StageClock | None = None,
                   progress: bool = True) -> int:
    """Compute and cache, ``workers`` at a time (default: the available cores, at most ``MAX_WORKERS``), the
    entries of the learned news readers among ``slots`` (``engine.providers.Slot``) that are missing for
    ``windows``; return how many were computed here (0 when there is nothing to gain: no cache, fewer than two
    cold entries or workers, or this process is itself a worker). ``clock`` adds the seconds under each slot.

    >>> prefit_windows(plan.windowed, windows, features, aligned, cache)
    """
    from engine.providers import window_entry
    from engine.walkforward import window_rows

    workers = min(available_cores(), MAX_WORKERS) if workers is None else int(workers)
    if cache is None or news is None or workers < 2 or multiprocessing.parent_process() is not None:
        return 0
    # A news reader reads the news and the window's sessions only (frame's index, whatever columns were joined).
    independent = [slot for slot in slots if slot.provider.learned and slot.provider.reads_news]
    started = time.perf_counter()
    cold = []
    for window in windows:
        frame = window_rows(features, window)
        for slot in independent:
            name, key, _ = window_entry(slot, window, frame, news)
            if not cache.path(name, key).exists():
                cold.append((slot, window, name, key))
    if len(cold) >= 2:
        sessions = pd.DatetimeIndex(news["session"])

        def submit(slot, window) -> Future:
            # The window's news and sessions are cut only now: at most workers + 1 windows' copies exist at once.
            span = news[(sessions >= window.train_start) & (sessions <= window.test_end)]
            return pool.submit(_compute_entry, slot, window, window_rows(features, window).iloc[:, :0], span)

        context = multiprocessing.get_context("spawn")
        with Progress(len(cold), "fitting windows", unit="windows", enabled=progress) as shown, \
                ProcessPoolExecutor(min(workers, len(cold)), mp_context=context) as pool:
            queued = deque(submit(slot, window) for slot, window, _, _ in cold[:workers + 1])
            try:
                for number, (_, _, name, key) in enumerate(cold):
                    future = queued.popleft()
                    if number + workers + 1 < len(cold):
                        queued.append(submit(*cold[number + workers + 1][:2]))
                    cache.get_or_compute(name, key, future.result)  # in window order, as the serial fits store
                    shown.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    if clock is not None:
        for slot in independent:
            clock.add(slot.slot, (time.perf_counter() - started) / len(independent))
    return len(cold) if len(cold) >= 2 else 0
