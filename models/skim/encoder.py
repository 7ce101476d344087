"""The shared dual encoder (DEXML-style, arXiv 2408.09585 trains DEXML on the augmented matrix).

One encoder for queries and labels: token ids (word ids + hashed character 3-grams, one embedding
table) -> masked mean -> residual 2-layer MLP -> L2 normalisation. Loss: in-batch softmax over
label embeddings at temperature 0.05, per-pair weights (SKIM pairs carry their mapping score),
in-batch false negatives (same label or same query elsewhere in the batch) masked out.
Hard negatives (optional, second half of training): labels the current model ranks high for a query
but that are not among its positives, mined once at `hard_from` of the steps; ranks 1-`HN_SKIP` are
skipped because with incomplete labels (the very missing pairs) the closest non-positives are often
true pairs. Each pair then brings one sampled hard negative into the batch's label side.
"""
from __future__ import annotations

import math
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TEMPERATURE = 0.05
HN_SKIP = 3
HN_DEPTH = 40


class DualEncoder(nn.Module):
    def __init__(self, num_embeddings: int, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.emb = nn.Embedding(num_embeddings, dim, padding_idx=0)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        with torch.no_grad():
            self.emb.weight[0].zero_()
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.to(torch.float32).unsqueeze(-1)
        e = self.emb(input_ids) * m
        mean = e.sum(1) / m.sum(1).clamp(min=1.0)
        h = mean + self.fc2(F.gelu(self.fc1(mean)))
        return h / torch.sqrt((h * h).sum(-1, keepdim=True) + 1e-12)


class Tokens:
    """A tokenized corpus as a padded int array (ids [N, T], lengths [N]) for fast batching."""

    def __init__(self, rows: Sequence[Sequence[int]], max_len: int):
        n = len(rows)
        self.lengths = np.array([min(len(r), max_len) for r in rows], dtype=np.int64)
        width = max(1, int(self.lengths.max()) if n else 1)
        self.ids = np.zeros((n, width), dtype=np.int64)
        for i, r in enumerate(rows):
            L = self.lengths[i]
            if L:
                self.ids[i, :L] = r[:L]

    def batch(self, idx: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        L = int(self.lengths[idx].max()) if len(idx) else 1
        L = max(L, 1)
        ids = torch.from_numpy(self.ids[idx, :L])
        mask = (torch.arange(L)[None, :] < torch.from_numpy(self.lengths[idx])[:, None]).to(torch.int64)
        return ids, mask


@torch.no_grad()
def embed(model: DualEncoder, toks: Tokens, idx: Optional[np.ndarray] = None, bs: int = 2048) -> np.ndarray:
    model.eval()
    idx = np.arange(len(toks.lengths)) if idx is None else idx
    # sort by length so short rows are not padded to long ones
    order = idx[np.argsort(toks.lengths[idx], kind="stable")]
    out = np.zeros((len(idx), model.fc2.out_features), dtype=np.float32)
    pos = {int(v): i for i, v in enumerate(idx)} if len(idx) != len(toks.lengths) else None
    for s in range(0, len(order), bs):
        chunk = order[s:s + bs]
        ids, mask = toks.batch(chunk)
        e = model(ids, mask).numpy()
        if pos is None:
            out[chunk] = e
        else:
            out[[pos[int(c)] for c in chunk]] = e
    return out


def train(num_embeddings: int, q_toks: Tokens, l_toks: Tokens, pairs: np.ndarray, weights: np.ndarray, *, seed: int,
          dim: int = 64, hidden: int = 128, epochs: int = 8, batch_size: int = 512, lr: float = 3e-3,
          log=print, tag: str = "", max_steps: Optional[int] = None, steps: Optional[int] = None,
          hard_from: Optional[float] = None) -> DualEncoder:
    """pairs: int array [P, 2] of (query row, label row); weights: float [P] in (0, 1]."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DualEncoder(num_embeddings, dim, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    P = len(pairs)
    steps_per_epoch = max(1, P // batch_size)
    if steps is not None:
        # a fixed step budget for every run (equal compute whatever the number of pairs)
        epochs = max(1, math.ceil(steps / steps_per_epoch))
    if max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    total = steps if steps is not None and max_steps is None else steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    w_all = torch.from_numpy(weights.astype(np.float32))
    t0 = time.time()
    done = 0
    hn: Optional[np.ndarray] = None   # [query row -> HN_DEPTH - HN_SKIP label rows], -1 = none
    hn_at = None if hard_from is None else int(total * hard_from)
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(P)
        tot = 0.0
        n_steps = steps_per_epoch
        for s in range(steps_per_epoch):
            if done >= total:
                n_steps = max(1, s)
                break
            if hn_at is not None and hn is None and done >= hn_at:
                hn = mine_hard_negatives(model, q_toks, l_toks, pairs)
                log(f"  [{tag} seed {seed}] mined hard negatives at step {done} ({time.time() - t0:.1f}s)")
                model.train()
            done += 1
            b = perm[s * batch_size:(s + 1) * batch_size]
            qi, li = pairs[b, 0], pairs[b, 1]
            q = model(*q_toks.batch(qi))
            qi_t, li_t = torch.from_numpy(qi), torch.from_numpy(li)
            same_label = li_t[:, None] == li_t[None, :]
            same_query = qi_t[:, None] == qi_t[None, :]
            eye = torch.eye(len(b), dtype=torch.bool)
            if hn is not None:
                cand = hn[qi, rng.integers(0, hn.shape[1], len(b))]
                cand = np.where(cand >= 0, cand, li)          # no hard negative: repeat the positive (masked below)
                allr = np.concatenate([li, cand])
                lab = model(*l_toks.batch(allr))
                l, lh = lab[: len(b)], lab[len(b):]
                cand_t = torch.from_numpy(cand)
                mask_h = cand_t[None, :] == li_t[:, None]     # a column equal to the row's own positive
                logits = q @ l.t() / TEMPERATURE
                logits_q = torch.cat([logits.masked_fill(same_label & ~eye, float("-inf")),
                                      (q @ lh.t() / TEMPERATURE).masked_fill(mask_h, float("-inf"))], dim=1)
            else:
                l = model(*l_toks.batch(li))
                logits = q @ l.t() / TEMPERATURE
                logits_q = logits.masked_fill(same_label & ~eye, float("-inf"))      # query -> labels
            logits_l = logits.t().masked_fill(same_query & ~eye, float("-inf"))  # label -> queries
            tgt = torch.arange(len(b))
            w = w_all[b]
            loss = (w * (F.cross_entropy(logits_q, tgt, reduction="none") + F.cross_entropy(logits_l, tgt, reduction="none"))).sum() / (2 * w.sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.emb.weight[0].zero_()
            tot += float(loss)
        if ep == epochs - 1 or (ep + 1) % max(1, epochs // 4) == 0:
            log(f"  [{tag} seed {seed}] epoch {ep + 1}/{epochs} step {done}/{total} loss {tot / n_steps:.4f} ({time.time() - t0:.1f}s)")
    model.eval()
    return model


@torch.no_grad()
def mine_hard_negatives(model: DualEncoder, q_toks: Tokens, l_toks: Tokens, pairs: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For every query row in `pairs`: the labels at ranks HN_SKIP+1..HN_DEPTH that are not its positives."""
    L = torch.from_numpy(embed(model, l_toks))
    rows = np.unique(pairs[:, 0])
    pos: dict = {}
    for qi, li in pairs:
        pos.setdefault(int(qi), set()).add(int(li))
    out = np.full((len(q_toks.lengths), HN_DEPTH - HN_SKIP), -1, dtype=np.int64)
    Q = embed(model, q_toks, rows)
    for s in range(0, len(rows), chunk):
        top = torch.topk(torch.from_numpy(Q[s:s + chunk]) @ L.t(), HN_DEPTH + 8, dim=1).indices.numpy()
        for r, qi in enumerate(rows[s:s + chunk]):
            p = pos[int(qi)]
            negs = [int(x) for x in top[r] if int(x) not in p][HN_SKIP:HN_DEPTH]
            out[qi, : len(negs)] = negs
    return out
