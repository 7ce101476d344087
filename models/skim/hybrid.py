"""The served retrieval modes, evaluated offline: sparse = SQLite FTS5 bm25() (the same table layout,
tokenizer and query form as src/index/sparse-index.ts), dense = the encoder (exact search here),
hybrid = weighted reciprocal rank fusion (Cormack et al. 2009):
    score(d) = w / (k + rank_dense(d)) + (1 - w) / (k + rank_sparse(d)),  ranks from 1,
over the top CANDIDATES of each. k and w are chosen on validation lemmas (see pipeline.py).
"""
from __future__ import annotations

import sqlite3
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

from common.text_tokenizer import normalize

CANDIDATES = 200
# bm25() column weights: words, text, meta (the synset's own words count most; hypernym words least)
COLUMN_WEIGHTS = (2.0, 1.0, 0.5)
TOKENIZE = "porter unicode61 remove_diacritics 2"


MAX_TERMS = 32


def fts_query(q: str) -> Optional[str]:
    """Distinct terms OR-ed; stopwords dropped when anything else is left (sparse-index.ts ftsQuery)."""
    from generator import STOP
    terms = list(dict.fromkeys(t for t in normalize(q).split(" ") if t))[:MAX_TERMS]
    if not terms:
        return None
    content = [t for t in terms if t not in STOP]
    return " OR ".join(f'"{t}"' for t in (content or terms))


class Sparse:
    def __init__(self, words: Sequence[str], text: Sequence[str], meta: Sequence[str]):
        self.db = sqlite3.connect(":memory:")
        self.db.execute(f"CREATE VIRTUAL TABLE labels USING fts5(words, text, meta, tokenize='{TOKENIZE}')")
        self.db.executemany("INSERT INTO labels(rowid, words, text, meta) VALUES (?, ?, ?, ?)",
                            ((i, normalize(w), normalize(t), normalize(m)) for i, (w, t, m) in enumerate(zip(words, text, meta))))
        self.sql = f"SELECT rowid FROM labels WHERE labels MATCH ? ORDER BY bm25(labels, {', '.join(map(str, COLUMN_WEIGHTS))}) LIMIT ?"

    def search(self, q: str, k: int, exclude: Optional[Set[int]] = None) -> List[int]:
        m = fts_query(q)
        if m is None:
            return []
        n = k + (len(exclude) if exclude else 0)
        rows = [r[0] for r in self.db.execute(self.sql, (m, n))]
        return [r for r in rows if not exclude or r not in exclude][:k]


def rrf(dense: Sequence[int], sparse: Sequence[int], k: float, w: float, n: int) -> List[int]:
    s: Dict[int, float] = {}
    for r, d in enumerate(dense):
        s[d] = s.get(d, 0.0) + w / (k + r + 1)
    for r, d in enumerate(sparse):
        s[d] = s.get(d, 0.0) + (1 - w) / (k + r + 1)
    return [d for d, _ in sorted(s.items(), key=lambda x: (-x[1], x[0]))[:n]]


def pad(rows: List[List[int]], n: int = 100) -> np.ndarray:
    return np.array([r[:n] + [-1] * (n - len(r[:n])) for r in rows], dtype=np.int64)


def fuse_all(dense_top: np.ndarray, sparse_top: List[List[int]], k: float, w: float, n: int = 100) -> np.ndarray:
    return pad([rrf([int(x) for x in d[:CANDIDATES]], s[:CANDIDATES], k, w, n) for d, s in zip(dense_top, sparse_top)], n)


GRID_K = (10, 30, 60)
GRID_W = (0.3, 0.5, 0.7)
