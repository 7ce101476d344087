"""SKIM mapping step (arXiv 2408.09585): synthetic queries -> real training queries.

The baseline encoder (trained on observed pairs only) embeds every synthetic string; for each, keep
the top 10 training lemmas whose score (cos + 1) / 2 >= 0.8; the pair (lemma, synset) gets that
score as weight (max over the synset's strings); union with observed pairs (weight 1); clip to 1.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

TOPK = 10
THRESHOLD = 0.8


def neighbours(synthetic: Sequence[Sequence[str]], embed_strings, lemma_emb: np.ndarray, *, topk: int = TOPK, chunk: int = 4096):
    """Embed each distinct synthetic string once; its top-k training lemmas and their scores (cos + 1) / 2."""
    uniq: Dict[str, int] = {}
    for strs in synthetic:
        for s in strs:
            uniq.setdefault(s, len(uniq))
    strings = list(uniq)
    topk = min(topk, lemma_emb.shape[0])
    top_idx = np.zeros((len(strings), topk), dtype=np.int64)
    top_sc = np.zeros((len(strings), topk), dtype=np.float32)
    if strings:
        E = embed_strings(strings)
        L = torch.from_numpy(lemma_emb)
        for s in range(0, len(strings), chunk):
            cos = torch.from_numpy(E[s:s + chunk]) @ L.t()
            v, i = torch.topk(cos, topk, dim=1)
            top_idx[s:s + chunk] = i.numpy()
            top_sc[s:s + chunk] = ((v + 1) / 2).numpy()
    return uniq, top_idx, top_sc


def pairs_at(synthetic: Sequence[Sequence[str]], nb, threshold: float = THRESHOLD) -> Dict[Tuple[int, int], float]:
    """{(lemma row, label j): max score over the label's strings} for neighbours at or above the threshold."""
    uniq, top_idx, top_sc = nb
    pairs: Dict[Tuple[int, int], float] = {}
    for j, strs in enumerate(synthetic):
        for st in strs:
            u = uniq[st]
            for r in range(top_idx.shape[1]):
                sc = float(top_sc[u, r])
                if sc < threshold:
                    break
                key = (int(top_idx[u, r]), j)
                if sc > pairs.get(key, 0.0):
                    pairs[key] = sc
    return pairs


def map_synthetic(synthetic: Sequence[Sequence[str]], embed_strings, lemma_emb: np.ndarray, *,
                  topk: int = TOPK, threshold: float = THRESHOLD, chunk: int = 4096) -> Dict[Tuple[int, int], float]:
    """synthetic[j] = strings for label j; lemma_emb rows = training lemmas (in their order).
    Returns {(lemma row, label j): score}."""
    return pairs_at(synthetic, neighbours(synthetic, embed_strings, lemma_emb, topk=topk, chunk=chunk), threshold)


def union_clip(observed: Sequence[Tuple[int, int]], added: Dict[Tuple[int, int], float]) -> Tuple[np.ndarray, np.ndarray]:
    w = dict(added)
    for p in observed:
        w[p] = 1.0
    keys = sorted(w)
    return np.array(keys, dtype=np.int64).reshape(-1, 2), np.minimum(1.0, np.array([w[k] for k in keys], dtype=np.float32))
