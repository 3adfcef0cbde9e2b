"""Transformer sentiment: scores each news text with the fine-tuned classifier of ``signals/finetune.py``.

Per (ticker, session) it reports the mean of P(positive) − P(negative), the number of scored texts and their
dispersion. Per-text scores are cached by content hash (``engine.cache.TextScoreCache``) under a key made of the
model weights, the precision mode and device type actually used, the token limit, the batch shape and the
scoring version, so a second run scores nothing.

fp32 on the CPU gives the same scores on every CPU (AVX2 or AVX-512 kernels differ by about 1e-6 in a
probability; a test pins them). bf16, int8, ``auto`` and CUDA are faster, explicit choices that move scores.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

os.environ["HF_HUB_OFFLINE"] = "1"  # no code path here may reach the model hub

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from engine.cache import CACHE_STATS, TextScoreCache, file_sha256, fingerprint, text_hash, write_text_atomic
from engine.errors import ConfigError, DataError
from engine.schema import SIGNAL_INDEX, empty_signals
from engine.signal import SignalProvider

LABELS = ("negative", "neutral", "positive")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEVICES = ("auto", "cpu", "cuda")
MIN_AGREEMENT = 0.99  # "auto" keeps the fastest mode whose labels agree with fp32 on at least this share
CALIBRATION_FILE = "calibration_texts.json"  # held-out texts shipped with a model: "auto" calibrates on these only
_CHARS_PER_TOKEN_LIMIT = 100  # WordPiece maps a word over 100 characters to one [UNK]: no token spans more
_CACHE_VERSION = "transformer-scores-v2"  # v2: fixed-shape batches (batch-invariant scores)
WIDTH_STEP = 8  # texts are padded to a multiple of this many tokens
_PROGRESS_MIN_TEXTS = 2000


class MeanPoolingClassifier(PreTrainedModel):
    """A BERT-family encoder, masked mean pooling over its token states, dropout and one linear layer.

    The base all-MiniLM-L6-v2 was trained as a mean-pooling sentence encoder, so its mean-pooled output is a
    better start than the untrained [CLS] pooler. Saved by ``save_classifier``, loaded by ``load_classifier``.

    >>> logits = MeanPoolingClassifier(config)(input_ids=ids, attention_mask=mask).logits
    """

    config_class = PretrainedConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        try:
            self.encoder = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler (DistilBERT, ...) take no such argument
            self.encoder = AutoModel.from_config(config)
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("return_dict", None)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        # Pool in float32: a bf16 sum over 64 tokens loses the digits that separate close classes.
        pooled = (hidden.to(torch.float32) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled.to(hidden.dtype)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def save_classifier(model: PreTrainedModel, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors + config with id2label) and ``tokenizer`` into ``folder``; return it.

    >>> save_classifier(model, tokenizer, "data/models/sentiment-minilm")
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    return folder


def load_classifier(model_dir: str | os.PathLike) -> tuple[PreTrainedModel, Any]:
    """The (model in eval mode, tokenizer) saved in ``model_dir``: a ``MeanPoolingClassifier`` written by
    ``save_classifier``, or any local sequence-classification folder; raises ConfigError when it cannot load.

    >>> model, tokenizer = load_classifier("data/models/sentiment-minilm")
    """
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"signals.sentiment.model_dir: no model in {folder} "
            f"(train one: python -m signals.finetune --out {folder})"
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        if "MeanPoolingClassifier" in (config.architectures or []):
            model = MeanPoolingClassifier(config)
            model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"signals.sentiment.model_dir: cannot load the model in {folder}: {first_line}") from None
    return model.eval(), tokenizer


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"signals.sentiment.model_dir: no weights file (model.safetensors) in {folder}")


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # size and mtime only key the memo: a rewritten file is hashed again


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """SHA-256 of the model's weights file and config (memoised by size and mtime).

    >>> model_fingerprint("data/models/sentiment-minilm")[:12]
    """
    folder = Path(model_dir)
    parts = []
    for path in (_weights_file(folder), folder / "config.json"):
        stat = path.stat()
        parts.append(_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return fingerprint(*parts)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 matrix products natively (AVX512-BF16 or AMX), so bf16 beats fp32. Only
    ``precision=auto`` (an explicit request for the fastest mode) consults it; the default never does."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return torch.backends.mkldnn.is_available() and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def clean_text(value: Any) -> tuple[str | None, str]:
    """(text to score or None, status) for one raw news text; status is "ok", "empty" (None, NaN, blank) or
    "undecodable" (bytes that are not UTF-8 or lone surrogates: repaired with U+FFFD and still scored).

    >>> clean_text(b"caf\\xe9")  # ("caf\\ufffd", "undecodable")
    """
    status = "ok"
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None, "empty"
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            value, status = bytes(value).decode("utf-8", "replace"), "undecodable"
    elif not isinstance(value, str):
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Joins valid surrogate pairs back into one character and replaces the lone ones.
        value, status = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), "undecodable"
    if not value.strip():
        return None, "empty"
    return value, status


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Scorer:
    """One loaded model in one precision on one device, scoring lists of clean texts."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, device: torch.device, mode: str, max_length: int):
        self.tokenizer, self.device, self.mode = tokenizer, device, mode
        limits = [max_length, getattr(model.config, "max_position_embeddings", max_length)]
        if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
            limits.append(tokenizer.model_max_length)
        self.max_length = int(min(limits))
        names = {str(name).lower(): int(index) for index, name in model.config.id2label.items()}
        if "positive" not in names or "negative" not in names:
            raise ConfigError(f"signals.sentiment.model_dir: labels {sorted(names)} lack 'positive'/'negative'")
        self.label_index = names
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.model = _in_precision(model, mode, device)

    def encode(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids cut at ``max_length`` and whether each text was cut."""
        char_limit = self.max_length * _CHARS_PER_TOKEN_LIMIT
        clipped = [text[:char_limit] for text in texts]
        encoded = self.tokenizer(
            clipped, truncation=True, max_length=self.max_length, return_overflowing_tokens=True,
            return_attention_mask=False, return_token_type_ids=False,
        )
        mapping = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
        first = np.r_[True, mapping[1:] != mapping[:-1]] if len(mapping) else np.zeros(0, bool)
        ids = [encoded["input_ids"][row] for row in np.flatnonzero(first)]
        truncated = np.bincount(mapping, minlength=len(texts)) > 1
        truncated |= np.fromiter((len(text) > char_limit for text in texts), bool, len(texts))
        return ids, truncated

    def _batch(self, ids: list[list[int]], lengths: np.ndarray, rows: np.ndarray, width: int,
               batch_size: int) -> np.ndarray:
        """Probabilities of one batch, always of shape (batch_size, width): missing rows are filled with a
        one-token dummy. With the shape fixed, the kernels (and their rounding) are the same whatever the
        other texts in the batch, so a text's score never depends on which texts were scored with it."""
        input_ids = np.full((batch_size, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((batch_size, width), dtype=np.int64)
        mask[len(rows):, 0] = 1  # dummy rows: one token, so no row is all padding
        for slot, row in enumerate(rows):
            input_ids[slot, : lengths[row]] = ids[row]
            mask[slot, : lengths[row]] = 1
        autocast = self.device.type == "cuda" and self.mode == "bf16"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device, non_blocking=True),
                attention_mask=torch.from_numpy(mask).to(self.device, non_blocking=True),
            ).logits
        return torch.softmax(logits[: len(rows)].float(), dim=-1).cpu().numpy()

    def probabilities(self, ids: list[list[int]], batch_size: int, threads: int = 1,
                      progress: tqdm | None = None) -> np.ndarray:
        """Softmax class probabilities (rows in ``ids`` order): length-sorted batches with dynamic padding.

        On the CPU, ``threads`` batches run at once, each on one thread: for a model this small, two
        single-threaded workers beat one two-threaded pass (measured 1,000-1,150 vs 620-935 texts/s on 2 cores),
        as no thread ever waits for its partner at the end of each of the ~300 operations of a batch."""
        lengths = np.fromiter((len(row) for row in ids), np.int64, len(ids))
        # Texts are padded to a multiple of WIDTH_STEP tokens and batched with texts of the same width, longest
        # first (a memory problem shows at once): few wasted tokens, and a fixed set of batch shapes.
        widths = np.minimum(-(-lengths // WIDTH_STEP) * WIDTH_STEP, max(self.max_length, 1))
        order = np.lexsort((-lengths, -widths))
        batches = []
        for width in np.unique(widths)[::-1]:
            rows = order[widths[order] == width]
            batches += [(rows[start:start + batch_size], int(width)) for start in range(0, len(rows), batch_size)]
        result = np.zeros((len(ids), len(self.model.config.id2label)), dtype=np.float64)
        workers = threads if self.device.type == "cpu" else 1
        with _torch_threads(1 if workers > 1 else threads), ExitStack() as stack:
            if workers > 1:
                pool = stack.enter_context(ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)))
                probabilities = pool.map(lambda batch: self._batch(ids, lengths, *batch, batch_size), batches)
            else:
                probabilities = (self._batch(ids, lengths, *batch, batch_size) for batch in batches)
            for (rows, _), values in zip(batches, probabilities):
                result[rows] = values
                if progress is not None:
                    progress.update(len(rows))
        return result

    def score(self, texts: list[str], batch_size: int, threads: int = 1, progress: tqdm | None = None) -> pd.DataFrame:
        """Columns negative, neutral, positive (probabilities) and truncated, one row per text."""
        ids, truncated = self.encode(texts)
        probabilities = self.probabilities(ids, batch_size, threads, progress)
        negative = probabilities[:, self.label_index["negative"]]
        positive = probabilities[:, self.label_index["positive"]]
        if "neutral" in self.label_index:
            neutral = probabilities[:, self.label_index["neutral"]]
        else:
            neutral = 1 - negative - positive
        return pd.DataFrame({"negative": negative, "neutral": neutral, "positive": positive, "truncated": truncated})


_PREPARED: "weakref.WeakKeyDictionary[PreTrainedModel, dict[tuple[str, str], nn.Module]]" = weakref.WeakKeyDictionary()


def _in_precision(model: PreTrainedModel, mode: str, device: torch.device) -> nn.Module:
    """A copy of ``model`` on ``device`` in ``mode``, made once per model (later transforms reuse it)."""
    prepared = _PREPARED.setdefault(model, {})
    key = (mode, str(device))
    if key not in prepared:
        prepared[key] = _convert(model, mode, device)
    return prepared[key]


def _convert(model: PreTrainedModel, mode: str, device: torch.device) -> nn.Module:
    if mode == "int8":
        with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao, which is not installed
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8).eval()
    model = copy.deepcopy(model).to(device)
    if mode == "bf16":
        model = model.to(torch.bfloat16)
    return model.eval()


