"""Speed of the transformer sentiment provider against a plain transformers pipeline, on real headlines.

Same fine-tuned model, same machine, one run: (a) ``pipeline("text-classification")`` called one text at a time,
(b) ``TransformerSentiment``'s default path (conf/signals/sentiment/transformer.yaml: fp32 on the CPU) with an
empty cache, and the provider in bf16 where the CPU has native bf16 (an explicit choice); plus achieved GFLOP/s
against a torch matmul, the label agreement and largest score difference of each precision mode with fp32, and
GPU figures when CUDA is available. About 2-3 minutes.

    python -m bench.sentiment [--texts 2000] [--pipeline-texts 400] [--model-dir data/models/sentiment-minilm]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import torch
import transformers
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.errors import NewsbtError  # noqa: E402
from signals.transformer import (BENCH_ONLY_MODES, TransformerSentiment, _Scorer, cpu_has_fast_bf16,  # noqa: E402
                                 load_classifier)

HEADLINES = ROOT.parent / "shared" / "data" / "djia-reddit-news" / "RedditNews.csv"
_BYTES_REPR = re.compile(r"""^b(['"])(.*)\1$""", re.DOTALL)


def read_headlines(count: int) -> list[str]:
    """``count`` distinct headlines spread over RedditNews.csv, b'..' wrappers stripped."""
    news = pd.read_csv(HEADLINES)["News"].dropna().astype(str)
    news = news.str.replace(_BYTES_REPR, lambda m: m.group(2), regex=True).str.strip()
    news = news[news != ""].drop_duplicates()
    step = max(1, len(news) // count)
    return news.iloc[::step].head(count).tolist()


def _flops(model, token_counts: np.ndarray) -> float:
    """Useful forward FLOPs: 2 x non-embedding parameters x tokens, plus QK^T and AV (4 n^2 d per layer)."""
    config = model.config
    non_embedding = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    n = token_counts.astype(np.float64)
    return float((2 * non_embedding * n + 4 * config.num_hidden_layers * config.hidden_size * n**2).sum())


def _matmul_gflops(device: str, dtype: torch.dtype, size: int = 1024, seconds: float = 1.5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        done += 10
    return 2 * size**3 * done / (time.perf_counter() - started) / 1e9


def _news(texts: list[str]) -> pd.DataFrame:
    session = pd.Timestamp("2016-07-01 13:30", tz="UTC")
    return pd.DataFrame({"timestamp": session, "ticker": [f"N{i % 50}" for i in range(len(texts))],
                         "text": texts, "source": "reddit", "session": session})


def _provider_rate(settings, texts: list[str], device: str,
                   precision: str | None = None) -> tuple[TransformerSentiment, float, float]:
    """(provider, warm-up seconds, texts per second of a cold-cache transform) on ``device`` in ``precision``
    (default: the config's)."""
    precision = precision or settings.precision
    with tempfile.TemporaryDirectory() as cache_root:
        make = lambda: TransformerSentiment(settings.model_dir, cache_root, settings.batch_size, settings.max_length,
                                            precision, settings.threads, device)
        started = time.perf_counter()
        make().transform(_news(["Warm-up: model load and precision calibration."]))
        warmup = time.perf_counter() - started
        provider = make()
        started = time.perf_counter()
        provider.transform(_news(texts))
        seconds = time.perf_counter() - started
    assert provider.stats_["scored"] == len(set(texts)), provider.stats_
    return provider, warmup, len(texts) / seconds


def main(argv: list[str] | None = None) -> int:
    settings = OmegaConf.load(ROOT / "conf" / "signals" / "sentiment" / "transformer.yaml")
    parser = argparse.ArgumentParser(prog="python -m bench.sentiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--pipeline-texts", type=int, default=400, help="subset for the slow one-at-a-time pipeline")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds; the best is reported")
    parser.add_argument("--model-dir", default=str(ROOT / settings.model_dir))
    args = parser.parse_args(argv)
    settings.model_dir = args.model_dir
    # The pipeline logs (as an error) a long list of "supported" classes for a model class it does not know.
    transformers.logging.set_verbosity(transformers.logging.CRITICAL)
    try:
        model, tokenizer = load_classifier(args.model_dir)
    except NewsbtError as error:
        print(f"error: {error} (train it: python -m signals.finetune)", file=sys.stderr)
        return 2
    texts = read_headlines(args.texts)
    threads = settings.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)  # for the pipeline and the matmul; the provider sets its own
    print(f"{len(texts)} distinct RedditNews headlines; model {args.model_dir}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {threads} CPU threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; CPU native bf16: {cpu_has_fast_bf16()}")

    # (a) the plain way: a pipeline, one text per call, fp32; (b) the provider's default path, empty cache.
    # The machine may be shared: rounds alternate (a) and (b) and the best round of each is compared.
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    subset = texts[: args.pipeline_texts]
    for text in subset[:5]:
        pipe(text, truncation=True, max_length=settings.max_length, top_k=None)
    device = "cpu" if settings.device == "auto" else settings.device
    bf16_too = device == "cpu" and cpu_has_fast_bf16()
    pipeline_rates, provider_rates, bf16_rates = [], [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for text in subset:
            pipe(text, truncation=True, max_length=settings.max_length, top_k=None)
        pipeline_rates.append(len(subset) / (time.perf_counter() - started))
        provider, warmup, rate = _provider_rate(settings, texts, device)
        provider_rates.append(rate)
        if bf16_too:
            bf16_rates.append(_provider_rate(settings, texts, device, "bf16")[2])
    pipeline_rate, provider_rate = max(pipeline_rates), max(provider_rates)
    listed = lambda rates: ", ".join(f"{rate:.0f}" for rate in rates)
    print(f"(a) pipeline, one text per call, fp32: {pipeline_rate:8.1f} sentences/s (first {len(subset)} texts; "
          f"best of {args.rounds} rounds: {listed(pipeline_rates)})")
    print(f"(b) TransformerSentiment default path:  {provider_rate:8.1f} sentences/s (all {len(texts)} texts; "
          f"best of {args.rounds} rounds: {listed(provider_rates)}; precision {provider.precision_} on "
          f"{provider.device_}, batch {settings.batch_size}; one-off warm-up (model load) {warmup:.1f} s)")
    print(f"    speed-up (b)/(a): {provider_rate / pipeline_rate:.1f}x")
    if bf16_rates:
        print(f"    provider with precision=bf16 (explicit; other scores): {max(bf16_rates):.1f} sentences/s "
              f"({listed(bf16_rates)}), {max(bf16_rates) / pipeline_rate:.1f}x the pipeline")

    scorer = _Scorer(model, tokenizer, torch.device("cpu"), "fp32", settings.max_length)
    ids, truncated = scorer.encode(texts)
    tokens = np.array([len(row) for row in ids])
    flops = _flops(model, tokens)
    achieved = flops * provider_rate / len(texts) / 1e9
    print(f"    tokens: mean {tokens.mean():.1f}, max {tokens.max()}, truncated {int(truncated.sum())}; "
          f"~{flops / len(texts) / 1e6:.1f} MFLOP per text")
    matmul = {"fp32": _matmul_gflops("cpu", torch.float32)}
    if cpu_has_fast_bf16():
        matmul["bf16"] = _matmul_gflops("cpu", torch.bfloat16)
    print(f"    achieved {achieved:.1f} GFLOP/s; torch 1024x1024 matmul, {threads} threads: "
          + ", ".join(f"{mode} {value:.1f} GFLOP/s" for mode, value in matmul.items()))

    # Label agreement of every mode with fp32 on the same texts (and its speed, model already loaded).
    columns = ["negative", "neutral", "positive"]
    started = time.perf_counter()
    reference = scorer.score(texts, settings.batch_size, threads)
    rates = {"fp32": len(texts) / (time.perf_counter() - started)}
    labels = reference[columns].to_numpy().argmax(1)
    modes = (["bf16"] if cpu_has_fast_bf16() else []) + list(BENCH_ONLY_MODES)  # int8: measured, not an option
    print(f"    precision modes on CPU (scoring only): fp32 {rates['fp32']:.0f}/s")
    for mode in modes:
        mode_scorer = _Scorer(model, tokenizer, torch.device("cpu"), mode, settings.max_length)
        started = time.perf_counter()
        scores = mode_scorer.score(texts, settings.batch_size, threads)
        rate = len(texts) / (time.perf_counter() - started)
        agreement = (scores[columns].to_numpy().argmax(1) == labels).mean()
        difference = (scores.positive - scores.negative) - (reference.positive - reference.negative)
        probability = (scores[columns] - reference[columns]).abs().to_numpy().max()
        print(f"      {mode}: {rate:.0f}/s, label agreement with fp32 {agreement:.2%}, "
              f"max |sentiment difference| {difference.abs().max():.4f}, max |probability difference| "
              f"{probability:.2e}")

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        gpu_provider, _, gpu_rate = _provider_rate(settings, texts, "cuda")
        print(f"GPU {name}: provider {gpu_rate:.0f} sentences/s ({gpu_provider.precision_}), "
              f"{flops * gpu_rate / len(texts) / 1e9:.0f} GFLOP/s; matmul bf16 "
              f"{_matmul_gflops('cuda', torch.bfloat16, 8192) / 1000:.0f} TFLOP/s")
    else:
        print("GPU: none (torch.cuda.is_available() is False)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
