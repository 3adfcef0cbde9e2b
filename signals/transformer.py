"""Transformer sentiment: scores each news text with the fine-tuned classifier of ``signals/finetune.py``, or
with any local Hugging Face sequence-classification folder whose labels map by name (positive/bullish,
negative/bearish, neutral; a 2-class model has P(neutral) = 0).

Per (ticker, session) it reports the mean of P(positive) − P(negative), the number of scored texts and their
dispersion. Per-text scores are cached by content hash (``engine.cache.TextScoreCache``) under a key made of the
model's weights and config (architecture, labels), the precision mode and device type actually used, the token
limit, the batch shape and the scoring version, so a second run scores nothing.

Model folders newsbt writes ship their model code (``signals/modeling_newsbt.py``) so stock transformers loads
them with ``trust_remote_code=True`` and refuses them without it (never a random head).

fp32 on the CPU gives the same scores on every CPU (AVX2 or AVX-512 kernels differ by about 1e-6 in a
probability; a test pins them). bf16, ``auto`` and CUDA are faster, explicit choices that move scores.
"""
from __future__ import annotations

import copy
import hashlib
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
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from engine.cache import CACHE_STATS, TextScoreCache, file_sha256, fingerprint, text_hash, write_text_atomic
from engine.errors import ConfigError, DataError, NewsbtError
from engine.prefit import available_cores
from engine.schema import SIGNAL_INDEX, empty_signals
from engine.signal import SignalProvider
from signals import modeling_newsbt
from signals.modeling_newsbt import MODEL_TYPE, WRAPPER_KEYS, MeanPoolingClassifier, MeanPoolingConfig

LABELS = ("negative", "neutral", "positive")
# int8 (dynamic per-channel quantisation of the linear layers) is no option: 2.6x fp32's speed but only 88.6% of
# fp32's labels on 1,000 headlines (target 99%); bench/sentiment.py still measures it (BENCH_ONLY_MODES).
PRECISIONS = ("auto", "fp32", "bf16")
BENCH_ONLY_MODES = ("int8",)
DEVICES = ("auto", "cpu", "cuda")
MIN_AGREEMENT = 0.99  # "auto" keeps the fastest mode whose labels agree with fp32 on at least this share
CALIBRATION_FILE = "calibration_texts.json"  # held-out texts shipped with a model: "auto" calibrates on these only
_CHARS_PER_TOKEN_LIMIT = 100  # WordPiece maps a word over 100 characters to one [UNK]: no token spans more
_CACHE_VERSION = "transformer-scores-v2"  # v2: fixed-shape batches (batch-invariant scores)
WIDTH_STEP = 8  # texts are padded to a multiple of this many tokens
_PROGRESS_MIN_TEXTS = 2000


# -- model folders ---------------------------------------------------------------------------------------------
# newsbt's format: config.json is the encoder's own config (e.g. BERT's) with model_type MODEL_TYPE, the
# encoder's family in encoder_model_type and an auto_map naming MODELING_FILE, a copy of signals/modeling_newsbt.py
# shipped in the folder. Stock transformers then loads the same model with trust_remote_code=True and refuses the
# folder without it. The previous format (before 2026-11-29) had the encoder's model_type and would have loaded
# as a stock BERT with a random head; newsbt still reads it, and ``upgrade_folder`` rewrites it.
MODELING_FILE = "modeling_newsbt.py"
_AUTO_MAP = {
    "AutoConfig": "modeling_newsbt.MeanPoolingConfig",
    "AutoModelForSequenceClassification": "modeling_newsbt.MeanPoolingClassifier",
}
# What a label name means, any case: a 2-class model has no neutral (its P(neutral) is 0).
_LABEL_MEANINGS = {"negative": "negative", "bearish": "negative", "neutral": "neutral",
                   "positive": "positive", "bullish": "positive"}


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"signals.sentiment.model_dir: no model in {folder} "
            f"(train one: python -m signals.finetune --out {folder})"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"signals.sentiment.model_dir: {path}: not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"signals.sentiment.model_dir: {path}: not a JSON object")
    return config


def _is_previous_format(config: dict[str, Any]) -> bool:
    return config.get("model_type") != MODEL_TYPE and "MeanPoolingClassifier" in (config.get("architectures") or [])


def _encoder_form(config: dict[str, Any]) -> dict[str, Any]:
    """The config as the previous format wrote it: newsbt's format without its remote-code entries."""
    if config.get("model_type") != MODEL_TYPE:
        return config
    encoder = {key: value for key, value in config.items() if key not in WRAPPER_KEYS}
    encoder["model_type"] = config.get("encoder_model_type")
    return encoder