@lru_cache(maxsize=2)
def _load_cached(model_dir: str, model_fp: str) -> tuple[PreTrainedModel, Any]:
    return load_classifier(model_dir)


class TransformerSentiment(SignalProvider):
    """Mean P(positive) − P(negative) of the fine-tuned classifier per (ticker, session), with count and std.

    After ``transform``, ``stats_`` counts texts scored, cache hits, empty, undecodable and truncated texts and
    names the precision and device type that ran (``precision_`` / ``device_`` too).

    >>> provider = TransformerSentiment("data/models/sentiment-minilm", "data/cache", 32, 64, "fp32", None, "cpu")
    >>> provider.transform(aligned_news)
    """

    name = "transformer"
    columns = ("sentiment", "sentiment_count", "sentiment_dispersion")

    def __init__(
        self,
        model_dir: str | os.PathLike,
        cache_root: str | os.PathLike,
        batch_size: int,
        max_length: int,
        precision: str,
        threads: int | None,
        device: str,
    ):
        self.model_dir = model_dir
        self.cache_root = cache_root
        self.batch_size = batch_size
        self.max_length = max_length
        self.precision = precision
        self.threads = threads
        self.device = device

    def params(self) -> dict[str, Any]:
        """What changes the output: the model's weights, the precision and device type that will run (not the
        ones asked for: "auto" resolves first), the token limit, the batch shape and the scoring version."""
        device, mode, _ = self.resolve()
        return {"model": model_fingerprint(self.model_dir), "precision": mode, "device": device.type,
                "max_length": self.max_length, "batch_size": self.batch_size, "scoring": _CACHE_VERSION}

    # -- configuration checks and resolution -------------------------------------------------------------
    def _check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"signals.sentiment.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"signals.sentiment.device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("signals.sentiment.device: 'cuda' asked for but torch sees no CUDA device")
        for key in ("batch_size", "max_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"signals.sentiment.{key}: must be a positive integer, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"signals.sentiment.threads: must be null or a positive integer, got {self.threads!r}")

    def _resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _candidate_modes(self, device: torch.device) -> list[str]:
        """Modes to try, fastest first, for this device (measured: on an AMX CPU bf16 > int8 > fp32)."""
        if device.type == "cuda":
            return ["bf16", "fp32"]
        return (["bf16"] if cpu_has_fast_bf16() else []) + ["int8", "fp32"]

    def _calibration_texts(self) -> list[str]:
        """The texts shipped with the model (``calibration_texts.json``); never the dataset's own texts, which
        would make the choice depend on the sample and on which texts a run happened to see first."""
        path = Path(self.model_dir) / CALIBRATION_FILE
        if not path.is_file():
            raise ConfigError(
                f"signals.sentiment.precision: 'auto' calibrates on the texts shipped with the model, and "
                f"{path} does not exist; choose fp32 (the default), bf16 or int8")
        try:
            texts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"signals.sentiment.precision: {path}: not readable JSON ({error})") from None
        if not isinstance(texts, list) or not any(isinstance(text, str) and text.strip() for text in texts):
            raise ConfigError(f"signals.sentiment.precision: {path}: not a list holding non-empty texts")
        return [text for text in texts if isinstance(text, str)]

    def resolve(self) -> tuple[torch.device, str, dict[str, float]]:
        """(device, precision mode that will run, "auto"'s label agreements with fp32), worked out once.

        fp32, bf16 and int8 run as asked, on every machine (bf16 on a CPU without native bf16 is emulated:
        slower than fp32, same scores as elsewhere). "auto" picks the first candidate agreeing with fp32 on
        >= MIN_AGREEMENT of the model's calibration texts; the choice is stored beside the text cache under
        a key covering everything it depends on, so later runs reuse it without loading the model.

        >>> device, mode, agreement = provider.resolve()
        """
        if getattr(self, "_resolved", None) is not None:
            return self._resolved
        self._check()
        device = self._resolved_device()
        model_fp = model_fingerprint(self.model_dir)
        if self.precision == "int8" and device.type != "cpu":
            raise ConfigError("signals.sentiment.precision: 'int8' (dynamic quantisation) runs on the CPU only")
        if self.precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            warnings.warn("signals.sentiment.precision: this CPU has no native bf16, so bf16 is emulated and "
                          "slower than fp32")
        if self.precision != "auto":
            self._resolved = (device, self.precision, {})
            return self._resolved
        texts = self._calibration_texts()
        candidates = self._candidate_modes(device)
        key = fingerprint("precision-choice-v2", model_fp, texts, device.type, candidates, self.max_length,
                          self.batch_size, MIN_AGREEMENT, _CACHE_VERSION, torch.__version__)
        record = Path(self.cache_root) / "texts" / f"precision-{key[:20]}.json"
        if record.is_file():
            saved = json.loads(record.read_text(encoding="utf-8"))
            self._resolved = (device, saved["mode"], saved["agreement"])
            return self._resolved
        model, tokenizer = _load_cached(str(Path(self.model_dir).resolve()), model_fp)
        mode, agreement = choose_precision(model, tokenizer, device, self.max_length, texts, candidates,
                                           self.batch_size, self._threads())
        write_text_atomic(json.dumps({"mode": mode, "agreement": agreement, "candidates": candidates}, indent=1),
                          record)
        self._resolved = (device, mode, agreement)
        return self._resolved

    def _threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    # -- the work ------------------------------------------------------------------------------------------
    def transform(self, news: pd.DataFrame) -> pd.DataFrame:
        """Signals frame indexed by (ticker, session): sentiment (mean P(pos) − P(neg)), sentiment_count,
        sentiment_dispersion (population std, 0 for one text); empty texts are skipped and counted."""
        self._check()
        missing = [column for column in ("ticker", "text", "session") if column not in news.columns]
        if missing:
            raise DataError(f"transformer: the aligned news frame lacks column(s) {', '.join(missing)}")
        started = time.perf_counter()
        cleaned = [clean_text(value) for value in news["text"].tolist()]
        status = np.array([state for _, state in cleaned], dtype=object)
        scorable = np.array([text is not None for text, _ in cleaned], dtype=bool)
        texts = pd.Series([text for text, _ in cleaned if text is not None], dtype=object)
        hashes = text_hash(texts) if len(texts) else pd.Series([], dtype=object)
        first = ~hashes.duplicated().to_numpy()
        device, mode, self.agreement_ = self.resolve()
        self.precision_, self.device_ = mode, device.type
        self.stats_ = {
            "texts": int(len(news)), "unique_texts": int(first.sum()), "scored": 0, "cache_hits": 0,
            "empty": int((status == "empty").sum()), "undecodable": int((status == "undecodable").sum()),
            "truncated": 0, "precision": mode, "device": device.type,
        }
        items = news.loc[:, ["ticker", "session"]].reset_index(drop=True)[scorable]
        if len(texts):
            scores = self._scores(texts[first].tolist(), hashes[first].reset_index(drop=True))
            self.stats_["truncated"] = int(scores["truncated"].sum())
            per_item = scores.loc[hashes.to_numpy()]
            items = items.assign(score=(per_item["positive"] - per_item["negative"]).to_numpy())
        else:
            items = items.assign(score=np.zeros(len(items)))
        for key in ("scored", "cache_hits", "empty", "undecodable", "truncated"):
            CACHE_STATS[f"transformer.text_{key}"] += self.stats_[key]
        self.stats_["seconds"] = round(time.perf_counter() - started, 3)
        return _aggregate(items, list(self.columns))

    def _scores(self, texts: list[str], hashes: pd.Series) -> pd.DataFrame:
        """Scores of the unique ``texts`` (indexed by their hashes), from the cache or computed and cached."""
        device, mode, _ = self.resolve()
        model_fp = model_fingerprint(self.model_dir)
        # The batch size fixes the batch shapes, and so the last bits of every score: part of the key.
        cache = TextScoreCache(self.cache_root, text_cache_key(model_fp, mode, device.type, self.max_length,
                                                               self.batch_size))
        known = cache.lookup(hashes)
        missing = ~hashes.isin(known.index)
        self.stats_["cache_hits"] = int((~missing).sum())
        self.stats_["scored"] = int(missing.sum())
        if missing.any():
            model, tokenizer = _load_cached(str(Path(self.model_dir).resolve()), model_fp)
            threads = self._threads()
            new_texts = [text for text, miss in zip(texts, missing.to_numpy()) if miss]
            scorer = _Scorer(model, tokenizer, device, mode, self.max_length)
            batch_size = max(self.batch_size, 512) if device.type == "cuda" else self.batch_size
            quiet = not sys.stderr.isatty() or len(new_texts) < _PROGRESS_MIN_TEXTS
            with tqdm(total=len(new_texts), desc="sentiment", unit="text", disable=quiet) as progress:
                new = scorer.score(new_texts, batch_size, threads, progress)
            new.index = pd.Index(hashes[missing].to_numpy(), name="text_hash")
            cache.add(new)
            known = pd.concat([known, new]) if len(known) else new
        return known.loc[hashes.to_numpy()]


