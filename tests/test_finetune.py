"""Tests of signals/finetune.py's scores, methods and command line, and of signals/pretrain.py, on tiny models.

The tiny models are random 2-layer BERTs (hidden 32) whose vocabulary is the words of a few sentences, so every
test runs in seconds on one thread; the real data appears only as PhraseBank sentences.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score
import pandas as pd
import transformers
from transformers import BertConfig, BertModel, BertTokenizer

from engine.errors import ConfigError, DataError
from signals import finetune, pretrain
from signals.transformer import LABELS, MeanPoolingClassifier, load_classifier, save_classifier

ROOT = Path(__file__).resolve().parents[1]
PHRASEBANK = ROOT.parent / "shared" / "data" / "financial-phrasebank"
SENTENCES = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .",
    "The company 's net sales fell by 5 % from the previous year .",
    "The annual general meeting will be held in Helsinki on 4 April .",
    "Pretax loss totalled EUR 117mn compared to a loss of EUR 65mn in the corresponding period .",
    "Sales increased due to growing market rates and increased operations .",
    "The contract value was not disclosed .",
]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tokenizer(folder: Path, sentences: list[str]) -> BertTokenizer:
    words = Counter(w for s in sentences for w in s.lower().replace(",", " ").replace(".", " ").split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer.from_pretrained(str(folder))


def _config(vocab_size: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, num_labels=3,
                      id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})


def _tiny_base(folder: Path, sentences: list[str] = SENTENCES, seed: int = 0) -> Path:
    """A random tiny BERT encoder with its tokenizer, saved in ``folder`` as a base to fine-tune or adapt."""
    tokenizer = _tokenizer(folder, sentences)
    torch.manual_seed(seed)
    BertModel(_config(tokenizer.vocab_size), add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _batch(tokenizer, sentences=SENTENCES):
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


# -- bootstrap intervals ------------------------------------------------------------------------------------
def test_bootstrap_intervals_match_an_independent_computation():
    rng = np.random.default_rng(11)
    truth = rng.choice(LABELS, size=60, p=[0.2, 0.5, 0.3])
    predicted = np.where(rng.random(60) < 0.75, truth, rng.choice(LABELS, size=60))
    intervals = finetune.bootstrap_intervals(truth, predicted, resamples=400, seed=5)
    # The documented draws, each scored by sklearn, the 2.5th and 97.5th percentiles.
    rows = np.random.default_rng(5).integers(0, 60, size=(400, 60))
    accuracy = [accuracy_score(truth[r], predicted[r]) for r in rows]
    macro_f1 = [f1_score(truth[r], predicted[r], average="macro", labels=list(LABELS), zero_division=0)
                for r in rows]
    recall = [recall_score(truth[r], predicted[r], labels=["positive"], average="macro", zero_division=0)
              for r in rows]
    for name, values in (("accuracy", accuracy), ("macro_f1", macro_f1), ("positive_recall", recall)):
        expected = np.percentile(values, [2.5, 97.5])
        assert intervals[name] == pytest.approx(expected, abs=5.1e-5), name  # rounded to 4 digits


def test_bootstrap_accuracy_interval_has_the_binomial_width():
    # 400 rows, 320 right: the normal approximation gives 0.8 +- 1.96 * sqrt(0.8 * 0.2 / 400) = [0.7608, 0.8392].
    truth = np.array(["positive"] * 400)
    predicted = np.array(["positive"] * 320 + ["neutral"] * 80)
    low, high = finetune.bootstrap_intervals(truth, predicted, resamples=2000, seed=0)["accuracy"]
    assert low == pytest.approx(0.7608, abs=0.008) and high == pytest.approx(0.8392, abs=0.008)


def test_score_split_reports_positive_recall_worked_by_hand():
    truth = ["positive", "positive", "positive", "positive", "negative", "neutral"]
    predicted = ["positive", "positive", "positive", "neutral", "negative", "neutral"]
    scores = finetune.score_split(truth, predicted)
    assert scores["positive_recall"] == 0.75 and scores["accuracy"] == pytest.approx(5 / 6)
    # F1: negative 1, neutral 2*1/(2+1) = 2/3, positive 2*3/(4+3) = 6/7.
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 6 / 7) / 3)
    assert scores["per_class"]["neutral"] == {"precision": 0.5, "recall": 1.0, "n": 1}
    low, high = scores["interval_95"]["accuracy"]
    assert low <= 5 / 6 <= high


# -- domain-adaptive pretraining ----------------------------------------------------------------------------
def test_dapt_corpus_leaves_out_every_phrasebank_sentence():
    phrasebank = SENTENCES[:3]
    texts = [
        "  operating PROFIT rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .",  # equal
        "RT: The company 's net sales fell by 5 % from the previous year . Read more",  # contains one
        "annual general meeting will be held",  # five words inside a sentence
        "held in Helsinki",  # three words inside a sentence: too short to be a copy, kept
        "Oil prices fall as OPEC meets",  # unrelated, kept
    ]
    kept, counts = pretrain.exclude_sentences(texts, phrasebank)
    assert kept == ["held in Helsinki", "Oil prices fall as OPEC meets"]
    assert counts == {"equal_to_a_sentence": 1, "containing_a_sentence": 1, "inside_a_sentence": 1}
    with pytest.raises(DataError, match="1 test sentence"):
        pretrain.check_held_out(texts, [SENTENCES[0]])
    pretrain.check_held_out(kept, phrasebank)


def test_dapt_corpus_from_the_real_data_has_no_test_sentence(shared_data, monkeypatch):
    unique, _ = finetune.dedupe_phrasebank(finetune.read_phrasebank(PHRASEBANK / finetune.TRAIN_FILE))
    test = finetune.split_phrasebank(unique)["test"]["sentence"].tolist()
    texts, counts = pretrain.read_corpus([shared_data])
    assert counts["djia_items"] > 70_000 and counts["stocknet_items"] > 30_000
    pretrain.check_held_out(texts, test)
    planted = texts[:50] + [test[7].upper()]
    kept, _ = pretrain.exclude_sentences(planted, test)
    assert len(kept) == 50


def test_adapted_encoder_cache_key_follows_each_input(tmp_path):
    base = _tiny_base(tmp_path / "base")
    other = _tiny_base(tmp_path / "other", seed=1)
    settings = pretrain.PretrainSettings(steps=10)
    key = pretrain.encoder_key(SENTENCES, str(base), settings)
    assert pretrain.encoder_key(list(SENTENCES), str(base), dataclasses.replace(settings)) == key
    changed = [pretrain.encoder_key(SENTENCES[:-1], str(base), settings),
               pretrain.encoder_key(SENTENCES, str(other), settings)]
    changed += [pretrain.encoder_key(SENTENCES, str(base), dataclasses.replace(settings, **{name: value}))
                for name, value in (("steps", 11), ("seed", 1), ("precision", "bf16"), ("threads", 1),
                                    ("lr", 3e-4), ("batch_size", 32), ("mask_probability", 0.2))]
    assert len(set(changed) | {key}) == len(changed) + 1


def _changed(name: str, value):
    """Another value of a PretrainSettings field, by its type; a field of a new kind fails the test loudly."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 if value else 0.5
    if name == "precision":
        return "bf16" if value == "fp32" else "fp32"
    raise AssertionError(f"PretrainSettings.{name}: no other value known for {value!r}; add one to _changed")


