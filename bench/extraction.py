"""Quality and speed of information extraction from news text, on real StockNet tweets.

Ticker linking (``signals.linking``): every StockNet tweet was collected by a cashtag search for one ticker (its
folder). Labels: that ticker plus every other cashtag the original tweet carries. (a) Cashtags removed: precision
(a linked ticker counts as right when it is in the labels: the folder ticker or another cashtagged one; a company
the tweet names without a cashtag counts as wrong, so this is a lower bound), and recall (tweets whose folder
ticker is linked). (b) Tweets as written (they carry cashtags): precision. (c) Items/s on one core. Two masters:
the built-in StockNet twelve restricted to their universe (what a stocknet run uses) and StockNet plus the US index
constituents of pytickersymbols, unrestricted (about 1,300 names: more chances to link a wrong company).
``linking_audit.csv`` holds hand verdicts, by tweet id and ticker, on the links outside the labels of the default
sample and master: ``mention`` when the tweet is about that company (its business, products, stock, or the
company as analyst or party), ``other`` when not (coke the fuel, an ad using Amazon as a shop, spam giving
Facebook as a contact); links it has no verdict for count as wrong. Then the event classifier's figures
(``signals.events.evaluate``): per-type scores on the held-out split, macro-F1 per split, items/s on the labelled
set and on 10,000 real headlines and tweets, and the same with the MiniLM stage. About 60 s.

    python -m bench.extraction [--sample 20000] [--seed 0] [--show-errors 0]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.securities import index_master, stocknet_master  # noqa: E402
from signals.linking import METHODS, TickerLinker, core_name  # noqa: E402

TWEETS = ROOT.parent / "shared" / "data" / "stocknet-tweets-prices" / "tweets"
AUDIT = Path(__file__).with_name("linking_audit.csv")
# Kept deliberately simpler than the linker's own cashtag pattern: a second reading of the same text.
_CASHTAG_LABEL = re.compile(r"\$([A-Za-z][A-Za-z0-9]*(?:[.\-][A-Za-z]{1,2})?)")
_EXCHANGE_LABEL = re.compile(r"(?:NASDAQ|NYSE|Nasdaq|Nyse)\s?:\s?([A-Z]+)")
_CASHTAG_STRIP = re.compile(r"\$[A-Za-z][A-Za-z0-9._\-]*")


def read_audit() -> dict[tuple[str, str], bool]:
    """Hand verdicts on links outside the labels: (tweet id, ticker) -> True when the tweet is about that company."""
    audit = pd.read_csv(AUDIT, dtype=str)
    return {(i, t): v == "mention" for i, t, v in zip(audit["id_str"], audit["ticker"], audit["verdict"])}


def read_tweets(sample: int, seed: int) -> pd.DataFrame:
    """``sample`` distinct tweets (seeded) with columns id_str, folder, text, stripped (cashtags removed), labels."""
    frames = [pd.read_csv(path, dtype=str, keep_default_na=False) for path in sorted(TWEETS.glob("*_tweets.csv"))]
    if not frames:
        raise SystemExit(f"no tweets under {TWEETS}")
    tweets = pd.concat(frames, ignore_index=True).drop_duplicates(["ticker", "id_str"])
    tweets = tweets.sample(n=min(sample, len(tweets)), random_state=seed).reset_index(drop=True)
    labels = [
        {t.upper().replace(".", "-") for t in _CASHTAG_LABEL.findall(text)}
        | set(_EXCHANGE_LABEL.findall(text))
        | {folder}
        for folder, text in zip(tweets["ticker"], tweets["text"])
    ]
    return pd.DataFrame(
        {
            "id_str": tweets["id_str"],
            "folder": tweets["ticker"],
            "text": tweets["text"],
            "stripped": [_CASHTAG_STRIP.sub(" ", text) for text in tweets["text"]],
            "labels": labels,
        }
    )


def score(links: list[list[tuple[str, str]]], tweets: pd.DataFrame, audit: dict | None = None) -> dict:
    """Precision over (tweet, ticker) links, recall of the folder ticker over tweets, links by method; with an
    ``audit``, also the precision where links outside the labels take their hand verdict (unjudged ones: wrong)."""
    total = right = folder_right = found = judged_right = unjudged = 0
    by_method: Counter = Counter()
    right_by_method: Counter = Counter()
    for pairs, tweet_id, folder, labels in zip(links, tweets["id_str"], tweets["folder"], tweets["labels"]):
        tickers = {ticker for ticker, _ in pairs}
        found += folder in tickers
        for ticker, method in pairs:
            total += 1
            by_method[method] += 1
            if ticker in labels:
                right += 1
                right_by_method[method] += 1
            elif audit is not None:
                verdict = audit.get((tweet_id, ticker))
                unjudged += verdict is None
                judged_right += bool(verdict)
            folder_right += ticker == folder
    return {
        "tweets": len(tweets),
        "links": total,
        "right": right,
        "precision": right / total if total else float("nan"),
        "precision_folder_only": folder_right / total if total else float("nan"),
        "precision_audited": (right + judged_right) / total if total and audit is not None else None,
        "unjudged": unjudged,
        "recall": found / len(tweets) if len(tweets) else float("nan"),
        "by_method": {m: (by_method[m], right_by_method[m]) for m in METHODS if by_method[m]},
    }


def mention_ceiling(tweets: pd.DataFrame, master) -> float:
    """Share of tweets whose stripped text names the folder ticker at all: its symbol or one of its names or their
    cores, in any case, between non-letters. No linker can recall more without the cashtags."""
    hits = 0
    for folder, text in zip(tweets["folder"], tweets["stripped"]):
        names = {folder, *master[folder].names, *(core_name(n) for n in master[folder].names)}
        lower = text.lower()
        patterns = (r"(?<![a-z0-9])" + re.escape(n.lower().rstrip(".")) + r"(?![a-z0-9])" for n in names)
        hits += any(re.search(pattern, lower) for pattern in patterns)
    return hits / len(tweets)


def items_per_second(linker: TickerLinker, texts: list[str], repeats: int = 3) -> float:
    """Best of ``repeats`` timed passes over ``texts`` in this (single) thread."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        linker.link(texts)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def _print_score(title: str, result: dict) -> None:
    methods = ", ".join(f"{m} {n} ({r / n:.3f})" for m, (n, r) in result["by_method"].items())
    audited = "" if result["precision_audited"] is None else f"  audited precision {result['precision_audited']:.4f}"
    print(
        f"  {title:<28} links {result['links']:>6}  precision by label {result['precision']:.4f} "
        f"({result['right']}/{result['links']}){audited}  recall {result['recall']:.4f}"
    )
    print(f"  {'':<28} folder ticker only {result['precision_folder_only']:.4f}; "
          f"by method (links, precision by label): {methods or 'none'}")
    if result["precision_audited"] is not None:
        print(
            f"  {'':<28} audited: links outside the labels take their verdict in {AUDIT.name} "
            f"({result['unjudged']} not judged, counted wrong)"
        )


