"""Domain-adaptive pretraining: continues the masked-language-model training of a BERT-family encoder on the
unlabelled news texts in the data folder (djia headlines, English stocknet tweets, retweets left out), with every
Financial PhraseBank sentence removed, before ``signals.finetune`` fine-tunes it (``--recipe dapt``).

Two phases: the MLM head's transform starts fresh (all-MiniLM-L6-v2 ships without one), so ``head_steps`` first
train the head alone on the frozen encoder (no backward through it: about half a full step's CPU time), then
``steps`` train encoder and head together. A fixed held-out set of corpus texts with fixed masks measures the
masked-LM loss after each block of steps: its fall in the second phase is the encoder's adaptation, the head
having settled before.

The adapted encoder is cached under ``<cache>/dapt/<key>``, the key a hash of everything that changes it (the
corpus texts, the base weights, every ``PretrainSettings`` field, the loop's version and the library versions), so
it is built once. Unsupervised, but not point-in-time: the encoder reads headlines and tweets from the whole period a
backtest later decides over (no labels, no prices), which is one reason it is not the default.

    python -m signals.finetune --recipe dapt      # builds (or reuses) the adapted encoder, then fine-tunes
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import torch
import transformers

from engine.cache import PROJECT_ROOT, file_sha256, fingerprint, write_folder_atomic
from engine.errors import ConfigError, DataError

PRETRAIN_VERSION = "dapt-v2"  # bump when the training loop changes what it produces
_CORPORA = ("djia", "stocknet")


@dataclass(frozen=True)
class PretrainSettings:
    """Masked-LM continued pretraining: ``head_steps`` batches training only the MLM head (the encoder, word
    embeddings included, frozen), then ``steps`` batches training everything, each of ``batch_size`` texts with
    ``mask_probability`` of the tokens chosen (BERT's 80% [MASK] / 10% random / 10% kept). ``lr`` is the
    encoder's; the MLM head's transform (initialised fresh) and output bias get ``head_lr`` in both phases. Each
    phase: linear warmup over ``warmup_fraction`` of its steps, then linear decay to 0. ``eval_texts`` corpus
    texts, held out of training, measure the masked-LM loss (fixed masks) after each block of steps."""

    steps: int
    head_steps: int = 0
    eval_texts: int = 512
    batch_size: int = 64
    max_length: int = 64
    lr: float = 1e-4
    head_lr: float = 3e-3
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    mask_probability: float = 0.15
    seed: int = 0
    precision: str = "fp32"
    threads: int = 2


# -- corpus -------------------------------------------------------------------------------------------------
def _normal(text: str) -> str:
    """Case- and whitespace-insensitive form used to match corpus texts against PhraseBank sentences."""
    return " ".join(str(text).split()).casefold()


def read_corpus(data_roots: Sequence[str | os.PathLike] | None = None) -> tuple[list[str], dict[str, int]]:
    """(texts, counts): djia's headlines and stocknet's English, non-retweet tweets, loaded through
    ``engine.datasets`` (catalogued files, hashes checked), whitespace-squeezed, each distinct text once.

    >>> texts, counts = read_corpus(["../shared/data"])
    """
    from omegaconf import OmegaConf

    from engine.datasets import load_dataset

    roots = [Path(root) for root in data_roots] if data_roots else _default_roots()
    texts: list[str] = []
    counts: dict[str, int] = {}
    for name in _CORPORA:
        cfg = OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / "data" / f"{name}.yaml"))
        cfg = cfg.get("data", cfg)  # stocknet.yaml is a global package (data: ...)
        cfg.update(start=None, end=None)
        if name == "stocknet":
            cfg.update(drop_retweets=True, languages=["en"])
        news = load_dataset(cfg, roots).news
        counts[f"{name}_items"] = len(news)
        texts.extend(" ".join(text.split()) for text in news["text"].astype(str))
    unique = list(dict.fromkeys(text for text in texts if text))
    counts["duplicates_dropped"] = len(texts) - len(unique)
    return unique, counts


def exclude_sentences(texts: Sequence[str], sentences: Sequence[str],
                      min_contained_words: int = 5) -> tuple[list[str], dict[str, int]]:
    """(texts without any that equals or contains a PhraseBank sentence, or is a run of at least
    ``min_contained_words`` words inside one (all case- and whitespace-insensitive), counts of each).

    >>> kept, counts = exclude_sentences(texts, phrasebank["sentence"])
    """
    import ahocorasick

    banned = {_normal(sentence) for sentence in sentences if _normal(sentence)}
    containing = ahocorasick.Automaton()
    for sentence in banned:
        containing.add_word(sentence, sentence)
    containing.make_automaton()
    normal = [_normal(text) for text in texts]
    long_texts = ahocorasick.Automaton()
    for index, text in enumerate(normal):
        if len(text.split()) >= min_contained_words:
            long_texts.add_word(text, index)
    inside: set[int] = set()
    if len(long_texts):
        long_texts.make_automaton()
        for sentence in banned:
            inside.update(index for _, index in long_texts.iter(sentence))
    kept, counts = [], {"equal_to_a_sentence": 0, "containing_a_sentence": 0, "inside_a_sentence": 0}
    for index, (text, form) in enumerate(zip(texts, normal)):
        if form in banned:
            counts["equal_to_a_sentence"] += 1
        elif next(containing.iter(form), None) is not None:
            counts["containing_a_sentence"] += 1
        elif index in inside:
            counts["inside_a_sentence"] += 1
        else:
            kept.append(text)
    return kept, counts


def check_held_out(texts: Sequence[str], held_out: Sequence[str]) -> None:
    """DataError when any ``held_out`` sentence (the PhraseBank test split) occurs in ``texts``."""
    leaked = {_normal(sentence) for sentence in held_out} & {_normal(text) for text in texts}
    if leaked:
        raise DataError(f"pretraining corpus: {len(leaked)} test sentence(s) in it, e.g. {sorted(leaked)[0]!r}")


def _default_roots() -> list[Path]:
    from signals.finetune import _default_data_roots

    return _default_data_roots()


# -- the adapted encoder ------------------------------------------------------------------------------------
def _base_digest(source: str) -> str:
    """Hash of a local base's weights and config; a hub id stands for itself."""
    folder = Path(source)
    files = [folder / name for name in ("model.safetensors", "pytorch_model.bin", "config.json")]
    present = [file_sha256(path) for path in files if path.is_file()]
    return fingerprint(*present) if present else source


def encoder_key(texts: Sequence[str], base: str | None, settings: PretrainSettings) -> str:
    """The cache key of the encoder that ``texts``, ``base`` and ``settings`` produce (hex, 16 digits).

    >>> encoder_key(texts, None, PretrainSettings(steps=300))
    """
    from signals.finetune import base_source

    corpus = fingerprint("\n".join(texts))
    return fingerprint(PRETRAIN_VERSION, corpus, _base_digest(base_source(base)), dataclasses.asdict(settings),
                       torch.__version__, transformers.__version__)[:16]


def ensure_adapted_encoder(base: str | None, settings: PretrainSettings,
                           data_roots: Sequence[str | os.PathLike] | None, cache_root: str | os.PathLike,
                           exclude: Sequence[str], held_out: Sequence[str], log=print) -> tuple[str, dict[str, Any]]:
    """(folder of the adapted encoder, its card): built under ``cache_root``/dapt/<key> from the corpus minus
    ``exclude`` (every PhraseBank sentence) when not cached; DataError if any ``held_out`` sentence is in it.

    >>> folder, card = ensure_adapted_encoder(None, PretrainSettings(steps=300), None, "data/cache", sentences, test)
    """
    if settings.steps < 1:
        raise ConfigError(f"pretrain_steps: must be a positive integer, got {settings.steps}")
    for name in ("head_steps", "eval_texts"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"pretrain {name}: must be 0 or a positive integer, got {getattr(settings, name)}")
    texts, counts = read_corpus(data_roots)
    texts, excluded = exclude_sentences(texts, exclude)
    check_held_out(texts, held_out)
    key = encoder_key(texts, base, settings)
    folder = Path(cache_root) / "dapt" / key
    card_path = folder / "pretrain_card.json"
    if card_path.is_file() and (folder / "model.safetensors").is_file():
        log(f"adapted encoder: reusing {folder}")
        return str(folder), json.loads(card_path.read_text()) | {"cached": True}
    log(f"adapted encoder: {settings.head_steps} head-only and {settings.steps} full masked-LM steps of "
        f"{settings.batch_size} texts on {len(texts):,} news texts ({settings.eval_texts} held out; {excluded} "
        f"PhraseBank overlaps left out) -> {folder}")
    started, cpu_started = time.perf_counter(), time.process_time()
    mlm, tokenizer, history = pretrain(base, texts, settings, log)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    card = {"key": key, "version": PRETRAIN_VERSION, "base": base, "settings": dataclasses.asdict(settings),
            "corpus": counts | {"texts": len(texts), "excluded": excluded,
                                "sha256": fingerprint("\n".join(texts))},
            "history": history, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "load_average": [round(value, 2) for value in os.getloadavg()], "torch": torch.__version__,
            "transformers": transformers.__version__}
    def fill(staging: Path) -> None:
        mlm.base_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "pretrain_card.json").write_text(json.dumps(card, indent=1))

    write_folder_atomic(fill, folder, lambda found: (found / "pretrain_card.json").is_file())
    log(f"adapted encoder saved in {folder} ({seconds:.0f} s)")
    return str(folder), card | {"cached": False}