def test_every_pretrain_setting_is_in_the_cache_key_and_the_model_identity(tmp_path, monkeypatch):
    # Each field of PretrainSettings, changed alone, must give another cached encoder (key) and, through the
    # recipe's settings, another fine-tuned model (identity, folder): a setting left out of either would reuse a
    # stale encoder or model. Threads are in the key (they change the bits) but, as for fine-tuning, not in the
    # model's identity.
    base = _tiny_base(tmp_path / "base")
    settings = pretrain.PretrainSettings(steps=10)
    key = pretrain.encoder_key(SENTENCES, str(base), settings)
    recipe = finetune.RECIPES["dapt"]
    identity = finetune.model_identity(None, "dapt", recipe)
    folder = finetune.model_folder(Path("m/sentiment-minilm"), identity)
    keys, folders = {key}, {folder}
    fields = dataclasses.fields(pretrain.PretrainSettings)
    assert {"steps", "head_steps", "eval_texts", "lr", "head_lr"} <= {field.name for field in fields}
    real_settings = finetune.pretrain_settings
    for field in fields:
        value = _changed(field.name, getattr(settings, field.name))
        keys.add(pretrain.encoder_key(SENTENCES, str(base), dataclasses.replace(settings, **{field.name: value})))
        if field.name == "threads":
            continue
        monkeypatch.setattr(finetune, "pretrain_settings",
                            lambda recipe, precision="fp32", threads=2, name=field.name, value=value:
                            dataclasses.replace(real_settings(recipe, precision, threads), **{name: value}))
        changed = finetune.model_identity(None, "dapt", recipe)
        assert changed != identity, field.name
        folders.add(finetune.model_folder(Path("m/sentiment-minilm"), changed))
        monkeypatch.setattr(finetune, "pretrain_settings", real_settings)
    assert len(keys) == len(fields) + 1
    assert len(folders) == len(fields)  # all but threads
    # The recipe's pretraining fields reach the settings, hence the key and the identity.
    longer = dataclasses.replace(recipe, pretrain_head_steps=recipe.pretrain_head_steps + 1)
    assert finetune.pretrain_settings(longer).head_steps == recipe.pretrain_head_steps + 1
    assert finetune.model_identity(None, "dapt", longer)["pretraining"]["head_steps"] == recipe.pretrain_head_steps + 1
    assert "pretraining" not in finetune.model_identity()  # the default model's identity is unchanged