def _show_errors(links, tweets: pd.DataFrame, column: str, count: int) -> None:
    shown = 0
    for pairs, row in zip(links, tweets.itertuples()):
        wrong = [(t, m) for t, m in pairs if t not in row.labels]
        if wrong and shown < count:
            print(f"    wrong {wrong} in {row.folder} tweet: {getattr(row, column)[:160]!r}")
            shown += 1


def bench_linking(sample: int, seed: int, show_errors: int) -> None:
    """Print linking precision, recall and speed for the two masters."""
    tweets = read_tweets(sample, seed)
    print(f"ticker linking: {len(tweets)} StockNet tweets (seed {seed}), "
          f"{sum(len(labels) > 1 for labels in tweets['labels'])} carry cashtags of more than one ticker")
    stocknet = stocknet_master()
    print(f" recall ceiling: {mention_ceiling(tweets, stocknet):.4f} of the tweets name their ticker in any form "
          "once the cashtags are removed")
    masters = {
        "stocknet 12, universe 12": (stocknet, stocknet.tickers),
        "stocknet + US indices, all": (stocknet.merge(index_master()), None),
    }
    for title, (master, universe) in masters.items():
        started = time.perf_counter()
        linker = TickerLinker(master, universe=universe)
        built = time.perf_counter() - started
        print(f" master {title}: {len(master)} securities, linker built in {built:.2f} s")
        stripped = linker.link(tweets["stripped"].tolist())
        written = linker.link(tweets["text"].tolist())
        audit = read_audit() if universe is not None else None  # judged for the default sample and master
        _print_score("cashtags removed", score(stripped, tweets, audit))
        _print_score("as written (with cashtags)", score(written, tweets))
        if show_errors:
            _show_errors(stripped, tweets, "stripped", show_errors)
            _show_errors(written, tweets, "text", show_errors)
        speed_written = items_per_second(linker, tweets["text"].tolist())
        speed_stripped = items_per_second(linker, tweets["stripped"].tolist())
        print(f"  speed, one core: {speed_written:,.0f} items/s as written, {speed_stripped:,.0f} cashtags removed")


