"""The detector network: a bag of token embeddings (word ids + hashed character 3-grams from the
shared tokenizer), masked mean and masked max pooling, a small MLP, C = K (+1 with CnC) outputs.

Two forward paths over the same weights:
  forward_bags(flat_ids, offsets)         training (torch embedding_bag, no padding work)
  forward(input_ids, attention_mask)      the exported graph: padded [B, T] int64 inputs
They agree to float rounding (test_detector.py checks it). The embedding table is stored in float16
in the ONNX file (Gather in fp16, then Cast to float); `round_embeddings_fp16()` makes the torch
weights equal to the shipped ones before evaluation and export.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Detector(nn.Module):
    def __init__(self, num_embeddings: int, num_outputs: int, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.num_outputs = num_outputs
        self.emb = nn.Embedding(num_embeddings, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, num_outputs)
        self.drop = nn.Dropout(0.1)

    def head(self, mean: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(self.drop(torch.cat([mean, mx], dim=1))))
        return self.fc2(self.drop(h))

    def forward_bags(self, flat_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        w = self.emb.weight
        mean = F.embedding_bag(flat_ids, w, offsets, mode="mean")
        mx = F.embedding_bag(flat_ids, w, offsets, mode="max")  # empty bags -> 0, as in forward()
        return self.head(mean, mx)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.emb(input_ids)  # [B, T, D]
        m = attention_mask.to(e.dtype).unsqueeze(-1)  # [B, T, 1]
        count = m.sum(1)  # [B, 1]
        mean = (e * m).sum(1) / count.clamp(min=1.0)
        mx = (e * m + (m - 1.0) * 1e4).max(1).values * (count > 0).to(e.dtype)
        return self.head(mean, mx)

    @torch.no_grad()
    def round_embeddings_fp16(self) -> None:
        self.emb.weight.copy_(self.emb.weight.half().float())


class ExportWrapper(nn.Module):
    """input_ids, attention_mask (int64 [B, T]) -> probs [B, C] (softmax, temperature baked in), logits [B, C]."""

    def __init__(self, det: Detector, temperature: float = 1.0):
        super().__init__()
        self.det = det
        self.temperature = float(temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        logits = self.det(input_ids, attention_mask)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=-1), logits