def test_a_model_card_with_other_pretraining_settings_is_refused(tmp_path):
    identity = finetune.model_identity(None, "dapt")
    stale = identity | {"pretraining": identity["pretraining"] | {"head_lr": 5e-4}}
    (tmp_path / "model_card.json").write_text(json.dumps({"identity": stale}))
    with pytest.raises(finetune.ConfigError, match=r"^signals\.sentiment\.training\.recipe: .* pretraining"):
        finetune.check_model(tmp_path, identity)
    (tmp_path / "model_card.json").write_text(json.dumps({"identity": identity}))
    finetune.check_model(tmp_path, identity)


def test_head_only_phase_leaves_the_encoder_bit_identical(tmp_path):
    base = _tiny_base(tmp_path / "base")
    corpus = SENTENCES * 4
    settings = pretrain.PretrainSettings(steps=0, head_steps=4, eval_texts=0, batch_size=4, threads=1)
    mlm, _, history = pretrain.pretrain(str(base), corpus, settings, log=lambda line: None)
    torch.manual_seed(settings.seed)  # as pretrain does before building the masked LM: the same fresh head
    untouched, _ = pretrain.masked_lm(str(base))
    for (name, before), after in zip(untouched.bert.named_parameters(), mlm.bert.parameters()):
        assert torch.equal(before, after), name
        assert after.grad is None, name  # no backward through the encoder, not only no update
    head_before = dict(untouched.cls.named_parameters())
    for name, after in mlm.cls.named_parameters():
        if name != "predictions.decoder.weight":  # the word embeddings, tied
            assert not torch.equal(head_before[name], after), name
    assert [(row["phase"], row["step"]) for row in history] == [("head", 1), ("head", 2), ("head", 3), ("head", 4)]
    # Then the full phase trains the encoder too, and every parameter is trainable again afterwards.
    full = dataclasses.replace(settings, steps=2)
    mlm, _, history = pretrain.pretrain(str(base), corpus, full, log=lambda line: None)
    assert [row["phase"] for row in history][-1] == "full" and history[-1]["step"] == 6
    assert not torch.equal(mlm.bert.encoder.layer[0].attention.self.query.weight,
                           untouched.bert.encoder.layer[0].attention.self.query.weight)
    assert all(parameter.requires_grad for parameter in mlm.parameters())


def test_held_out_texts_are_never_trained_on_and_scored_with_fixed_masks(tmp_path, monkeypatch):
    base = _tiny_base(tmp_path / "base")
    corpus = [f"{sentence} {i}" for i, sentence in enumerate(SENTENCES)]
    settings = pretrain.PretrainSettings(steps=3, head_steps=0, eval_texts=2, batch_size=2, threads=1)
    tokenized: list[list[str]] = []
    real_tokenizer = transformers.BertTokenizer.__call__

    def spy(self, texts, *args, **kwargs):
        tokenized.append(list(texts))
        return real_tokenizer(self, texts, *args, **kwargs)

    monkeypatch.setattr(transformers.BertTokenizer, "__call__", spy)
    _, _, history = pretrain.pretrain(str(base), corpus, settings, log=lambda line: None)
    trained, held = tokenized[0], tokenized[1]
    assert len(held) == 2 and len(trained) == 6 and not set(held) & set(trained)
    assert set(trained) == set(corpus) - set(held)  # 4 texts, then the first 2 again in a fresh order
    assert all("held_out_mlm_loss" in row for row in history)
    with pytest.raises(DataError, match="no text left to train on"):
        pretrain.pretrain(str(base), corpus, dataclasses.replace(settings, eval_texts=6), log=lambda line: None)