def _remote_code_form(encoder: dict[str, Any]) -> dict[str, Any]:
    """newsbt's config.json for a mean-pooling model whose encoder config (as a dict) is ``encoder``."""
    return {**encoder, "architectures": ["MeanPoolingClassifier"], "model_type": MODEL_TYPE,
            "encoder_model_type": encoder["model_type"], "auto_map": dict(_AUTO_MAP)}


def _json_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"  # transformers' own config.json layout


def _write_remote_code(folder: Path, encoder: dict[str, Any]) -> None:
    """Ship the modeling code, then the config naming it (each written atomically, in that order, so config.json
    never names a file that is not there)."""
    write_text_atomic(Path(modeling_newsbt.__file__).read_text(encoding="utf-8"), folder / MODELING_FILE)
    write_text_atomic(_json_text(_remote_code_form(encoder)), folder / "config.json")


def save_classifier(model: PreTrainedModel, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors + config with id2label) and ``tokenizer`` into ``folder``; return it. A
    ``MeanPoolingClassifier`` is saved with its code (``modeling_newsbt.py``, named by ``auto_map``), so
    ``pipeline("text-classification", model=folder, trust_remote_code=True)`` gives newsbt's probabilities; any
    other transformers model is saved by its own ``save_pretrained``.

    >>> save_classifier(model, tokenizer, "data/models/sentiment-minilm")
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MeanPoolingClassifier):
        config = model.config
        encoder_config = config.encoder_config() if isinstance(config, MeanPoolingConfig) else config
        encoder = json.loads(encoder_config.to_json_string())
        state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        _write_remote_code(folder, encoder)
    elif isinstance(model, PreTrainedModel):
        model.save_pretrained(folder)
    else:
        raise TypeError(f"save_classifier: a transformers model is needed (merge adapters first), got {type(model)}")
    tokenizer.save_pretrained(folder)
    return folder


def upgrade_folder(model_dir: str | os.PathLike) -> bool:
    """Rewrite a folder of newsbt's previous format (config with the encoder's model_type) into the current
    one: ships ``modeling_newsbt.py`` and rewrites config.json, each atomically; weights, tokenizer, scores and
    ``model_fingerprint`` are unchanged. True when it rewrote the folder, False when there was nothing to do.

    >>> upgrade_folder("data/models/sentiment-minilm")
    """
    folder = Path(model_dir)
    config = _read_config(folder)
    if not _is_previous_format(config):
        return False
    _write_remote_code(folder, config)
    return True


def _upgrade_or_explain(folder: Path) -> None:
    """Upgrade a previous-format folder that signals.finetune wrote (its model card says so); for any other,
    or one that cannot be written, warn with the command that upgrades it."""
    if not _is_previous_format(_read_config(folder)):
        return
    reason = "it has no model_card.json, so newsbt did not write it"
    if (folder / "model_card.json").is_file():
        try:
            upgrade_folder(folder)
            print(f"newsbt: {folder}: added {MODELING_FILE} and auto_map to config.json so stock transformers "
                  f"loads it (trust_remote_code=True); weights and scores unchanged", file=sys.stderr)
            return
        except OSError as error:
            reason = f"it cannot be written ({error.strerror or error})"
    warnings.warn(f"signals.sentiment.model_dir: {folder} is in newsbt's previous format, which stock "
                  f"transformers loads with a random head; not upgraded as {reason}. Upgrade it with: "
                  f"python -m signals.transformer --upgrade {folder}")


def sentiment_labels(id2label: dict[Any, str], where: Any = "the model") -> dict[str, int]:
    """Output index of "negative", "positive" and (3 classes) "neutral", mapped from the label names: positive
    or bullish, negative or bearish, neutral, in any case. ConfigError listing the labels when they do not map.

    >>> sentiment_labels({0: "Bearish", 1: "BULLISH"})  # {"negative": 0, "positive": 1}
    """
    labels = {int(index): str(name) for index, name in (id2label or {}).items()}
    meanings = [_LABEL_MEANINGS.get(name.strip().lower()) for _, name in sorted(labels.items())]
    mapped = {meaning: index for meaning, (index, _) in zip(meanings, sorted(labels.items()))}
    if None in meanings or len(mapped) != len(labels) or not {"negative", "positive"} <= set(mapped):
        listed = ", ".join(f"{index}={name!r}" for index, name in sorted(labels.items()))
        raise ConfigError(
            f"signals.sentiment.model_dir: {where}: cannot map the labels ({listed}) to negative/neutral/positive "
            f"(accepted, any case: positive or bullish, negative or bearish, and neutral for a 3-class model)")
    return mapped


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _head_mismatch(folder: Path, missing: list[str], unexpected: list[str]) -> ConfigError:
    parts = [f"{label} {', '.join(sorted(keys)[:3])}{' ...' if len(keys) > 3 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    return ConfigError(f"signals.sentiment.model_dir: {folder}: its weights do not match a sequence classifier "
                       f"({'; '.join(parts)}); refusing to start from random weights")


