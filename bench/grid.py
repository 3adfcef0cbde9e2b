"""Sweep throughput: runs per second of one 40-run grid on djia with 1 worker, 2 workers and Ray (local),
measured side by side in one run. Target: 2 workers >= 1.7x one worker.

    .venv/bin/python bench/grid.py [--sentiment lexicon] [--reports] [--engine vectorized] [--run-files light] [--no-ray]

Each timing is the whole `python -m engine.run -m ...` command (start-up, the sweep, its DuckDB writes and
summary page) into a fresh sweep folder; the signal cache is warmed first, so every mode reads it alike.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["strategy.window_sessions=1,3,5,10,20", "strategy.threshold=0,0.01,0.02,0.05", "strategy.allow_short=false,true"]
MODES = {"1 worker": ["hydra.launcher.workers=1"], "2 workers": ["hydra.launcher.workers=2"],
         "ray local (2)": ["hydra.launcher.backend=ray", "hydra.launcher.workers=2"]}


def sweep(folder: Path, base: list[str], extra: list[str]) -> float:
    command = [sys.executable, "-m", "engine.run", "-m", *base, f"paths.sweeps={folder}", *GRID, *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or done.stdout.count(": ok") != 40:
        sys.exit(f"sweep failed ({' '.join(extra)}):\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentiment", default="lexicon", help="signals/sentiment for the grid: lexicon or transformer")
    parser.add_argument("--reports", action="store_true", help="write each run's tear sheet too")
    parser.add_argument("--engine", default="backtrader", help="engine of the runs: backtrader or vectorized")
    parser.add_argument("--run-files", default="all", help="hydra.launcher.run_files: all or light")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray mode")
    args = parser.parse_args()
    base = ["data=djia", f"signals/sentiment={args.sentiment}", f"report.enabled={str(args.reports).lower()}",
            f"engine={args.engine}"]
    modes = {mode: [*extra, f"hydra.launcher.run_files={args.run_files}"] for mode, extra in MODES.items()
             if not (args.no_ray and mode.startswith("ray"))}
    with tempfile.TemporaryDirectory(prefix="newsbt-bench-") as scratch:
        warm = subprocess.run([sys.executable, "-m", "engine.run", *base, f"paths.runs={scratch}/warm"], cwd=ROOT,
                              capture_output=True, text=True)
        if warm.returncode != 0:
            sys.exit(f"warm-up run failed:\n{warm.stderr[-2000:]}")
        timings = {mode: sweep(Path(scratch) / f"sweep{number}", base, extra) for number, (mode, extra) in enumerate(modes.items())}
    one = timings["1 worker"]
    print(f"40-run grid on djia ({args.sentiment} sentiment, engine {args.engine}, run files {args.run_files}, "
          f"reports {'on' if args.reports else 'off'}), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    for mode, seconds in timings.items():
        print(f"  {mode:14s} {40 / seconds:6.2f} runs/s  ({seconds:6.1f} s)  speed-up {one / seconds:4.2f}x")
    ratio = one / timings["2 workers"]
    print(f"2 workers over 1: {ratio:.2f}x (target >= 1.7x){'' if ratio >= 1.7 else '  BELOW TARGET'}")


if __name__ == "__main__":
    main()