def test_masked_lm_ties_its_decoder_to_the_word_embeddings(tmp_path):
    mlm, tokenizer = pretrain.masked_lm(str(_tiny_base(tmp_path / "base")))
    encoder = BertModel.from_pretrained(tmp_path / "base")
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert torch.equal(mlm.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    assert torch.equal(mlm.bert.encoder.layer[1].output.dense.weight, encoder.encoder.layer[1].output.dense.weight)


def test_adapted_encoder_is_built_once_and_then_reused(tmp_path, monkeypatch):
    base = _tiny_base(tmp_path / "base")
    corpus = SENTENCES[3:] + ["Oil prices fall as OPEC meets", "Shares rose after the results"]
    monkeypatch.setattr(pretrain, "read_corpus", lambda roots: (list(corpus), {"djia_items": len(corpus)}))
    settings = pretrain.PretrainSettings(steps=3, head_steps=1, eval_texts=1, batch_size=4, threads=1)
    options = dict(data_roots=None, cache_root=tmp_path / "cache", exclude=SENTENCES[:3], held_out=SENTENCES[:1],
                   log=lambda line: None)
    folder, card = pretrain.ensure_adapted_encoder(str(base), settings, **options)
    assert not card["cached"] and card["corpus"]["texts"] == len(corpus) and len(card["history"]) >= 1
    assert Path(folder).parent == tmp_path / "cache" / "dapt"
    adapted = BertModel.from_pretrained(folder)
    original = BertModel.from_pretrained(base)
    assert not torch.equal(adapted.encoder.layer[0].attention.self.query.weight,
                           original.encoder.layer[0].attention.self.query.weight)

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached encoder was trained again")

    monkeypatch.setattr(pretrain, "pretrain", must_not_train)
    again, card_again = pretrain.ensure_adapted_encoder(str(base), settings, **options)
    assert again == folder and card_again["cached"]
    # A test sentence in the corpus stops the build before any training.
    monkeypatch.setattr(pretrain, "read_corpus", lambda roots: (corpus + [SENTENCES[5]], {}))
    with pytest.raises(DataError, match="test sentence"):
        pretrain.ensure_adapted_encoder(str(base), settings, **options | {"held_out": SENTENCES[5:]})


# -- LoRA ---------------------------------------------------------------------------------------------------
def test_lora_merge_gives_the_peft_models_logits_and_saves_like_a_full_model(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tokenizer", SENTENCES)
    torch.manual_seed(0)
    model = MeanPoolingClassifier(_config(tokenizer.vocab_size))
    peft_model = finetune.add_lora(model, rank=4, seed=0)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "classifier.modules_to_save" in name for name in trainable)
    assert any(".intermediate.dense.lora_A" in name for name in trainable)
    assert any(".attention.self.value.lora_B" in name for name in trainable)
    with torch.no_grad():  # B starts at zero (a no-op adapter): give every adapter and the head weights
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    peft_model.eval()
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids, attention_mask=mask).logits
    merged = finetune.merge_lora(peft_model)
    assert type(merged) is MeanPoolingClassifier
    assert not any("lora" in name for name in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits, unmerged, atol=1e-5, rtol=0)
    save_classifier(merged, tokenizer, tmp_path / "model")
    loaded, loaded_tokenizer = load_classifier(tmp_path / "model")
    with torch.no_grad():
        logits = loaded(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits, unmerged, atol=1e-5, rtol=0)


def _write_phrasebank(folder: Path) -> Path:
    """A PhraseBank-shaped folder of 60 sentences (20 per label, words telling the label), 30 of them all-agree."""
    rng = np.random.default_rng(0)
    words = {"negative": "loss fell down weak", "neutral": "meeting held report said",
             "positive": "profit rose up strong"}
    lines = []
    for label, vocabulary in words.items():
        for i in range(20):
            picked = " ".join(rng.choice(vocabulary.split(), size=4))
            lines.append(f"company {i} {picked} period .@{label}")
    folder.mkdir(parents=True)
    (folder / finetune.TRAIN_FILE).write_bytes("\r\n".join(lines).encode("latin-1"))
    (folder / finetune.ALL_AGREE_FILE).write_bytes("\r\n".join(lines[::2]).encode("latin-1"))
    return folder