def masked_lm(base: str | None) -> tuple[transformers.BertForMaskedLM, Any]:
    """(``BertForMaskedLM`` holding the ``base`` encoder's weights, tokenizer). all-MiniLM-L6-v2 ships without an
    MLM head: its transform (dense + LayerNorm) starts fresh, its decoder is tied to the word embeddings (the
    same tensor) and its output bias starts at zero.

    >>> mlm, tokenizer = masked_lm(None)
    """
    from signals.finetune import load_encoder

    source, encoder, tokenizer = load_encoder(base)
    if encoder.config.model_type != "bert":
        raise ConfigError(f"base model {source!r}: domain-adaptive pretraining needs a BERT encoder, "
                          f"got model_type {encoder.config.model_type!r}")
    config = encoder.config
    config.tie_word_embeddings = True
    mlm = transformers.BertForMaskedLM(config)
    missing, _unused = mlm.bert.load_state_dict(encoder.state_dict(), strict=False)  # unused: the pooler
    if missing:
        raise ConfigError(f"base model {source!r}: encoder weights missing for {', '.join(missing[:3])}")
    mlm.tie_weights()
    if mlm.cls.predictions.decoder.weight is not mlm.bert.embeddings.word_embeddings.weight:
        raise RuntimeError("BertForMaskedLM: decoder not tied to the word embeddings")
    return mlm, tokenizer


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, tokenizer: Any, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for masked-LM: ``probability`` of the non-special tokens chosen; of those 80% become
    [MASK], 10% a random token, 10% stay; labels are -100 everywhere else."""
    labels = ids.clone()
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = ids.clone()
    draw = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    random_slots = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[random_slots] = torch.randint(len(tokenizer), ids.shape, generator=generator)[random_slots]
    return inputs, labels


def pretrain(base: str | None, texts: Sequence[str], settings: PretrainSettings,
             log=print) -> tuple[transformers.BertForMaskedLM, Any, list[dict[str, float]]]:
    """(masked LM after ``settings.head_steps`` head-only and ``settings.steps`` full steps on ``texts``,
    tokenizer, loss per block of steps: phase, step, training loss, held-out loss, seconds). Seeded; the
    ``eval_texts`` held-out texts drawn first, the others in a seeded order (once each before any repeats),
    length-sorted within chunks of 8 batches so padding stays small; the decoder runs only on the chosen positions.

    >>> mlm, tokenizer, history = pretrain(None, texts, PretrainSettings(steps=1000, head_steps=300))
    """
    if settings.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision: {settings.precision!r} is not one of fp32, bf16")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _pretrain(base, list(texts), settings, log)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(base, texts, settings, log):
    from signals.finetune import pad_rows

    torch.manual_seed(settings.seed)
    mlm, tokenizer = masked_lm(base)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    # Held-out texts first (a seeded draw, never trained on), then the training order over the rest.
    held = rng.permutation(len(texts))[: settings.eval_texts] if settings.eval_texts else np.array([], dtype=int)
    pool = np.setdiff1d(np.arange(len(texts)), held) if len(held) else np.arange(len(texts))
    if len(pool) == 0:
        raise DataError(f"pretraining corpus: no text left to train on ({len(texts)} texts, {len(held)} held out)")
    total_steps = settings.head_steps + settings.steps
    needed = total_steps * settings.batch_size
    order = np.concatenate([pool[rng.permutation(len(pool))] for _ in range(math.ceil(needed / len(pool)))])
    order = order[:needed]
    ids = tokenizer([texts[i] for i in order], truncation=True, max_length=settings.max_length,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    lengths = np.array([len(row) for row in ids])
    batches = []
    chunk = settings.batch_size * 8
    for start in range(0, needed, chunk):
        block = np.arange(start, min(start + chunk, needed))
        block = block[np.argsort(lengths[block], kind="stable")]
        group = [block[i:i + settings.batch_size] for i in range(0, len(block), settings.batch_size)]
        batches.extend(group[i] for i in rng.permutation(len(group)))
    pad_id = tokenizer.pad_token_id or 0
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    evaluation = _held_out_batches([texts[i] for i in held], tokenizer, settings, pad_id, special_ids)

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids, mask = pad_rows([ids[row] for row in rows], pad_id)
        special = torch.isin(input_ids, special_ids) | (mask == 0)
        inputs, labels = mask_tokens(input_ids, special, tokenizer, settings.mask_probability, generator)
        return inputs, mask, labels, labels != -100

    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    head = [p for n, p in mlm.named_parameters() if n.startswith("cls.")]
    head_ids = {id(p) for p in head}
    encoder = [p for p in mlm.parameters() if id(p) not in head_ids]  # the tied decoder weight: the embeddings
    use_bf16 = settings.precision == "bf16"
    mlm.train()
    phases = [("head", settings.head_steps), ("full", settings.steps)]
    done = 0
    for phase, steps in phases:
        if steps == 0:
            continue
        head_only = phase == "head"
        for parameter in encoder:
            parameter.requires_grad_(not head_only)
        trained = head if head_only else list(mlm.parameters())
        optimizer = torch.optim.AdamW(_groups(trained, head_ids, settings))
        warmup = max(1, round(settings.warmup_fraction * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step, warmup=warmup, steps=steps:
            min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
        block_steps = max(1, min(50, steps // 6 or 1))
        running, block_started = 0.0, 0
        for step, rows in enumerate(batches[done:done + steps], start=1):
            inputs, mask, labels, chosen = tensors(rows)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                # The frozen encoder runs without autograd in the head phase: no graph, no backward through it.
                with torch.set_grad_enabled(not head_only):
                    hidden = mlm.bert(input_ids=inputs, attention_mask=mask).last_hidden_state
                logits = mlm.cls(hidden[chosen]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            schedule.step()
            running += loss.item()
            if step % block_steps == 0 or step == steps:
                record = {"phase": phase, "step": done + step, "mlm_loss": round(running / (step - block_started), 4)}
                if evaluation:
                    record["held_out_mlm_loss"] = round(_held_out_loss(mlm, evaluation, use_bf16), 4)
                record["seconds"] = round(time.perf_counter() - started, 1)
                history.append(record)
                held_text = (f", held-out {record['held_out_mlm_loss']:.4f}" if evaluation else "")
                log(f"masked-LM {phase} step {done + step}/{total_steps}: loss {record['mlm_loss']:.4f}"
                    f"{held_text} ({record['seconds']:.0f} s)")
                running, block_started = 0.0, step
        done += steps
    for parameter in encoder:
        parameter.requires_grad_(True)
    mlm.eval()
    return mlm, tokenizer, history


def _groups(parameters: list[torch.nn.Parameter], head_ids: set[int],
            settings: PretrainSettings) -> list[dict[str, Any]]:
    """AdamW groups: ``head_lr`` for the MLM head, ``lr`` for the encoder, no weight decay on 1-d tensors."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for parameter in parameters:
        lr = settings.head_lr if id(parameter) in head_ids else settings.lr
        groups.setdefault((lr, 0.0 if parameter.ndim == 1 else settings.weight_decay), []).append(parameter)
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]


