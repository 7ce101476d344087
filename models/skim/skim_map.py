"""SKIM mapping step (arXiv 2408.09585): synthetic queries -> real training queries -> added pairs.

Each generated string of a synset is mapped to training lemmas (the real queries) by
- exact match of the normalised string (weight 1),
- stem match (`generator.stem_phrase`, weight 1),
- embedding neighbours: the top 10 training lemmas under the baseline encoder whose score
  (cos + 1) / 2 reaches a threshold (weight = the score; the paper uses 0.8).
Strings that the generator proposes for very many synsets ("time", "use") say little about any one
of them: strings proposed for more than `max_df` synsets are dropped. The threshold and `max_df` are
chosen on TRAINING data only: the setting whose mapped pairs best re-discover the observed training
pairs (F1). Added pairs (not observed) are unioned with the observed ones (weight 1) and clipped to 1.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from generator import stem_phrase

TOPK = 10
THRESHOLD = 0.8          # the paper's
EXACT_ONLY = 2.0         # a threshold no neighbour reaches: exact and stem matches only
THRESHOLDS = (EXACT_ONLY, 0.95, 0.9, 0.8)
MAX_DFS = (3, 10, 30, 1_000_000)
SOURCES = ("examples", "examples+gloss")


class Mapping:
    """Every (string occurrence, training lemma row, score) the grid can use, precomputed once."""

    def __init__(self, synthetic: Sequence[Dict[str, int]], lemma_norm: Sequence[str],
                 embed_strings: Optional[Callable[[List[str]], np.ndarray]], lemma_emb: Optional[np.ndarray],
                 topk: int = TOPK, min_score: float = min(THRESHOLDS), chunk: int = 4096):
        uniq: Dict[str, int] = {}
        occ_j, occ_u, occ_src = [], [], []
        for j, strs in enumerate(synthetic):
            for st, src in strs.items():
                occ_j.append(j)
                occ_u.append(uniq.setdefault(st, len(uniq)))
                occ_src.append(src)
        self.occ_src = np.array(occ_src, dtype=np.int8)
        self.strings = list(uniq)
        self.occ_j = np.array(occ_j, dtype=np.int64)
        self.occ_u = np.array(occ_u, dtype=np.int64)
        self.df = np.bincount(self.occ_u, minlength=len(self.strings))
        row_of = {q: r for r, q in enumerate(lemma_norm)}
        rows_of_stem: Dict[str, List[int]] = {}
        for r, q in enumerate(lemma_norm):
            rows_of_stem.setdefault(stem_phrase(q), []).append(r)
        # per unique string: matched rows (exact + stem), as flat (string, row) arrays
        mu, mr = [], []
        for u, st in enumerate(self.strings):
            r = row_of.get(st)
            rows = set(rows_of_stem.get(stem_phrase(st), ()))
            if r is not None:
                rows.add(r)
            for x in rows:
                mu.append(u)
                mr.append(x)
        self.match_u = np.array(mu, dtype=np.int64)
        self.match_r = np.array(mr, dtype=np.int64)
        # embedding neighbours at or above the lowest threshold of the grid
        nu, nr, ns = [], [], []
        if embed_strings is not None and lemma_emb is not None and min_score <= 1.0 and self.strings:
            L = torch.from_numpy(lemma_emb)
            k = min(topk, lemma_emb.shape[0])
            for s in range(0, len(self.strings), chunk * 8):
                E = torch.from_numpy(embed_strings(self.strings[s:s + chunk * 8]))
                for c in range(0, E.shape[0], chunk):
                    v, i = torch.topk(E[c:c + chunk] @ L.t(), k, dim=1)
                    sc = ((v + 1) / 2).numpy()
                    keep = sc >= min_score
                    uu = np.broadcast_to(np.arange(s + c, s + c + sc.shape[0])[:, None], sc.shape)
                    nu.append(uu[keep]); nr.append(i.numpy()[keep]); ns.append(sc[keep])
        self.nb_u = np.concatenate(nu) if nu else np.zeros(0, np.int64)
        self.nb_r = np.concatenate(nr) if nr else np.zeros(0, np.int64)
        self.nb_s = np.concatenate(ns).astype(np.float32) if ns else np.zeros(0, np.float32)

    def pairs(self, n_labels: int, threshold: float, max_df: int, sources: str = "examples+gloss") -> Tuple[np.ndarray, np.ndarray]:
        """(keys = row * n_labels + j, weights) of every mapped pair, deduplicated with the max weight.
        sources: "examples" keeps only strings generated from example sentences."""
        ok = self.df <= max_df
        # occurrences grouped by string: for each string, the synsets that proposed it
        occ = ok[self.occ_u] & ((self.occ_src == 0) if sources == "examples" else True)
        oj, ou = self.occ_j[occ], self.occ_u[occ]
        order = np.argsort(ou, kind="stable")
        oj, ou = oj[order], ou[order]
        start = np.searchsorted(ou, np.arange(len(self.strings)))
        cnt = np.bincount(ou, minlength=len(self.strings))

        def expand(u: np.ndarray, r: np.ndarray, w: np.ndarray):
            sel = ok[u]
            u, r, w = u[sel], r[sel], w[sel]
            n = cnt[u]
            rep_r = np.repeat(r, n)
            rep_w = np.repeat(w, n)
            base = np.repeat(start[u], n)
            off = np.arange(len(base)) - np.repeat(np.cumsum(n) - n, n)
            return rep_r * n_labels + oj[base + off], rep_w

        k1, w1 = expand(self.match_u, self.match_r, np.ones(len(self.match_u), np.float32))
        keys, ws = [k1], [w1]
        if threshold <= 1.0:
            sel = self.nb_s >= threshold
            k2, w2 = expand(self.nb_u[sel], self.nb_r[sel], self.nb_s[sel])
            keys.append(k2); ws.append(w2)
        k = np.concatenate(keys)
        w = np.concatenate(ws)
        order = np.lexsort((-w, k))
        k, w = k[order], w[order]
        first = np.ones(len(k), dtype=bool)
        first[1:] = k[1:] != k[:-1]
        return k[first], w[first]


def validate(m: Mapping, n_labels: int, observed_keys: np.ndarray, missing_keys: Optional[np.ndarray] = None,
             thresholds=THRESHOLDS, max_dfs=MAX_DFS, sources=SOURCES) -> Tuple[Dict[str, Dict], Tuple[float, int, str]]:
    """F1 of the mapped pairs against the OBSERVED training pairs for each setting (the choice uses
    nothing else); the added pairs' precision/recall on the missing pairs is reported, never used."""
    sweep: Dict[str, Dict] = {}
    best, best_f1 = (thresholds[0], max_dfs[-1], sources[-1]), -1.0
    for th, md, src in ((t, d, s) for s in sources for t in thresholds for d in max_dfs):
            k, _ = m.pairs(n_labels, th, md, src)
            obs = np.isin(k, observed_keys)
            hit = int(obs.sum())
            vp, vr = hit / max(1, len(k)), hit / max(1, len(observed_keys))
            f1 = 2 * vp * vr / max(1e-9, vp + vr)
            new = k[~obs]
            row = {"threshold": th, "max_df": md, "sources": src, "added": int(len(new)), "val_precision_observed": vp,
                   "val_recall_observed": vr, "val_f1_observed": f1}
            if missing_keys is not None:
                tp = int(np.isin(new, missing_keys).sum())
                row |= {"correct": tp, "precision": tp / max(1, len(new)), "recall_of_missing": tp / max(1, len(missing_keys))}
            sweep[f"{src}|{'exact+stem' if th > 1 else th}|df<={md}"] = row
            if f1 > best_f1:
                best, best_f1 = (th, md, src), f1
    return sweep, best


def union_clip(observed: Sequence[Tuple[int, int]], added: Dict[Tuple[int, int], float]) -> Tuple[np.ndarray, np.ndarray]:
    w = dict(added)
    for p in observed:
        w[p] = 1.0
    keys = sorted(w)
    return np.array(keys, dtype=np.int64).reshape(-1, 2), np.minimum(1.0, np.array([w[k] for k in keys], dtype=np.float32))