def test_lora_and_seeds_through_finetune_write_a_full_card(tmp_path):
    root = tmp_path / "data"
    _write_phrasebank(root / finetune.DATASET)
    sentences = [line.rpartition("@")[0] for line in
                 (root / finetune.DATASET / finetune.TRAIN_FILE).read_text("latin-1").splitlines()]
    base = _tiny_base(tmp_path / "base", sentences)
    recipe = dataclasses.replace(finetune.with_method(finetune.RECIPES["default"], "lora"), epochs=2, lr=5e-3,
                                 head_lr=1e-2, batch_size=8, max_length=16)
    card = finetune.finetune(tmp_path / "model", str(base), recipe, "default", [root], progress=False,
                             log=lambda line: None, threads=1, seeds=[3, 4])
    assert card["method"] == "lora" and card["lora"]["merged"] and card["seed"] == 3
    test = card["metrics"]["test"]
    assert set(test["interval_95"]) == {"accuracy", "macro_f1", "positive_recall"}
    assert test["interval_95"]["accuracy"][0] <= test["accuracy"] <= test["interval_95"]["accuracy"][1]
    spread = card["seed_spread"]
    assert spread["seeds"] == [3, 4] and [row["seed"] for row in spread["per_seed"]] == [3, 4]
    accuracies = [row["test.accuracy"] for row in spread["per_seed"]]
    assert spread["summary"]["test.accuracy"]["mean"] == pytest.approx(np.mean(accuracies), abs=1e-4)
    assert spread["summary"]["test.accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1), abs=1e-4)
    assert card["cpu"]["threads"] == 1 and isinstance(card["cpu"]["avx512_bf16"], bool)
    saved = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert saved["metrics"]["test"]["accuracy"] == test["accuracy"]
    loaded, _ = load_classifier(tmp_path / "model")
    assert type(loaded) is MeanPoolingClassifier
    assert "lora" in finetune.model_folder(tmp_path / "m", finetune.model_identity(
        None, "default", finetune.with_method(finetune.RECIPES["default"], "lora"))).name


# -- command line -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arguments, message", [
    (["--recipe", "nope"], "argument --recipe: invalid choice: 'nope'"),
    (["--method", "adapters"], "argument --method: invalid choice: 'adapters'"),
    (["--seeds", "0,0"], "argument --seeds: '0,0': seeds must be distinct"),
    (["--seeds", "a,b"], "argument --seeds: 'a,b' is not a comma-separated list"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
])
def test_cli_errors_are_one_line_and_exit_2(arguments, message, capsys):
    try:
        status = finetune.main(arguments)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("newsbt: error: ") and message in err


def test_training_never_replaces_a_folder_it_did_not_write(tmp_path):
    from engine.cache import write_folder_atomic
    from engine.errors import ConfigError

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="was not written by newsbt"):
        write_folder_atomic(lambda staging: staging.mkdir(), mine, lambda found: (found / "model_card.json").is_file())
    assert (mine / "thesis.txt").read_text() == "keep me"
    # A folder the writer made is replaced whole; a failed fill leaves the old one and no staging folder.
    model = tmp_path / "model"

    def fill(staging, text="new"):
        staging.mkdir()
        (staging / "model_card.json").write_text(text)

    write_folder_atomic(lambda staging: fill(staging, "old"), model, lambda found: False)
    write_folder_atomic(fill, model, lambda found: (found / "model_card.json").is_file())
    assert (model / "model_card.json").read_text() == "new"

    def broken(staging):
        fill(staging, "half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_folder_atomic(broken, model, lambda found: True)
    assert (model / "model_card.json").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "notes"]


# -- recipe options: frozen word embeddings, class weights, identities -----------------------------------------
def _labelled(sentences: list[str], labels: list[str]):
    import pandas as pd

    return pd.DataFrame({"sentence": sentences, "label": labels})


# SENTENCES' labels as PhraseBank would give them: 2 negative, 2 neutral, 2 positive; the training frame below
# repeats the neutral ones so the counts differ per class: negative 2, neutral 6, positive 4.
TRAIN_LABELS = ["positive", "negative", "neutral", "negative", "positive", "neutral"]


def _weighted_frame():
    sentences = SENTENCES + [SENTENCES[2], SENTENCES[5]] * 2 + [SENTENCES[0], SENTENCES[4]]
    labels = TRAIN_LABELS + ["neutral", "neutral"] * 2 + ["positive", "positive"]
    return _labelled(sentences, labels)