def load_classifier(model_dir: str | os.PathLike) -> tuple[PreTrainedModel, Any]:
    """The (model in eval mode, tokenizer) saved in ``model_dir``: a ``MeanPoolingClassifier`` written by
    ``save_classifier`` (either format), or any local sequence-classification folder of a standard transformers
    architecture whose labels ``sentiment_labels`` maps. Never runs code from the folder, never starts from a
    random head: weights that do not cover the model (missing or unexpected keys) are a ConfigError.

    >>> model, tokenizer = load_classifier("data/models/sentiment-minilm")
    """
    folder = Path(model_dir)
    raw = _read_config(folder)
    sentiment_labels(raw.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"}, folder)
    try:
        if raw.get("model_type") == MODEL_TYPE or _is_previous_format(raw):
            config = MeanPoolingConfig.from_dict(_remote_code_form(_encoder_form(raw)))
            model = MeanPoolingClassifier(config)
            result = model.load_state_dict(load_file(str(_weights_file(folder))), strict=False)
            missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
            tokenizer_config = config.encoder_config()
        else:
            if "auto_map" in raw or raw.get("model_type") not in CONFIG_MAPPING:
                raise ConfigError(
                    f"signals.sentiment.model_dir: {folder}: model_type {raw.get('model_type')!r} needs code "
                    f"shipped in the folder, and newsbt runs none: use a standard transformers architecture")
            model, info = AutoModelForSequenceClassification.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, output_loading_info=True)
            missing, unexpected = list(info.get("missing_keys", ())), list(info.get("unexpected_keys", ()))
            missing += [str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys", ())]
            tokenizer_config = model.config
        if missing or unexpected:
            raise _head_mismatch(folder, missing, unexpected)
        # Given the config, AutoTokenizer does not read config.json itself (whose auto_map would make it ask, on a
        # terminal, whether to run the folder's code).
        tokenizer = AutoTokenizer.from_pretrained(folder, config=tokenizer_config, local_files_only=True,
                                                  trust_remote_code=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ConfigError(
            f"signals.sentiment.model_dir: cannot load the model in {folder}: {_first_line(error)}") from None
    return model.eval(), tokenizer


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"signals.sentiment.model_dir: no weights file (model.safetensors) in {folder}")


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # size and mtime only key the memo: a rewritten file is hashed again


# The vocabulary files a Hugging Face tokenizer reads from a folder without a tokenizer.json.
TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "added_tokens.json", "special_tokens_map.json")
# tokenizer_config.json entries that change the ids of a text (not where or how it was loaded).
TOKENIZER_SETTINGS = ("tokenizer_class", "do_lower_case", "strip_accents", "tokenize_chinese_chars",
                      "do_basic_tokenize", "never_split", "add_prefix_space", "unk_token", "cls_token", "sep_token",
                      "pad_token", "mask_token", "bos_token", "eos_token", "added_tokens_decoder",
                      "extra_special_tokens", "additional_special_tokens")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """SHA-256 of the model's weights file (memoised by size and mtime), of its config's content (the
    architecture, the encoder's settings and the labels) and of its tokenizer files: all of them change scores. The entries that only point
    stock transformers at the shipped code are left out (newsbt runs its own copy of that code), so upgrading a
    folder to the remote-code format keeps its fingerprint and its cached scores.

    >>> model_fingerprint("data/models/sentiment-minilm")[:12]
    """
    folder = Path(model_dir)
    weights = _weights_file(folder)
    stat = weights.stat()
    weights_sha = _file_sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    # The previous format's config.json bytes exactly: that format's fingerprints (and caches) still hold.
    config_sha = hashlib.sha256(_json_text(_encoder_form(_read_config(folder))).encode("utf-8")).hexdigest()
    # The tokenizer turns text into the ids the weights read: another vocabulary or normaliser changes scores.
    return fingerprint(weights_sha, config_sha, tokenizer_identity(folder))


