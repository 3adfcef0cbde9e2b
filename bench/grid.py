"""Sweep throughput: runs per second of a grid on djia with 1 worker, 2 workers and Ray (local), measured side by
side in one run, each as the whole command (start-up included) and as its sweep phase alone. Targets (issue 9):
>= 10 runs/s and >= 1.8x for 2 workers over 1.

    .venv/bin/python bench/grid.py [--grid small|large] [--sentiment lexicon] [--reports] [--engine vectorized]
                                   [--run-files light] [--no-ray]

``--grid small``: the issue's 40-run grid (window_sessions x threshold x allow_short); ``large``: 400 runs (10
windows x 10 thresholds x allow_short x 2 baselines), where the fixed costs weigh less. Each timing is the whole
``python -m engine.run -m ...`` command (start-up, composing the jobs, the sweep, its DuckDB writes and summary page)
into a fresh sweep folder; the sweep phase is the runs alone, after start-up and signal preparation, as the sweep
prints it (``time: ... N runs S s``). The signal cache is warmed first, so every mode reads it alike.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRIDS = {
    "small": ["strategy.window_sessions=1,3,5,10,20", "strategy.threshold=0,0.01,0.02,0.05",
              "strategy.allow_short=false,true"],
    "large": ["strategy.window_sessions=1,2,3,5,8,10,13,15,20,25",
              "strategy.threshold=0,0.005,0.01,0.015,0.02,0.03,0.04,0.05,0.075,0.1",
              "strategy.allow_short=false,true", "strategy.baseline_sessions=125,250"],
}
MODES = {"1 worker": ["hydra.launcher.workers=1"], "2 workers": ["hydra.launcher.workers=2"],
         "ray local (2)": ["hydra.launcher.backend=ray", "hydra.launcher.workers=2"]}
RUNS_TARGET, RATIO_TARGET = 10.0, 1.8


def grid_size(grid: list[str]) -> int:
    size = 1
    for override in grid:
        size *= len(override.partition("=")[2].split(","))
    return size


RECOMPUTED: list[str] = []  # sweeps that computed signals instead of reading them all from the warmed cache
PHASES: list[str] = []  # each sweep's "time:" line (its phases' seconds) and the seconds outside them


def cpu_seconds() -> float:
    """User and system CPU seconds of this process's finished children (and theirs: a sweep's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sweep(folder: Path, base: list[str], grid: list[str], extra: list[str]) -> tuple[float, float, float]:
    """(seconds of the whole command, seconds of its runs phase, CPU seconds of the command and its workers)."""
    command = [sys.executable, "-m", "engine.run", "-m", *base, f"paths.sweeps={folder}", *grid, *extra]
    started, cpu = time.perf_counter(), cpu_seconds()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    runs = grid_size(grid)
    phase = re.search(r"^time: .* (\d+) runs ([0-9.]+) s", done.stdout, re.MULTILINE)
    if done.returncode != 0 or done.stdout.count(": ok") != runs or not phase or int(phase.group(1)) != runs:
        sys.exit(f"sweep failed ({' '.join(extra)}):\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}")
    counts = re.search(r"^cache: (.*)$", done.stdout, re.MULTILINE)
    if counts and ".miss" in counts.group(1):
        RECOMPUTED.append(f"{' '.join(extra)}: {counts.group(1)}")
    phases = re.search(r"^time: (.*)$", done.stdout, re.MULTILINE).group(1)
    # what the whole command spent outside the sweep's own phases: Python, imports, Hydra, the sweep's jobs checked
    spent = sum(float(seconds) for seconds in re.findall(r"([0-9.]+) s\b", phases))
    PHASES.append(f"{' '.join(extra)}: {phases}; outside them {elapsed - spent:.2f} s")
    return elapsed, float(phase.group(2)), cpu