def text_cache_key(model_fp: str, mode: str, device_type: str, max_length: int, batch_size: int) -> str:
    """The per-text score cache's key: everything that changes a text's score.

    >>> TextScoreCache("data/cache", text_cache_key(model_fingerprint(folder), "fp32", "cpu", 64, 32))
    """
    return fingerprint(_CACHE_VERSION, model_fp, mode, device_type, max_length, batch_size)


def choose_precision(model, tokenizer, device: torch.device, max_length: int, texts: list[str],
                     candidates: list[str], batch_size: int, threads: int = 1) -> tuple[str, dict[str, float]]:
    """(first candidate mode whose labels agree with fp32 on >= MIN_AGREEMENT of ``texts``, agreements).

    >>> choose_precision(model, tokenizer, torch.device("cpu"), 64, texts, ["bf16", "int8", "fp32"], 64, 2)
    """
    texts = [text for text in (clean_text(t)[0] for t in texts) if text]
    agreement: dict[str, float] = {}
    if not texts:
        return "fp32", agreement
    reference = _Scorer(model, tokenizer, device, "fp32", max_length).score(texts, batch_size, threads)
    reference_labels = reference[["negative", "neutral", "positive"]].to_numpy().argmax(1)
    for mode in candidates:
        if mode == "fp32":
            return "fp32", agreement
        labels = _Scorer(model, tokenizer, device, mode, max_length).score(texts, batch_size, threads)
        mode_labels = labels[["negative", "neutral", "positive"]].to_numpy().argmax(1)
        agreement[mode] = float((mode_labels == reference_labels).mean())
        if agreement[mode] >= MIN_AGREEMENT:
            return mode, agreement
    return "fp32", agreement