def tokenizer_identity(folder: Path) -> dict[str, Any]:
    """What decides the ids a folder's tokenizer gives a text: the SHA-256 of its definition files (a fast
    tokenizer's ``tokenizer.json`` holds the whole pipeline; without one, the vocabulary files) and the settings of
    ``tokenizer_config.json`` that change the encoding. Load-time entries (``local_files_only``, paths) are left
    out, so the same tokenizer saved again keeps its identity.

    >>> tokenizer_identity(Path("data/models/sentiment-minilm"))["files"]
    """
    names = ("tokenizer.json",) if (folder / "tokenizer.json").is_file() else TOKENIZER_FILES
    files = {name: file_sha256(folder / name) for name in names if (folder / name).is_file()}
    settings: dict[str, Any] = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"signals.sentiment.model_dir: {config_file}: not valid JSON ({error})") from None
        settings = {key: config[key] for key in TOKENIZER_SETTINGS if key in config}
    return {"files": files, "settings": settings}


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
        self.label_index = sentiment_labels(model.config.id2label)
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
        else:  # a 2-class model has no neutral class
            neutral = np.zeros(len(probabilities))
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
        """Modes to try, fastest first, for this device."""
        if device.type == "cuda":
            return ["bf16", "fp32"]
        return (["bf16"] if cpu_has_fast_bf16() else []) + ["fp32"]

    def _calibration_texts(self) -> list[str]:
        """The texts shipped with the model (``calibration_texts.json``); never the dataset's own texts, which
        would make the choice depend on the sample and on which texts a run happened to see first."""
        path = Path(self.model_dir) / CALIBRATION_FILE
        if not path.is_file():
            raise ConfigError(
                f"signals.sentiment.precision: 'auto' calibrates on the texts shipped with the model, and "
                f"{path} does not exist; choose fp32 (the default) or bf16")
        try:
            texts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"signals.sentiment.precision: {path}: not readable JSON ({error})") from None
        if not isinstance(texts, list) or not any(isinstance(text, str) and text.strip() for text in texts):
            raise ConfigError(f"signals.sentiment.precision: {path}: not a list holding non-empty texts")
        return [text for text in texts if isinstance(text, str)]

    def resolve(self) -> tuple[torch.device, str, dict[str, float]]:
        """(device, precision mode that will run, "auto"'s label agreements with fp32), worked out once.

        fp32 and bf16 run as asked, on every machine (bf16 on a CPU without native bf16 is emulated:
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
        return self.threads or available_cores()

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

    def cached_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """A run that read these signals from the cache scored no text and spent no time scoring: every distinct
        text's score came from the cache (the data's counts, precision and device stay those of the scores)."""
        return {**stats, "scored": 0, "cache_hits": int(stats.get("unique_texts", 0)), "seconds": 0.0}

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

    >>> choose_precision(model, tokenizer, torch.device("cpu"), 64, texts, ["bf16", "fp32"], 64, 2)
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

    >>> provider("data/models/sentiment-minilm", None, {"recipe": "default", "method": "full", "precision": "fp32",
    ...          "device": "cpu"},
    ...          32, 64, "fp32", None, "cpu", context)
    """
    from signals.finetune import ensure_model

    folder = ensure_model(project_path(model_dir), base=base_model, data_roots=list(context.data_roots),
                          recipe=training["recipe"], precision=training["precision"], device=training["device"],
                          method=training["method"])
    _upgrade_or_explain(Path(folder))
    return TransformerProvider(folder, context.cache_root, batch_size, max_length, precision, threads, device)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m signals.transformer --upgrade FOLDER`` rewrites a model folder of newsbt's
    previous format so stock transformers loads it (``upgrade_folder``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m signals.transformer", description=main.__doc__.split("``")[0])
    parser.add_argument("--upgrade", metavar="FOLDER", required=True,
                        help="model folder written by an older newsbt (config.json model_type of the encoder)")
    args = parser.parse_args(argv)
    try:
        folder = Path(args.upgrade)
        if upgrade_folder(folder):
            print(f"{folder}: added {MODELING_FILE} and auto_map to config.json (weights unchanged); load it with "
                  f"pipeline(\"text-classification\", model=\"{folder}\", trust_remote_code=True)")
        else:
            print(f"{folder}: nothing to upgrade (not a mean-pooling model of newsbt's previous format)")
    except OSError as error:
        print(f"newsbt: error: --upgrade {args.upgrade}: cannot write ({_first_line(error)})", file=sys.stderr)
        return 2
    except NewsbtError as error:
        print(f"newsbt: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
