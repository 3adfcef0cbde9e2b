"""newsbt's sentiment classifier: a BERT-family encoder, masked mean pooling, dropout and one linear layer.

This file is also shipped, byte for byte, in every model folder ``signals.transformer.save_classifier`` writes
(as remote code named by ``auto_map`` in its config.json), so stock transformers loads the same model:

>>> pipeline("text-classification", model="data/models/sentiment-minilm", trust_remote_code=True)

It imports only torch and transformers. Its config's ``model_type`` is one stock transformers does not know, so
loading such a folder without ``trust_remote_code=True`` raises instead of building a model with a random head.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "newsbt_mean_pooling"
# Keys of the saved config that only say how to find this code; the encoder's own config is everything else.
WRAPPER_KEYS = ("model_type", "encoder_model_type", "auto_map")


class MeanPoolingConfig(PretrainedConfig):
    """The encoder's own config, flat, plus ``encoder_model_type`` (the encoder family, e.g. ``bert``).

    >>> encoder_config = MeanPoolingConfig.from_pretrained(folder).encoder_config()
    """

    model_type = MODEL_TYPE

    def encoder_config(self) -> PretrainedConfig:
        """The encoder's config (e.g. a ``BertConfig``) with this config's settings."""
        values = {key: value for key, value in self.to_dict().items() if key not in WRAPPER_KEYS}
        values.pop("architectures", None)
        encoder = AutoConfig.for_model(self.encoder_model_type, **values)
        encoder._attn_implementation = self._attn_implementation
        return encoder


class MeanPoolingClassifier(PreTrainedModel):
    """A BERT-family encoder, masked mean pooling over its token states, dropout and one linear layer.

    The base all-MiniLM-L6-v2 was trained as a mean-pooling sentence encoder, so its mean-pooled output is a
    better start than the untrained [CLS] pooler. ``config`` is a ``MeanPoolingConfig`` or the encoder's own
    config (a ``BertConfig`` with ``num_labels`` set, as when fine-tuning starts from a base encoder).

    >>> logits = MeanPoolingClassifier(config)(input_ids=ids, attention_mask=mask).logits
    """

    config_class = MeanPoolingConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        encoder_config = config.encoder_config() if isinstance(config, MeanPoolingConfig) else config
        try:
            self.encoder = AutoModel.from_config(encoder_config, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler (DistilBERT, ...) take no such argument
            self.encoder = AutoModel.from_config(encoder_config)
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs: Any) -> SequenceClassifierOutput:
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
