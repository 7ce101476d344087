"""Synthetic query generator: the "small LM" of SKIM (arXiv 2408.09585), scaled down.

For each synset it reads only the metadata (example sentences, hypernym definitions; the synset's
own definition is used only as a feature) and proposes query strings: candidates are the 1-3-grams of
the metadata (not starting or ending with a stopword); a small MLP scores them from cheap features;
it is trained on the observed pairs of training lemmas only (a candidate is positive when it equals,
or stem-matches, an observed lemma of that synset). Generation samples: the
count = the scorer's expected number of real queries (0..10), drawn without replacement from
softmax(logit / T) with T = 0.8.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wn import Benchmark, query_text
from common.text_tokenizer import normalize

STOP = set("""a an the of to in on at by for with from and or but as is are was were be been being it its this that
these those he she they we you i his her their our your my me him them us not no so such than then there here
into onto over under up down out off about after before again very can could would should will shall may might
must do does did done has have had having what which who whom whose when where why how all any some each one
s t""".split())

TEMPERATURE = 0.8
MAX_PER_SYNSET = 10
N_FEATURES = 18


def stem(w: str) -> str:
    for suf, rep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""), ("ly", "")):
        if len(w) - len(suf) >= 2 and w.endswith(suf):
            w = w[: len(w) - len(suf)] + rep
            if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]
            return w
    return w


def stem_phrase(p: str) -> str:
    return " ".join(stem(w) for w in p.split(" "))


def candidates(b: Benchmark, j: int) -> Dict[str, List[float]]:
    """candidate -> [count in examples, count in hypernym defs, first relative position]"""
    s = b.synsets[j]
    segs = [(normalize(e), 0) for e in s.examples] + [(normalize(b.synsets[b.label_index[h]].definition), 1) for h in s.hypernyms]
    out: Dict[str, List[float]] = {}
    for text, src in segs:
        ws = text.split(" ") if text else []
        L = len(ws)
        for i in range(L):
            if ws[i] in STOP:
                continue
            for n in (1, 2, 3):
                if i + n > L or ws[i + n - 1] in STOP:
                    continue
                c = " ".join(ws[i:i + n])
                v = out.get(c)
                if v is None:
                    out[c] = v = [0.0, 0.0, i / max(1, L)]
                v[src] += 1
    return out


class Featurizer:
    def __init__(self, b: Benchmark):
        self.b = b
        df: Counter = Counter()
        for s in b.synsets:
            df.update(set(normalize(s.definition + " " + " ".join(s.examples)).split(" ")))
        n = len(b.synsets)
        self.idf = {w: math.log((n + 1) / (c + 1)) for w, c in df.items()}
        self.max_idf = math.log(n + 1)
        self.train_lemmas = {normalize(query_text(b.lemmas[i])) for i in b.train_lemmas}
        self.train_stems = {stem_phrase(q) for q in self.train_lemmas}
        self.def_norm = [f" {normalize(s.definition)} " for s in b.synsets]
        self.pos_idx = {"n": 0, "v": 1, "a": 2, "s": 2, "r": 3}

    def features(self, j: int, cands: Dict[str, List[float]]) -> Tuple[List[str], np.ndarray]:
        keys = list(cands)
        X = np.zeros((len(keys), N_FEATURES), dtype=np.float32)
        d = self.def_norm[j]
        pos = self.pos_idx[self.b.synsets[j].pos]
        for r, c in enumerate(keys):
            ce, ch, rel = cands[c]
            ws = c.split(" ")
            idfs = [self.idf.get(w, self.max_idf) / self.max_idf for w in ws]
            X[r, len(ws) - 1] = 1
            X[r, 3] = math.log1p(ce)
            X[r, 4] = math.log1p(ch)
            X[r, 5] = ce > 0
            X[r, 6] = f" {c} " in d
            exact = c in self.train_lemmas
            X[r, 7] = exact
            X[r, 8] = (not exact) and stem_phrase(c) in self.train_stems
            X[r, 9] = min(idfs)
            X[r, 10] = sum(idfs) / len(idfs)
            X[r, 11] = rel
            X[r, 12] = len(c) / 10
            X[r, 13] = any(ch.isdigit() for ch in c)
            X[r, 14 + pos] = 1
        return keys, X


class Scorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.GELU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def build_candidates(b: Benchmark, feat: Featurizer, stride: int = 1) -> Tuple[List[List[str]], List[np.ndarray]]:
    keys_all, X_all = [], []
    for j in range(len(b.synsets)):
        k, X = feat.features(j, candidates(b, j) if j % stride == 0 else {})
        keys_all.append(k)
        X_all.append(X)
    return keys_all, X_all


def train_scorer(b: Benchmark, keys_all, X_all, seed: int, log=print) -> Tuple[Scorer, Dict]:
    """Positives: candidates equal (or stem-equal) to an observed lemma of a training lemma's synset."""
    obs_by_label: Dict[int, Set[str]] = {}
    for i in b.train_lemmas:
        q = normalize(query_text(b.lemmas[i]))
        for j in b.observed[i]:
            obs_by_label.setdefault(j, set()).add(q)
    Xs, ys = [], []
    for j, qs in obs_by_label.items():
        if not keys_all[j]:
            continue
        stems = {stem_phrase(q) for q in qs}
        y = np.array([(k in qs) or (stem_phrase(k) in stems) for k in keys_all[j]], dtype=np.float32)
        Xs.append(X_all[j])
        ys.append(y)
    X = torch.from_numpy(np.concatenate(Xs))
    y = torch.from_numpy(np.concatenate(ys))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Scorer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    n = len(y)
    for ep in range(4):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, 8192):
            bi = perm[s:s + 8192]
            loss = F.binary_cross_entropy_with_logits(model(X[bi]), y[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        z = model(X)
        p = torch.sigmoid(z)
        pred = p > 0.5
        tp = float((pred & (y > 0)).sum())
        info = {"train_candidates": n, "train_positives": int(y.sum()), "train_synsets": len(Xs),
                "train_bce": float(F.binary_cross_entropy_with_logits(z, y)),
                "train_precision@0.5": tp / max(1.0, float(pred.sum())), "train_recall@0.5": tp / max(1.0, float(y.sum()))}
    log(f"  generator: {info}")
    return model, info


@torch.no_grad()
def generate(model: Scorer, keys_all, X_all, seed: int, temperature: float = TEMPERATURE,
             max_per: int = MAX_PER_SYNSET) -> List[List[str]]:
    """Sampled synthetic queries per synset. How many: the scorer's expected number of real queries
    among the candidates (sum of calibrated probabilities, rounded, 0..max_per); which: sampled
    without replacement from softmax(logit / T) (Gumbel top-k), as one sampled completion would."""
    rng = np.random.default_rng(seed + 7)
    sizes = [len(k) for k in keys_all]
    X = torch.from_numpy(np.concatenate([x for x in X_all if len(x)]))
    z = model(X).numpy().astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    gumbel = z / temperature - np.log(-np.log(rng.random(len(z)) + 1e-12) + 1e-12)
    out: List[List[str]] = []
    o = 0
    for j, n in enumerate(sizes):
        if n == 0:
            out.append([])
            continue
        want = int(min(max_per, n, round(float(p[o:o + n].sum()))))
        idx = np.argsort(-gumbel[o:o + n])[:want]
        out.append([keys_all[j][i] for i in idx])
        o += n
    return out
