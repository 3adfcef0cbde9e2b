"""bench/sentiment_ceiling.py: the uniform soup is the mean of the weights, and only models that started from
one encoder are souped together."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sentiment_ceiling", ROOT / "bench" / "sentiment_ceiling.py")
ceiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ceiling)


def test_uniform_soup_is_the_mean_of_the_weights_worked_by_hand():
    first = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    second = {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([0, 1])}
    third = {"w": torch.tensor([2.0, 1.0]), "ids": torch.tensor([0, 1])}
    soup = ceiling.uniform_soup([first, second, third])
    assert torch.equal(soup["w"], torch.tensor([2.0, 3.0]))
    assert torch.equal(soup["ids"], torch.tensor([0, 1])) and soup["ids"].dtype == torch.int64
    half = ceiling.uniform_soup([{"w": torch.tensor([1.0], dtype=torch.bfloat16)},
                                 {"w": torch.tensor([2.0], dtype=torch.bfloat16)}])
    assert half["w"].dtype == torch.bfloat16 and float(half["w"]) == 1.5


def test_models_from_different_encoders_are_not_souped_together():
    packaged = {"identity": {"base": None, "recipe": "default"}}
    lora = {"identity": {"base": None, "recipe": "default", "hyperparameters": {"lora_rank": 16}}}
    # An earlier newsbt kept the adapted encoder's key in the card's pretraining, not in its identity.
    adapted_earlier = {"identity": {"base": None, "recipe": "dapt"}, "pretraining": {"key": "726d"}}
    adapted = {"identity": {"base": None, "recipe": "dapt", "pretraining": {"steps": 800}},
               "pretraining": {"key": "4b7a"}}
    adapted_lora = {"identity": {"base": None, "recipe": "dapt"}, "pretraining": {"key": "4b7a"}}
    other_base = {"identity": {"base": "some/folder", "recipe": "default"}}
    assert ceiling._group(packaged) == ceiling._group(lora)
    assert ceiling._group(adapted) == ceiling._group(adapted_lora)
    groups = {ceiling._group(card) for card in (packaged, adapted_earlier, adapted, other_base)}
    assert len(groups) == 4
