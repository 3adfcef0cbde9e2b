"""bench/sentiment_ceiling.py: the uniform soup is the mean of the weights, only models that started from one
encoder and read texts alike are souped together, and a folder without a model card is one clear line."""
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
    second = {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([5, 7])}
    third = {"w": torch.tensor([2.0, 1.0]), "ids": torch.tensor([9, 9])}
    soup = ceiling.uniform_soup([first, second, third])
    assert torch.equal(soup["w"], torch.tensor([2.0, 3.0]))
    # Integer buffers are not averaged: the first state's are kept.
    assert torch.equal(soup["ids"], torch.tensor([0, 1])) and soup["ids"].dtype == torch.int64
    # bf16 weights are summed in fp32: (256 + 1 + 1) / 3 = 86 (bf16 holds 86); summed in bf16, 256 + 1 would
    # round back to 256 (bf16's spacing there is 2) and the mean would come out 85.5.
    states = [{"w": torch.tensor([value], dtype=torch.bfloat16)} for value in (256.0, 1.0, 1.0)]
    half = ceiling.uniform_soup(states)
    assert half["w"].dtype == torch.bfloat16 and float(half["w"]) == 86.0


def test_a_models_folder_without_a_card_is_one_line_and_exit_status_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert ceiling.main(["--models", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("newsbt: error: --models: ") and "model_card.json" in err


def test_models_from_different_encoders_are_not_souped_together():
    packaged = {"identity": {"base": None, "recipe": "default"}}
    lora = {"identity": {"base": None, "recipe": "default", "hyperparameters": {"lora_rank": 16}}}
    # An earlier newsbt kept the adapted encoder's key in the card's pretraining, not in its identity.
    adapted_earlier = {"identity": {"base": None, "recipe": "dapt"}, "pretraining": {"key": "726d"}}
    adapted = {"identity": {"base": None, "recipe": "dapt", "pretraining": {"steps": 800}},
               "pretraining": {"key": "4b7a"}}
    adapted_lora = {"identity": {"base": None, "recipe": "dapt"}, "pretraining": {"key": "4b7a"}}
    other_base = {"identity": {"base": "some/folder", "recipe": "default"}}
    longer = {"identity": {"base": None, "recipe": "default", "hyperparameters": {"max_length": 128}}}
    # A card written before identities existed: its base is read from its top-level field.
    before_identities = {"base": "some/folder", "recipe": "default", "hyperparameters": {"max_length": 64}}
    assert ceiling._group(packaged) == ceiling._group(lora)
    assert ceiling._group(adapted) == ceiling._group(adapted_lora)
    assert ceiling._group(before_identities) == ceiling._group(other_base)
    groups = {ceiling._group(card) for card in (packaged, adapted_earlier, adapted, other_base, longer)}
    assert len(groups) == 5