def bench_events() -> None:
    """The event classifier's figures, printed by its own ``signals.events.evaluate()`` when that module exists."""
    try:
        from signals import events
    except ImportError as error:
        print(f"event classifier: not available ({error})")
        return
    evaluate = getattr(events, "evaluate", None)
    if evaluate is None:
        print("event classifier: signals.events has no evaluate()")
        return
    print("event classifier (tests/data/events_eval.csv; patterns, the default):")
    report = evaluate()
    print(f"  {'type':<22} {'precision':>9} {'recall':>7} {'F1':>6} {'n':>4}   (held-out test split)")
    for name, scores in report["per_class"].items():
        print(f"  {name:<22} {scores['precision']:>9.3f} {scores['recall']:>7.3f} {scores['f1']:>6.3f} "
              f"{scores['support']:>4}")
    for split, scores in report["splits"].items():
        print(f"  {split:<6} macro-F1 {scores['macro_f1']:.3f}  accuracy {scores['accuracy']:.3f}  n={scores['n']}")
    print(f"  items/s on the set: {report['items_per_second']:,.0f}; decided by a pattern: {report['pattern_share']:.1%}")
    print(f"  items/s on real news (5,000 djia headlines + 5,000 stocknet tweets): {_event_stream_speed(events):,.0f}")
    with_encoder = evaluate(classifier=events.EventClassifier(encoder=True), repeats=1)
    print(f"  with the MiniLM prototype stage: test macro-F1 {with_encoder['macro_f1']:.3f}, "
          f"all {with_encoder['splits']['all']['macro_f1']:.3f}, {with_encoder['items_per_second']:,.0f} items/s")


def _event_stream_speed(events, per_source: int = 5000, seed: int = 0) -> float:
    """Items/s of the default event classifier on real headlines and tweets (best of 3 passes)."""
    headlines = pd.read_csv(ROOT.parent / "shared" / "data" / "djia-reddit-news" / "RedditNews.csv")["News"]
    tweets = pd.concat(pd.read_csv(path, usecols=["text"])["text"] for path in sorted(TWEETS.glob("*_tweets.csv")))
    texts = (headlines.dropna().sample(per_source, random_state=seed).tolist()
             + tweets.dropna().sample(per_source, random_state=seed).tolist())
    classifier, best = events.EventClassifier(), 0.0
    for _ in range(3):
        started = time.perf_counter()
        classifier.classify(texts)
        best = max(best, len(texts) / (time.perf_counter() - started))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=20000, help="tweets to sample (default 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-errors", type=int, default=0, help="print this many wrong links per master")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):  # one core, whatever the machine has
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    bench_linking(args.sample, args.seed, args.show_errors)
    bench_events()


if __name__ == "__main__":
    main()
