"""Tests of the transformer sentiment provider and its fine-tuning, on a tiny random BERT built here.

The tiny model (hidden 32, 2 layers, a vocabulary written to tmp_path) keeps every provider test fast; one test
checks the real fine-tuned model's fast precision mode against fp32 when data/models/sentiment-minilm exists.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertTokenizer

from engine.cache import CACHE_STATS
from engine.errors import ConfigError
from signals import finetune
from signals.transformer import (
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


def _phrasebank_slice() -> pd.DataFrame:
    unique, _ = finetune.dedupe_phrasebank(finetune.read_phrasebank(PHRASEBANK / finetune.TRAIN_FILE))
    return unique


def _tiny_model(folder: Path, sentences: list[str], seed: int = 0) -> tuple[MeanPoolingClassifier, BertTokenizer]:
    """A random 2-layer BERT (hidden 32) whose vocabulary is the words of ``sentences``, saved in ``folder``."""
    words = Counter(w for s in sentences for w in s.lower().replace(",", " ").replace(".", " ").split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(600)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    torch.manual_seed(seed)
    model = MeanPoolingClassifier(config).eval()
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
                                        log=lambda line: None)
    assert len(history) == 3
    assert min(r["validation_loss"] for r in history) < before - 0.05
    # The kept weights are the best epoch's: evaluating again reproduces its validation accuracy.
    best = max(history, key=lambda r: (r["validation_accuracy"], -r["validation_loss"]))
    assert finetune.evaluate(model, tokenizer, validation, recipe.max_length)["accuracy"] == best["validation_accuracy"]


def test_finetune_is_deterministic_for_a_seed(tmp_path):
    parts = finetune.split_phrasebank(_phrasebank_slice())
    train, validation = parts["train"].head(128), parts["validation"].head(48)
    recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=2, lr=3e-3, head_lr=1e-2, max_length=48)
    runs = []
    for name in ("first", "second"):
        model, tokenizer = _tiny_model(tmp_path / name, train["sentence"].tolist(), seed=recipe.seed)
        history = finetune.train_classifier(model, tokenizer, train, validation, recipe, device="cpu",
                                            log=lambda line: None)
        runs.append(([(r["train_loss"], r["validation_loss"]) for r in history], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][name], runs[1][1][name]) for name in runs[0][1])


def test_ensure_model_keeps_an_existing_model(tiny_dir):
    assert finetune.ensure_model(tiny_dir) == tiny_dir


@pytest.mark.skipif(not (REAL_MODEL / "model.safetensors").is_file(), reason="no fine-tuned model in data/models")
def test_default_fast_mode_agrees_with_fp32_on_real_model(tmp_path):
    texts = _phrasebank_slice()["sentence"].iloc[::10].tolist()[:300]
    provider = TransformerSentiment(REAL_MODEL, tmp_path, 64, 64, "auto", None, "auto")
    provider.transform(_news([("AAA", SESSION_1, t) for t in texts]))
    model, tokenizer = load_classifier(REAL_MODEL)
    device = torch.device(provider.device_)
    fp32 = _Scorer(model, tokenizer, device, "fp32", 64).score(texts, 64)
    fast = _Scorer(model, tokenizer, device, provider.precision_, 64).score(texts, 64)
    columns = ["negative", "neutral", "positive"]
    agreement = (fp32[columns].to_numpy().argmax(1) == fast[columns].to_numpy().argmax(1)).mean()
    assert agreement >= 0.99


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
