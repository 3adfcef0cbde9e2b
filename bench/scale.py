"""Scale: seconds per stage and peak memory of a cluster run on synthetic universes of N tickers x S sessions.

Each size gets a temp folder with a prices csv (a seeded random walk per ticker, ticker column) and a news csv (one
real headline per two ticker-sessions, drawn with a fixed seed from djia's RedditNews.csv, stamped with an offset
inside the sessions' days), then ``python -m engine.run strategy=cluster data=csv`` runs twice as a subprocess:
cold (empty signal cache) and warm (signals cached). Lexicon sentiment (the transformer is benchmarked in
bench/sentiment.py), report off. Stage seconds come from the run's metrics.json (``stage_seconds``), peak memory
from the child's ru_maxrss. Target: warm 500 x 2,520 with engine=vectorized <= 60 s and <= 4 GB.

    .venv/bin/python bench/scale.py [--sizes 10,100,500] [--sessions 2520] [--engines vectorized,backtrader]
        [--backtrader-max 100] [--folder DIR]

``--folder DIR`` keeps each size's universe and signal cache in ``DIR/N{tickers}-S{sessions}`` and reuses them: a
size whose cache is already there runs warm only (its cold figure is that of the run that filled it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT = Path(__file__).resolve().parents[1]
HEADLINES = PROJECT.parent / "shared" / "data" / "djia-reddit-news" / "RedditNews.csv"
SEED = 20240529
TARGET_SECONDS, TARGET_GB = 60.0, 4.0


def make_universe(folder: Path, tickers: int, sessions: int, seed: int = SEED) -> tuple[Path, Path]:
    """Write prices.csv and news.csv for ``tickers`` x ``sessions`` under ``folder``; returns their paths."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2010-01-04", periods=sessions)
    names = [f"T{i:04d}" for i in range(tickers)]
    steps = rng.normal(0.0003, 0.015, size=(tickers, sessions))
    close = 50.0 * np.exp(np.cumsum(steps, axis=1))
    open_ = close * np.exp(rng.normal(0, 0.004, size=close.shape))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.005, size=close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.005, size=close.shape)))
    volume = rng.integers(100_000, 5_000_000, size=close.shape)
    prices = pd.DataFrame({
        "ticker": np.repeat(names, sessions), "date": np.tile(dates.strftime("%Y-%m-%d"), tickers),
        "open": open_.ravel().round(4), "high": high.ravel().round(4), "low": low.ravel().round(4),
        "close": close.ravel().round(4), "volume": volume.ravel(),
    })
    headlines = pd.read_csv(HEADLINES)["News"].dropna().astype(str).str.strip()
    headlines = headlines[headlines != ""].to_numpy()
    items = tickers * sessions // 2
    which = rng.integers(0, tickers * sessions, size=items)
    minutes = rng.integers(0, 24 * 60, size=items)  # any time of the day, before or after the open
    stamps = (pd.DatetimeIndex(dates[which % sessions]).tz_localize("America/New_York")
              + pd.to_timedelta(minutes, unit="min"))
    news = pd.DataFrame({
        "timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ticker": np.asarray(names)[which // sessions],
        "text": headlines[rng.integers(0, len(headlines), size=items)],
    }).sort_values("timestamp", kind="stable")
    prices_path, news_path = folder / "prices.csv", folder / "news.csv"
    prices.to_csv(prices_path, index=False)
    news.to_csv(news_path, index=False)
    return prices_path, news_path


def run_once(folder: Path, prices: Path, news: Path, engine: str, label: str) -> dict:
    """One ``engine.run`` subprocess; returns its stage seconds, wall seconds and peak memory (GB)."""
    run_dir = folder / f"run-{label}"
    command = [
        sys.executable, "-m", "engine.run", "strategy=cluster", "data=csv", f"data.prices.path={prices}",
        f"data.news.path={news}", "signals/sentiment=lexicon", "report.enabled=false", f"engine={engine}",
        f"paths.cache={folder / 'cache'}", f"paths.runs={folder / 'runs'}", f"hydra.run.dir={run_dir}",
    ]
    # ru_maxrss of RUSAGE_CHILDREN is the largest of all children so far: run each measurement in a fresh
    # python that starts the run and reports its own children's peak.
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stderr.write(r.stderr[-3000:] if r.returncode else '');"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *command], cwd=PROJECT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    code, peak_kb = done.stdout.split()[-2:]
    if int(code) != 0:
        raise SystemExit(f"run {label} failed ({code}):\n{done.stderr}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"stages": metrics["stage_seconds"], "wall": wall, "peak_gb": int(peak_kb) / 2**20}


def machine() -> str:
    """The CPU model and whether it computes bf16 natively (``avx512_bf16``), from ``/proc/cpuinfo``."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "cpu unknown")
    return f"{model}, {'avx512_bf16' if 'avx512_bf16' in info else 'no avx512_bf16'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500", help="numbers of tickers, comma-separated")
    parser.add_argument("--sessions", type=int, default=2520)
    parser.add_argument("--engines", default="vectorized,backtrader")
    parser.add_argument("--backtrader-max", type=int, default=100, help="largest N the backtrader engine runs at")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders (printed)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="keep and reuse universes and signal caches here (a size already cached runs warm only)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = args.engines.split(",")
    print(f"{machine()}; load average {os.getloadavg()[0]:.2f}; cpus {os.cpu_count()}", flush=True)
    rows = []
    for n in sizes:
        if args.folder is None:
            folder = Path(tempfile.mkdtemp(prefix=f"newsbt-scale-{n}-"))
            prices, news = make_universe(folder, n, args.sessions)
        else:
            folder = args.folder / f"N{n}-S{args.sessions}"
            folder.mkdir(parents=True, exist_ok=True)
            prices, news = folder / "prices.csv", folder / "news.csv"
            if not (prices.is_file() and news.is_file()):
                make_universe(folder, n, args.sessions)
        cached = (folder / "cache" / "signals").is_dir()
        for engine in engines:
            if engine == "backtrader" and n > args.backtrader_max:
                continue
            states = ("cold", "warm") if engine == engines[0] and not cached else ("warm",)
            for state in states:
                label = f"{engine}-{state}" + ("" if args.folder is None else f"-{time.strftime('%Y%m%d-%H%M%S')}")
                result = run_once(folder, prices, news, engine, label)
                rows.append({"tickers": n, "engine": engine, "cache": state, **result})
                stages = " ".join(f"{k}={v:.2f}" for k, v in result["stages"].items())
                print(f"N={n} S={args.sessions} {engine} {state}: wall {result['wall']:.1f}s "
                      f"peak {result['peak_gb']:.2f} GB | {stages}", flush=True)
        if args.keep or args.folder is not None:
            print(f"  kept {folder}")
        else:
            subprocess.run(["rm", "-rf", str(folder)], check=True)
    print()
    stage_names = list(dict.fromkeys(k for r in rows for k in r["stages"]))
    header = ["N", "engine", "cache", *stage_names, "wall s", "peak GB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [str(r["tickers"]), r["engine"], r["cache"],
                 *(f"{r['stages'].get(k, 0):.2f}" for k in stage_names), f"{r['wall']:.1f}", f"{r['peak_gb']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    for r in rows:
        if r["engine"] == "vectorized" and r["cache"] == "warm" and r["tickers"] >= 500:
            ok = r["wall"] <= TARGET_SECONDS and r["peak_gb"] <= TARGET_GB
            print(f"target (warm, N={r['tickers']}, vectorized): {r['wall']:.1f}s <= {TARGET_SECONDS:.0f}s and "
                  f"{r['peak_gb']:.2f} GB <= {TARGET_GB:.0f} GB: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
