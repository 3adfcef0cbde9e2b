"""Progress of long stages, and the seconds each stage of a run took.

``Progress`` shows a tqdm bar on a terminal; without one (a log file, a sweep worker, CI) it writes a line to the
``newsbt`` log every 10% of the work or every 30 s, with the rate and the time left. ``StageClock`` adds up
the seconds per stage that a run stores as ``stage_seconds`` in ``metrics.json``.
"""
from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("newsbt")


def duration_text(seconds: float) -> str:
    """``seconds`` as ``45 s``, ``3 min 20 s`` or ``1 h 05 min``.

    >>> duration_text(200)
    '3 min 20 s'
    """
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress of ``total`` units of work named ``what``: a tqdm bar when stderr is a terminal, else a log line
    every ``fraction`` of the work or every ``interval_seconds`` (whichever comes first), such as ``walk-forward:
    3/12 windows (25%), 0.40 windows/s, 22 s left``. ``enabled=False`` shows nothing.

    >>> with Progress(len(windows), "walk-forward", unit="windows") as progress:
    ...     for window in windows: ...; progress.update()
    """

    def __init__(self, total: int, what: str, unit: str = "items", enabled: bool = True,
                 interval_seconds: float = 30.0, fraction: float = 0.1, clock=time.monotonic):
        self.total, self.what, self.unit = int(total), what, unit
        self.interval_seconds, self.fraction, self.clock = interval_seconds, fraction, clock
        self.done = 0
        self.terminal = enabled and sys.stderr.isatty()
        self.logging = enabled and not self.terminal
        self.bar = tqdm(total=self.total, desc=what, unit=unit, leave=False) if self.terminal else None
        self.started = self.last_time = self.clock()
        self.last_done = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        """Count ``count`` more units done."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        if not self.logging:
            return
        now = self.clock()
        step = max(1, int(self.total * self.fraction))
        if self.done >= self.total or self.done - self.last_done >= step or now - self.last_time >= self.interval_seconds:
            log.info(self.line(now))
            self.last_time, self.last_done = now, self.done

    def line(self, now: float | None = None) -> str:
        """The progress line as logged."""
        elapsed = (self.clock() if now is None else now) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = duration_text((self.total - self.done) / rate) if rate > 0 else "unknown"
        return f"{self.what}: {self.done}/{self.total} {self.unit}{share}, {rate:.2f} {self.unit}/s, {left} left"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StageClock:
    """Seconds spent per named stage of a run (``metrics.json`` ``stage_seconds``).

    >>> clock = StageClock()
    >>> with clock("load"): dataset = load_dataset(...)
    >>> clock.rounded()  # {"load": 1.234}
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` (created at 0)."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def __call__(self, stage: str) -> "_Timing":
        return _Timing(self, stage)

    def rounded(self) -> dict[str, float]:
        """The stages in the order first timed, to the millisecond."""
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}


class _Timing:
    def __init__(self, clock: StageClock, stage: str) -> None:
        self.clock, self.stage = clock, stage

    def __enter__(self) -> "_Timing":
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.clock.add(self.stage, time.perf_counter() - self.started)
