"""Ranking metrics over all labels: Recall@k, P@k, nDCG@k (binary relevance), top-k in chunks."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
import torch

KS = (1, 5, 10, 100)


def topk_dense(q: np.ndarray, labels: np.ndarray, k: int, exclude: Optional[Sequence[Set[int]]] = None, chunk: int = 512) -> np.ndarray:
    """Exact top-k label rows by inner product for each query row; `exclude[i]` rows are never returned."""
    L = torch.from_numpy(labels)
    out = np.zeros((len(q), k), dtype=np.int64)
    for s in range(0, len(q), chunk):
        out[s:s + chunk] = masked_topk(torch.from_numpy(q[s:s + chunk]) @ L.t(), k, exclude, s)
    return out


def masked_topk(sc: torch.Tensor, k: int, exclude: Optional[Sequence[Set[int]]], offset: int) -> np.ndarray:
    """Top-k column indices of each score row; row r never returns the columns in exclude[offset + r]."""
    if exclude is not None:
        for r in range(sc.shape[0]):
            ex = exclude[offset + r]
            if ex:
                sc[r, list(ex)] = float("-inf")
    return torch.topk(sc, k, dim=1).indices.numpy()


def rank_metrics(top: np.ndarray, relevant: Sequence[Set[int]]) -> Dict[str, float]:
    """Mean over queries with at least one relevant label."""
    acc = {"R@10": 0.0, "R@100": 0.0, "P@1": 0.0, "P@5": 0.0, "nDCG@10": 0.0}
    n = 0
    disc = [1.0 / math.log2(i + 2) for i in range(10)]
    for row, rel in zip(top, relevant):
        if not rel:
            continue
        n += 1
        hits = [int(x) in rel for x in row[:100]]
        acc["R@10"] += sum(hits[:10]) / len(rel)
        acc["R@100"] += sum(hits[:100]) / len(rel)
        acc["P@1"] += hits[0]
        acc["P@5"] += sum(hits[:5]) / 5
        dcg = sum(d for d, h in zip(disc, hits[:10]) if h)
        idcg = sum(disc[: min(10, len(rel))])
        acc["nDCG@10"] += dcg / idcg
    return {k: (v / n if n else float("nan")) for k, v in acc.items()} | {"queries": n}