def _held_out_batches(texts: list[str], tokenizer: Any, settings: PretrainSettings, pad_id: int,
                      special_ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The held-out texts as batches masked once, by their own generator (seed + 1), so every measurement of
    the loss scores the same masked tokens and the training draws are unchanged by it."""
    from signals.finetune import pad_rows

    if not texts:
        return []
    generator = torch.Generator().manual_seed(settings.seed + 1)
    ids = tokenizer(texts, truncation=True, max_length=settings.max_length,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    order = np.argsort([len(row) for row in ids], kind="stable")
    batches = []
    for start in range(0, len(order), settings.batch_size):
        input_ids, mask = pad_rows([ids[i] for i in order[start:start + settings.batch_size]], pad_id)
        special = torch.isin(input_ids, special_ids) | (mask == 0)
        inputs, labels = mask_tokens(input_ids, special, tokenizer, settings.mask_probability, generator)
        batches.append((inputs, mask, labels))
    return batches


def _held_out_loss(mlm: transformers.BertForMaskedLM, batches: list[tuple[torch.Tensor, ...]],
                   use_bf16: bool) -> float:
    """Mean masked-LM cross-entropy per masked token over the held-out ``batches`` (eval mode: no dropout)."""
    mlm.eval()
    total, count = 0.0, 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
        for inputs, mask, labels in batches:
            chosen = labels != -100
            hidden = mlm.bert(input_ids=inputs, attention_mask=mask).last_hidden_state
            logits = mlm.cls(hidden[chosen]).float()
            total += float(torch.nn.functional.cross_entropy(logits, labels[chosen], reduction="sum"))
            count += int(chosen.sum())
    mlm.train()
    return total / max(1, count)
