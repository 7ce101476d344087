"""BM25 (k1 = 1.2, b = 0.75) over label definition + metadata, as a sparse matrix product."""
from __future__ import annotations

from typing import List, Optional, Sequence, Set

import numpy as np
import scipy.sparse as sp
import torch

from common.text_tokenizer import normalize
from metrics import masked_topk


class BM25:
    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75):
        self.vocab = {}
        rows, cols, vals = [], [], []
        lens = np.zeros(len(docs), dtype=np.float32)
        for d, text in enumerate(docs):
            ws = normalize(text).split(" ") if text else []
            lens[d] = len(ws)
            tf = {}
            for w in ws:
                tf[w] = tf.get(w, 0) + 1
            for w, c in tf.items():
                t = self.vocab.setdefault(w, len(self.vocab))
                rows.append(d); cols.append(t); vals.append(c)
        tf = sp.csr_matrix((np.array(vals, dtype=np.float32), (rows, cols)), shape=(len(docs), len(self.vocab)))
        df = np.bincount(np.array(cols), minlength=len(self.vocab)).astype(np.float32)
        idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        avg = lens.mean()
        norm = k1 * (1 - b + b * lens / avg)
        tf = tf.tocoo()
        w = idf[tf.col] * tf.data * (k1 + 1) / (tf.data + norm[tf.row])
        self.W = sp.csr_matrix((w.astype(np.float32), (tf.row, tf.col)), shape=tf.shape).T.tocsr()  # terms x docs

    def query_matrix(self, queries: Sequence[str]):
        rows, cols = [], []
        for i, q in enumerate(queries):
            for w in set(normalize(q).split(" ")):
                t = self.vocab.get(w)
                if t is not None:
                    rows.append(i); cols.append(t)
        return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(queries), len(self.vocab)))

    def topk(self, queries: Sequence[str], k: int, exclude: Optional[Sequence[Set[int]]] = None, chunk: int = 256) -> np.ndarray:
        Q = self.query_matrix(queries)
        out = np.zeros((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), chunk):
            sc = torch.from_numpy(np.asarray((Q[s:s + chunk] @ self.W).todense()))
            out[s:s + chunk] = masked_topk(sc, k, exclude, s)
        return out