def _aggregate(items: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    if items.empty:
        return empty_signals(columns)
    grouped = items.groupby(["ticker", "session"], sort=True)["score"]
    frame = pd.DataFrame({
        "sentiment": grouped.mean(),
        "sentiment_count": grouped.size().astype("float64"),
        "sentiment_dispersion": grouped.std(ddof=0),
    })
    frame.index = frame.index.set_names(SIGNAL_INDEX)
    return frame[columns].astype("float64")


# --- the provider as conf/signals/sentiment/transformer.yaml builds it (engine.providers) -------------------------
from typing import Literal  # noqa: E402 - kept with the factory they annotate

from engine.cache import project_path  # noqa: E402
from engine.config import PositiveInt, Training  # noqa: E402
from engine.signal import ProviderContext  # noqa: E402


class TransformerProvider(TransformerSentiment):
    """``TransformerSentiment`` as the engine builds it: each news item's P(positive) − P(negative) is also kept
    in the run's news.parquet (``item_scores``, read from the per-text score cache)."""

    item_columns = ("sentiment",)


def provider(model_dir: str, base_model: str | None, training: Training, batch_size: PositiveInt,
             max_length: PositiveInt, precision: Literal[PRECISIONS], threads: PositiveInt | None,
             device: Literal[DEVICES], context: ProviderContext) -> TransformerProvider:
    """The transformer sentiment provider of ``signals.sentiment`` (``_target_: signals.transformer.provider``):
    the model that ``model_dir``, ``base_model`` and ``training`` name, fine-tuned first when missing
    (``signals.finetune.ensure_model``), scoring with the cache under ``paths.cache``. The annotations are the
    parameters' schema.

    >>> provider("data/models/sentiment-minilm", None, {"recipe": "default", "precision": "fp32", "device": "cpu"},
    ...          32, 64, "fp32", None, "cpu", context)
    """
    from signals.finetune import ensure_model

    folder = ensure_model(project_path(model_dir), base=base_model, data_roots=list(context.data_roots),
                          recipe=training["recipe"], precision=training["precision"], device=training["device"])
    return TransformerProvider(folder, context.cache_root, batch_size, max_length, precision, threads, device)
