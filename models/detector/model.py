"""The detector network: features that see word order, pooled, then a small MLP with C = K (+1 with
CnC) outputs.

Features of one input (the shared tokenizer's ids: word ids, then hashed character 3-grams):
  tokens   embeddings of every word id and 3-gram id: masked mean and masked max
  pairs    embeddings of hashed adjacent-word pairs, computed from the word ids inside the graph
           (pair id = (a * PAIR_MULT + b) mod pair_buckets for consecutive word ids a, b), so the
           tokenizer (and its TypeScript twin) stay unchanged: masked mean and masked max
  length   log(1 + number of words)
Word ids are the ids below `trigram_offset` (the tokenizer's layout puts all of them first, and the
detector reads at most 64 words, far under max_length, so no word is ever truncated away).

Two forward paths over the same weights:
  forward_bags(tok_flat, tok_off, pair_flat, pair_off, n_words)   training (embedding_bag)
  forward(input_ids, attention_mask)                               the exported graph ([B, T] int64)
They agree to float rounding (test_model.py checks it). Embedding tables are stored in float16 in
the ONNX file (Gather in fp16, then Cast); `round_embeddings_fp16()` makes the torch weights equal
to the shipped ones before evaluation and export.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

PAIR_MULT = 1_000_003  # a * PAIR_MULT + b stays far below 2^63 for any vocabulary size used here


def pair_ids(word_ids: Sequence[int], pair_buckets: int) -> List[int]:
    """Hashed adjacent-word pair ids (the same formula as the graph)."""
    return [(a * PAIR_MULT + b) % pair_buckets for a, b in zip(word_ids, word_ids[1:])]


class Detector(nn.Module):
    def __init__(self, num_embeddings: int, num_outputs: int, trigram_offset: int, pair_buckets: int = 8191,
                 dim: int = 64, hidden: int = 192):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.num_outputs = num_outputs
        self.trigram_offset = int(trigram_offset)
        self.pair_buckets = int(pair_buckets)
        self.emb = nn.Embedding(num_embeddings, dim)
        self.pair_emb = nn.Embedding(pair_buckets, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        nn.init.normal_(self.pair_emb.weight, std=0.1)
        self.fc1 = nn.Linear(4 * dim + 1, hidden)
        self.fc2 = nn.Linear(hidden, num_outputs)
        self.drop = nn.Dropout(0.1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(self.drop(feats)))
        return self.fc2(self.drop(h))

    def forward_bags(self, tok_flat: torch.Tensor, tok_off: torch.Tensor, pair_flat: torch.Tensor,
                     pair_off: torch.Tensor, n_words: torch.Tensor) -> torch.Tensor:
        w, pw = self.emb.weight, self.pair_emb.weight
        feats = torch.cat([
            F.embedding_bag(tok_flat, w, tok_off, mode="mean"),
            F.embedding_bag(tok_flat, w, tok_off, mode="max"),  # empty bags -> 0, as in forward()
            F.embedding_bag(pair_flat, pw, pair_off, mode="mean"),
            F.embedding_bag(pair_flat, pw, pair_off, mode="max"),
            torch.log1p(n_words.to(w.dtype)).unsqueeze(1),
        ], dim=1)
        return self.head(feats)

    @staticmethod
    def _pool(e: torch.Tensor, m: torch.Tensor):
        count = m.sum(1)  # [B, 1]
        mean = (e * m).sum(1) / count.clamp(min=1.0)
        mx = (e * m + (m - 1.0) * 1e4).max(1).values * (count > 0).to(e.dtype)
        return mean, mx

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.emb(input_ids)  # [B, T, D]
        m = attention_mask.to(e.dtype).unsqueeze(-1)  # [B, T, 1]
        t_mean, t_max = self._pool(e, m)
        word = attention_mask * (input_ids < self.trigram_offset).to(attention_mask.dtype)  # [B, T] int64
        zero = torch.zeros_like(input_ids[:, :1])
        nxt = torch.cat([input_ids[:, 1:], zero], dim=1)
        nxt_word = torch.cat([word[:, 1:], zero], dim=1)
        pid = torch.remainder(input_ids * PAIR_MULT + nxt, self.pair_buckets)
        pm = (word * nxt_word).to(e.dtype).unsqueeze(-1)
        p_mean, p_max = self._pool(self.pair_emb(pid), pm)
        n_words = word.sum(1).to(e.dtype)
        return self.head(torch.cat([t_mean, t_max, p_mean, p_max, torch.log1p(n_words).unsqueeze(1)], dim=1))

    @torch.no_grad()
    def round_embeddings_fp16(self) -> None:
        self.emb.weight.copy_(self.emb.weight.half().float())
        self.pair_emb.weight.copy_(self.pair_emb.weight.half().float())


class ExportWrapper(nn.Module):
    """input_ids, attention_mask (int64 [B, T]) ->
         probs     [B, C]  softmax over all C outputs (P(OOD) = probs[:, K]; the gate's score)
         id_probs  [B, K]  softmax over the K in-distribution logits divided by `id_temperature`
                           (the served label probability: renormalised over the ID classes, then
                           temperature-scaled on validation data)
         logits    [B, C]"""

    def __init__(self, det: Detector, num_id_classes: int, id_temperature: float = 1.0):
        super().__init__()
        self.det = det
        self.k = int(num_id_classes)
        self.id_temperature = float(id_temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        logits = self.det(input_ids, attention_mask)
        id_probs = torch.softmax(logits[:, :self.k] / self.id_temperature, dim=-1)
        return torch.softmax(logits, dim=-1), id_probs, logits
