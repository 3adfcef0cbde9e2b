"""How far the fine-tuned sentiment models are from the sentiment issue's targets (test accuracy >= 0.86, positive
recall >= 0.85), and whether combining the models already trained, or moving their decision rule, would close
the gap. For the model folders given (default: every folder under data/models with a model card of split seed
0), on the validation split (and with --test on the test split, which decides nothing):

- each model: accuracy, macro-F1, positive recall;
- their ensemble: the mean of their log-probabilities (N models' compute and size);
- their uniform soup: the mean of their weights, one model's compute, for each group of folders that started
  from one encoder (same base, no or the same pretraining) and so share an architecture;
- post-hoc logit adjustment of each model (Menon et al. 2021): log-probabilities minus tau * log(prior), the
  prior the training split's label shares, tau 0, 0.5, 1 (1: the rule that maximises balanced accuracy for
  calibrated probabilities): how much positive recall a decision rule buys, and its price in accuracy.

    .venv/bin/python bench/sentiment_ceiling.py [--models DIR ...] [--test]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score

from engine.cache import PROJECT_ROOT
from engine.errors import ConfigError, NewsbtError, OneLineParser
from signals import finetune
from signals.transformer import LABELS, load_classifier

TAUS = (0.0, 0.5, 1.0)


def _figures(truth: np.ndarray, predicted: np.ndarray) -> str:
    positive = LABELS.index("positive")
    return (f"accuracy {accuracy_score(truth, predicted):.4f}  macro-F1 "
            f"{f1_score(truth, predicted, average='macro', labels=list(range(len(LABELS)))):.4f}  positive recall "
            f"{recall_score(truth, predicted, labels=[positive], average='macro', zero_division=0):.4f}")


def _max_length(card: dict) -> int:
    return int((finetune.card_identity(card).get("hyperparameters") or {}).get("max_length", 64))


def _group(card: dict) -> str:
    """Folders that share a group started from one encoder and read texts alike: the same base, the same adapted
    encoder (the pretraining's cache key; cards of an earlier newsbt keep it only there, not in their identity)
    and the same max_length."""
    return json.dumps([finetune.card_identity(card).get("base"), (card.get("pretraining") or {}).get("key"),
                       _max_length(card)])


def uniform_soup(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of ``states`` (state dicts of one architecture), in fp32 then cast back; tensors that
    are not floating point (buffers such as position ids) are the first state's."""
    return {key: torch.stack([state[key].float() for state in states]).mean(0).to(tensor.dtype)
            if tensor.is_floating_point() else tensor for key, tensor in states[0].items()}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="bench/sentiment_ceiling.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", type=Path, default=None)
    parser.add_argument("--test", action="store_true", help="also score the test split (decides nothing)")
    args = parser.parse_args(argv)
    try:
        folders = args.models or sorted(p.parent for p in (PROJECT_ROOT / "data" / "models").glob("*/model_card.json"))
        cards = {folder: _read_card(folder) for folder in folders}
        other_split = [f for f in folders if finetune.card_identity(cards[f]).get("split_seed") != finetune.SPLIT_SEED]
        folders = [f for f in folders if f not in other_split]
        if other_split:
            print(f"left out {len(other_split)} models trained on another split (their validation and test sentences "
                  f"differ): {', '.join(f.name for f in other_split)}")
        if not folders:
            raise ConfigError(f"--models: no model folder with a model card of split seed {finetune.SPLIT_SEED}")
        return _report(folders, cards, args.test)
    except NewsbtError as error:
        print(f"newsbt: error: {error}", file=sys.stderr)
        return 2


def _read_card(folder: Path) -> dict:
    try:
        card = json.loads((folder / "model_card.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"--models: {folder}: no readable model_card.json ({type(error).__name__})") from None
    if not isinstance(card, dict):
        raise ConfigError(f"--models: {folder}/model_card.json: not a JSON object")
    return card


def _report(folders: list[Path], cards: dict[Path, dict], test: bool) -> int:
    torch.set_num_threads(finetune.TRAIN_THREADS)
    source = finetune.find_phrasebank()
    unique, _ = finetune.dedupe_phrasebank(finetune.read_phrasebank(source / finetune.TRAIN_FILE))
    parts = finetune.split_phrasebank(unique)
    splits = ["validation"] + (["test"] if test else [])
    truth = {name: np.array([LABELS.index(label) for label in parts[name]["label"]]) for name in splits}
    prior = np.bincount([LABELS.index(label) for label in parts["train"]["label"]], minlength=len(LABELS))
    log_prior = np.log(prior / prior.sum())
    cpu = finetune.machine()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, avx512_bf16 {cpu['avx512_bf16']}")
    print(f"{len(folders)} models; validation {len(parts['validation'])} sentences"
          + (f", test {len(parts['test'])}" if test else "") + f"; training prior {np.round(prior / prior.sum(), 4)}")
    started = time.process_time()
    log_p: dict[str, dict[Path, np.ndarray]] = {name: {} for name in splits}
    states: dict[str, list[tuple[Path, dict]]] = {}
    for folder in folders:
        model, tokenizer = load_classifier(folder)
        length = _max_length(cards[folder])
        for name in splits:
            logits = finetune.predict_logits(model, tokenizer, parts[name]["sentence"], length)
            log_p[name][folder] = torch.log_softmax(logits, -1).numpy()
        states.setdefault(_group(cards[folder]), []).append((folder, model.state_dict()))  # the model is not reused
    for name in splits:
        print(f"\n{name}:")
        for folder in folders:
            print(f"  {folder.name:44s} {_figures(truth[name], log_p[name][folder].argmax(1))}")
        ensemble = np.mean([log_p[name][folder] for folder in folders], axis=0)
        print(f"  {'ensemble of all ' + str(len(folders)):44s} {_figures(truth[name], ensemble.argmax(1))}")
    for group, members in states.items():
        if len(members) < 2:
            continue
        model, tokenizer = load_classifier(members[0][0])
        model.load_state_dict(uniform_soup([state for _, state in members]))
        label = f"soup of {len(members)} ({', '.join(folder.name.removeprefix('sentiment-minilm') or 'default' for folder, _ in members)})"
        for name in splits:
            predicted = finetune.predict_logits(model, tokenizer, parts[name]["sentence"],
                                                _max_length(cards[members[0][0]])).argmax(1).numpy()
            print(f"{name:10s} {label}\n           {_figures(truth[name], predicted)}")
    print("\nlogit adjustment, log-probabilities - tau * log(prior):")
    for name in splits:
        for folder in folders:
            for tau in TAUS:
                predicted = (log_p[name][folder] - tau * log_prior).argmax(1)
                print(f"  {name:10s} {folder.name:44s} tau {tau:.1f}  {_figures(truth[name], predicted)}")
    print(f"\n{time.process_time() - started:.0f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