def test_class_weights_are_inverse_frequency_to_a_power_worked_by_hand():
    labels = torch.tensor([LABELS.index(label) for label in _weighted_frame()["label"]])
    # N = 12, K = 3 classes; counts negative 2, neutral 6, positive 4: N / (K n_c) = 2, 2/3, 1.
    assert finetune.class_weights(labels, 0.0) is None
    assert torch.allclose(finetune.class_weights(labels, 1.0), torch.tensor([2.0, 2 / 3, 1.0]))
    assert torch.allclose(finetune.class_weights(labels, 0.5), torch.tensor([2 ** 0.5, (2 / 3) ** 0.5, 1.0]))
    with pytest.raises(DataError, match="no training sentence labelled positive"):
        finetune.class_weights(torch.tensor([0, 1, 1]), 0.5)


def test_training_loss_is_the_class_weighted_mean_computed_by_hand(tmp_path, monkeypatch):
    base = _tiny_base(tmp_path / "base")
    model, tokenizer = finetune.load_base(str(base))
    recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=1, batch_size=4, max_length=16,
                                 class_weight_power=1.0, freeze_word_embeddings=False)
    real = torch.nn.functional.cross_entropy
    checked = []

    def spy(logits, targets, *args, weight=None, **kwargs):
        loss = real(logits, targets, *args, weight=weight, **kwargs)
        if logits.requires_grad:  # a training step (validation scoring runs under inference mode)
            by_class = torch.tensor([2.0, 2 / 3, 1.0])  # the worked weights of the frame's 2/6/4 labels
            log_p = torch.log_softmax(logits.detach(), -1)[torch.arange(len(targets)), targets]
            w = by_class[targets]
            assert torch.allclose(loss.detach(), -(w * log_p).sum() / w.sum(), atol=1e-6)
            checked.append(len(targets))
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    finetune.train_classifier(model, tokenizer, _weighted_frame(), _labelled(SENTENCES, TRAIN_LABELS), recipe,
                              log=lambda line: None, threads=1)
    assert sum(checked) == 12  # every training sentence went through the weighted loss once


def test_agreement_targets_are_one_hot_where_all_agree_and_smoothed_elsewhere_worked_by_hand():
    frame = pd.DataFrame({"label": ["negative", "positive", "neutral", "positive"],
                          "all_agree": [True, False, False, True]})
    targets = finetune.agreement_targets(frame, 0.2)
    # LABELS = negative, neutral, positive; a 50Agree-only sentence keeps 0.8 and gives 0.1 to each other label.
    assert torch.allclose(targets, torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]]))
    with pytest.raises(ConfigError, match="all_agree"):
        finetune.agreement_targets(frame.drop(columns="all_agree"), 0.2)


@pytest.mark.parametrize("rdrop, label_smoothing", [(0.0, 0.0), (1.0, 0.1)])
def test_each_sentence_trains_on_its_own_soft_target_and_the_loss_is_computed_by_hand(tmp_path, monkeypatch, rdrop,
                                                                                     label_smoothing):
    base = _tiny_base(tmp_path / "base")
    model, tokenizer = finetune.load_base(str(base))
    train = _labelled(SENTENCES, TRAIN_LABELS).assign(all_agree=[True, False, False, True, False, True])
    # Worked by hand from TRAIN_LABELS (LABELS = negative, neutral, positive), smoothing 0.3: a sentence not all
    # annotators agreed on keeps 0.7 on its label and 0.15 on each other; an all-agree one stays one-hot.
    expected = {SENTENCES[0]: [0.0, 0.0, 1.0], SENTENCES[1]: [0.7, 0.15, 0.15], SENTENCES[2]: [0.15, 0.7, 0.15],
                SENTENCES[3]: [1.0, 0.0, 0.0], SENTENCES[4]: [0.15, 0.15, 0.7], SENTENCES[5]: [0.0, 1.0, 0.0]}
    by_ids = {tuple(ids): sentence for ids, sentence in zip(finetune._encode(tokenizer, SENTENCES, 16), SENTENCES)}
    recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=2, batch_size=4, max_length=16,
                                 agreement_smoothing=0.3, rdrop=rdrop, label_smoothing=label_smoothing)
    inputs, seen = [], []
    model.register_forward_pre_hook(lambda module, args, kwargs: inputs.append(kwargs["input_ids"]),
                                    with_kwargs=True)
    real = torch.nn.functional.cross_entropy

    def spy(logits, targets, *args, **kwargs):
        loss = real(logits, targets, *args, **kwargs)
        if logits.requires_grad:
            assert targets.dtype == torch.float32 and targets.shape == logits.shape
            rows = [by_ids[tuple(int(i) for i in row if i != tokenizer.pad_token_id)] for row in inputs[-1]]
            wanted = torch.tensor([expected[sentence] for sentence in rows])
            assert torch.allclose(targets, wanted)
            smoothed = wanted * (1 - label_smoothing) + label_smoothing / 3  # torch's label smoothing on top
            log_p = torch.log_softmax(logits.detach(), -1)
            assert torch.allclose(loss.detach(), -(smoothed * log_p).sum(1).mean(), atol=1e-6)
            seen.extend(rows)
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    finetune.train_classifier(model, tokenizer, train, _labelled(SENTENCES, TRAIN_LABELS), recipe,
                              log=lambda line: None, threads=1)
    # Two epochs, each sentence once per epoch (twice per step with R-Drop's two passes).
    assert Counter(seen) == {sentence: 2 * (2 if rdrop else 1) for sentence in SENTENCES}