def machine() -> str:
    """The CPU model and whether it computes bf16 natively (avx512_bf16, amx), from lscpu."""
    try:
        flags_and_model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "lscpu unavailable"
    model = next((line.split(":", 1)[1].strip() for line in flags_and_model.splitlines()
                  if line.startswith("Model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in flags_and_model.splitlines() if line.startswith("Flags")), [])
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{model}, {os.cpu_count()} cores, {'with ' + ' '.join(native) if native else 'no avx512_bf16/amx'}"


def verdict(value: float, target: float, unit: str) -> str:
    return "" if value >= target else f"  BELOW TARGET by {target - value:.2f}{unit} ({value / target:.0%} of it)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="small", choices=sorted(GRIDS), help="small: the 40-run grid; large: 400 runs")
    parser.add_argument("--sentiment", default="lexicon", help="signals/sentiment for the grid: lexicon or transformer")
    parser.add_argument("--reports", action="store_true", help="write each run's tear sheet too")
    parser.add_argument("--engine", default="backtrader", help="engine of the runs: backtrader or vectorized")
    parser.add_argument("--run-files", default="all", help="hydra.launcher.run_files: all or light")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray mode")
    args = parser.parse_args()
    grid = GRIDS[args.grid]
    runs = grid_size(grid)
    base = ["data=djia", f"signals/sentiment={args.sentiment}", f"report.enabled={str(args.reports).lower()}",
            f"engine={args.engine}"]
    modes = {mode: [*extra, f"hydra.launcher.run_files={args.run_files}"] for mode, extra in MODES.items()
             if not (args.no_ray and mode.startswith("ray"))}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="newsbt-bench-") as scratch:
        warm = subprocess.run([sys.executable, "-m", "engine.run", *base, f"paths.runs={scratch}/warm"], cwd=ROOT,
                              capture_output=True, text=True)
        if warm.returncode != 0:
            sys.exit(f"warm-up run failed:\n{warm.stderr[-2000:]}")
        timings = {mode: sweep(Path(scratch) / f"sweep{number}", base, grid, extra)
                   for number, (mode, extra) in enumerate(modes.items())}
    print(f"{runs}-run grid on djia ({args.sentiment} sentiment, engine {args.engine}, run files {args.run_files}, "
          f"reports {'on' if args.reports else 'off'}); {machine()}; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"  {'':14s} {'whole command':>27s}   {'sweep phase (runs only)':>27s}   CPU s per run (all processes)")
    one_whole, one_phase, _ = timings["1 worker"]
    for mode, (whole, phase, cpu) in timings.items():
        print(f"  {mode:14s} {runs / whole:6.2f} runs/s ({whole:6.1f} s) {one_whole / whole:4.2f}x   "
              f"{runs / phase:6.2f} runs/s ({phase:6.1f} s) {one_phase / phase:4.2f}x   {cpu / runs:.3f}")
    best_whole = max(runs / whole for whole, _, _ in timings.values())
    best_phase = max(runs / phase for _, phase, _ in timings.values())
    ratio_whole, ratio_phase = one_whole / timings["2 workers"][0], one_phase / timings["2 workers"][1]
    print(f"runs/s, best mode: whole command {best_whole:.2f}{verdict(best_whole, RUNS_TARGET, ' runs/s')}; "
          f"sweep phase {best_phase:.2f}{verdict(best_phase, RUNS_TARGET, ' runs/s')} (target >= {RUNS_TARGET:g})")
    print("where the whole command's time went, by sweep:")
    for line in PHASES:
        print(f"  {line}")
    for line in RECOMPUTED:
        print(f"warning: signals were computed during a timed sweep (a provider's key changed since the warm-up; "
              f"that sweep's figures include it): {line}")
    print(f"2 workers over 1: whole command {ratio_whole:.2f}x{verdict(ratio_whole, RATIO_TARGET, 'x')}; "
          f"sweep phase {ratio_phase:.2f}x{verdict(ratio_phase, RATIO_TARGET, 'x')} (target >= {RATIO_TARGET:g}x)")


if __name__ == "__main__":
    main()
