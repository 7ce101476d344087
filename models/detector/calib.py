"""MDCA loss (arXiv 2203.13834) and the evaluation metrics of the detector report.

MDCA: for a minibatch of N samples with softmax p over C classes and labels y,
    L_MDCA = (1/C) * sum_j | (1/N) sum_i p_ij - (1/N) sum_i 1[y_i = j] |
classes absent from the batch still count (their target frequency is 0).
Calibration metrics use 15 equal-width bins: ECE on the top-1 probability, SCE averaging the
per-class calibration error over all classes. OOD metrics take an ID score (higher = more
in-distribution) with ID as the positive class: AUROC, AUPR-In (ID positive), AUPR-Out (OOD
positive, score negated) and FPR95 (share of OOD at or above the threshold that keeps 95% of ID).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

N_BINS = 15


def mdca_loss(probs, labels, num_classes: int):
    """probs: float tensor [N, C] (softmax output), labels: int64 tensor [N]. Returns a scalar tensor."""
    import torch

    if probs.dim() != 2 or probs.shape[1] != num_classes:
        raise ValueError(f"probs must be [N, {num_classes}], got {tuple(probs.shape)}")
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(probs.dtype)
    return (probs.mean(0) - onehot.mean(0)).abs().mean()


def _bin_index(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    # Equal-width bins (0, 1/15], (1/15, 2/15], ...; a confidence of exactly 0 goes to the first bin.
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error on top-1 confidence (a fraction; x100 for %)."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    b = _bin_index(conf, n_bins)
    total = 0.0
    for k in range(n_bins):
        m = b == k
        if m.any():
            total += m.sum() / len(conf) * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def sce(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None = None, n_bins: int = N_BINS) -> float:
    """Static calibration error: the per-class binned calibration error of p_k against 1[y = k],
    averaged over the classes (all columns of probs unless `classes` is given)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    cols = list(range(probs.shape[1])) if classes is None else list(classes)
    n = len(labels)
    total = 0.0
    for k in cols:
        p = probs[:, k]
        hit = (labels == k).astype(np.float64)
        b = _bin_index(p, n_bins)
        for j in range(n_bins):
            m = b == j
            if m.any():
                total += m.sum() / n * abs(hit[m].mean() - p[m].mean())
    return float(total / len(cols))


def reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> Dict[str, list]:
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    b = _bin_index(conf, n_bins)
    out = {"bin_upper": [(k + 1) / n_bins for k in range(n_bins)], "count": [], "accuracy": [], "confidence": []}
    for k in range(n_bins):
        m = b == k
        out["count"].append(int(m.sum()))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
    return out


def auroc(id_score: np.ndarray, ood_score: np.ndarray) -> float:
    """P(ID score > OOD score) + 0.5 P(tie): the Mann-Whitney statistic with average ranks."""
    s = np.concatenate([id_score, ood_score]).astype(np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n1, n0 = len(id_score), len(ood_score)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def average_precision(pos_score: np.ndarray, neg_score: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, thresholds at the distinct scores)."""
    s = np.concatenate([pos_score, neg_score]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos_score)), np.zeros(len(neg_score))])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.concatenate([distinct, [len(s) - 1]])
    tp = np.cumsum(y)[idx]
    fp = (idx + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / len(pos_score)
    prev = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - prev) * precision))


def fpr_at_tpr(id_score: np.ndarray, ood_score: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD samples with score >= t, where t is the highest threshold keeping >= tpr of ID."""
    srt = np.sort(np.asarray(id_score, dtype=np.float64))[::-1]
    k = int(np.ceil(tpr * len(srt))) - 1
    t = srt[k]
    return float(np.mean(np.asarray(ood_score, dtype=np.float64) >= t))


def ood_metrics(id_score: np.ndarray, ood_score: np.ndarray) -> Dict[str, float]:
    return {
        "auroc": auroc(id_score, ood_score),
        "aupr_in": average_precision(id_score, ood_score),
        "aupr_out": average_precision(-np.asarray(ood_score), -np.asarray(id_score)),
        "fpr95": fpr_at_tpr(id_score, ood_score, 0.95),
    }