def _must_not_train(*args, **kwargs):
    raise AssertionError("the command trained a model instead of rejecting its options")


def test_cli_rejects_agreement_smoothing_out_of_range_or_with_class_weights(capsys, monkeypatch):
    monkeypatch.setattr(finetune, "finetune", _must_not_train)
    # Above 2/3 the sentence's own label would get less than each other label (0.7: 0.3 against 0.35 each).
    for value in ("0.7", "1", "-0.1", "nan"):
        assert finetune.main(["--agreement-smoothing", value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--agreement-smoothing: must be a number in [0, 2/3)" in err
    assert finetune.main(["--agreement-smoothing", "0.2", "--class-weight-power", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use one or the other" in err


def test_training_rejects_agreement_smoothing_with_class_weights_or_out_of_range(tmp_path):
    base = _tiny_base(tmp_path / "base")
    model, tokenizer = finetune.load_base(str(base))
    train = _labelled(SENTENCES, TRAIN_LABELS).assign(all_agree=[True, False] * 3)
    for options, message in (({"agreement_smoothing": 0.2, "class_weight_power": 0.5}, "use one or the other"),
                             ({"agreement_smoothing": 0.7}, r"must be a number in \[0, 2/3\)")):
        recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=1, batch_size=4, max_length=16, **options)
        with pytest.raises(ConfigError, match=message):
            finetune.train_classifier(model, tokenizer, train, train, recipe, log=lambda line: None, threads=1)


def test_frozen_word_embeddings_stay_bit_identical_while_the_rest_trains(tmp_path):
    base = _tiny_base(tmp_path / "base")
    train, validation = _weighted_frame(), _labelled(SENTENCES, TRAIN_LABELS)
    changed = {}
    for freeze in (True, False):
        model, tokenizer = finetune.load_base(str(base))
        before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        recipe = dataclasses.replace(finetune.RECIPES["default"], epochs=1, batch_size=4, max_length=16,
                                     lr=1e-2, head_lr=1e-2, freeze_word_embeddings=freeze)
        finetune.train_classifier(model, tokenizer, train, validation, recipe, log=lambda line: None, threads=1)
        after = model.state_dict()
        changed[freeze] = {name for name in before if not torch.equal(before[name], after[name])}
    word = "encoder.embeddings.word_embeddings.weight"
    assert word not in changed[True] and word in changed[False]
    for name in ("encoder.embeddings.position_embeddings.weight", "encoder.embeddings.LayerNorm.weight",
                 "encoder.encoder.layer.0.attention.self.query.weight", "classifier.weight"):
        assert name in changed[True], name


def test_identities_of_models_trained_before_the_new_fields_are_unchanged():
    # The hyper-parameters an earlier newsbt recorded for its `default` recipe (before freeze_word_embeddings and
    # class_weight_power existed): the current default, which leaves both off, must still be that identity, or
    # the next run would move the trained default model aside and train it again.
    earlier_default = {"epochs": 3, "lr": 1e-4, "head_lr": 1e-3, "layer_decay": 0.9, "warmup_fraction": 0.1,
                       "weight_decay": 0.01, "label_smoothing": 0.0, "rdrop": 0.0, "batch_size": 32,
                       "max_length": 64, "seed": 0, "pretrain_steps": 0, "lora_rank": 0}
    assert finetune.model_identity()["hyperparameters"] == earlier_default
    assert finetune.model_identity(None, "dapt")["hyperparameters"] == earlier_default | {"pretrain_steps": 800,
                                                                                         "pretrain_head_steps": 150}
    lora = finetune.model_identity(None, "default", finetune.with_method(finetune.RECIPES["default"], "lora"))
    assert lora["hyperparameters"] == earlier_default | {"lora_rank": 16, "lr": 1e-3, "layer_decay": 1.0}
    assert finetune.model_folder(Path("m/sentiment-minilm"), lora).name == "sentiment-minilm-lora-06c2dfc3"
    # Turned on, a new field is part of the identity: such a model trains into a folder of its own.
    frozen = dataclasses.replace(finetune.RECIPES["default"], freeze_word_embeddings=True, class_weight_power=0.5)
    identity = finetune.model_identity(None, "default", frozen)
    assert identity["hyperparameters"] == earlier_default | {"freeze_word_embeddings": True,
                                                             "class_weight_power": 0.5}
    smoothed = finetune.model_identity(None, "default",
                                       dataclasses.replace(finetune.RECIPES["default"], agreement_smoothing=0.2))
    assert smoothed["hyperparameters"] == earlier_default | {"agreement_smoothing": 0.2}
    assert finetune.model_folder(Path("m/sentiment-minilm"), identity).name.startswith("sentiment-minilm-custom-")


def test_a_default_model_trained_before_the_new_fields_is_kept(tmp_path, monkeypatch):
    default_dir = tmp_path / "models" / "sentiment-minilm"
    _tiny_base(default_dir)
    earlier = {"epochs": 3, "lr": 1e-4, "head_lr": 1e-3, "layer_decay": 0.9, "warmup_fraction": 0.1,
               "weight_decay": 0.01, "label_smoothing": 0.0, "rdrop": 0.0, "batch_size": 32, "max_length": 64,
               "seed": 0, "pretrain_steps": 0, "lora_rank": 0}
    identity = {"base": None, "recipe": "default", "hyperparameters": earlier, "split_seed": 0, "precision": "fp32",
                "device": "cpu"}
    (default_dir / "model_card.json").write_text(json.dumps({"identity": identity}))

    def must_not_train(*args, **kwargs):
        raise AssertionError("the default model was trained again")

    monkeypatch.setattr(finetune, "finetune", must_not_train)
    assert finetune.ensure_model(default_dir) == default_dir
    assert sorted(p.name for p in default_dir.parent.iterdir()) == ["sentiment-minilm"]


def test_cli_rejects_a_negative_class_weight_power(capsys, monkeypatch):
    monkeypatch.setattr(finetune, "finetune", _must_not_train)
    assert finetune.main(["--class-weight-power", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--class-weight-power: must be a finite number >= 0, got -1.0" in err


def test_ensure_model_trains_the_configured_method_into_its_own_folder(tmp_path, monkeypatch):
    default_dir = tmp_path / "models" / "sentiment-minilm"
    trained = []

    def fake_finetune(out, base, recipe, recipe_name, data_roots, **options):
        trained.append((Path(out).name, recipe.lora_rank, recipe_name))
        _tiny_base(Path(out))
        identity = finetune.model_identity(base, recipe_name, recipe, options["precision"], options["device"])
        (Path(out) / "model_card.json").write_text(json.dumps({"identity": identity}))

    monkeypatch.setattr(finetune, "finetune", fake_finetune)
    lora = finetune.ensure_model(default_dir, method="lora")
    # The same folder `python -m signals.finetune --method lora` trains into (a sibling, not the default's).
    cli_folder = finetune.model_folder(default_dir, finetune.model_identity(
        None, "default", finetune.with_method(finetune.RECIPES["default"], "lora")))
    assert lora == cli_folder and lora.name.startswith("sentiment-minilm-lora-")
    assert trained == [(lora.name, 16, "default")]
    assert finetune.ensure_model(default_dir, method="lora") == lora and len(trained) == 1  # kept, not retrained
    assert not default_dir.exists()
    with pytest.raises(finetune.ConfigError, match=r"^signals\.sentiment\.training\.method: 'adapters' is not one"):
        finetune.ensure_model(default_dir, method="adapters")
