"""Synthetic query generator of SKIM (arXiv 2408.09585), for WordNet synsets.

SKIM's generator writes, from each document's metadata, the queries a user could type for it. Here
the metadata are the synset's example sentences and its gloss, and the generator proposes for EVERY
synset (no confidence cut):
- the lemmas of its example sentences: each word lemmatised by WordNet's own morphy (detachment
  rules plus the exception lists, `wn.Morphy`), and 2-3-word collocations that are WordNet lemmas
  ("hot dogs" -> "hot dog");
- the phrases of its gloss: 1-3-grams of the definition that neither start nor end with a stopword,
  and the morphy lemmas of its words.
The synset's own words are never read. Mapping the strings to real queries is `skim_map.py`.
"""
from __future__ import annotations

from typing import Dict, List

from wn import Benchmark, Morphy
from common.text_tokenizer import normalize

STOP = set("""a an the of to in on at by for with from and or but as is are was were be been being it its this that
these those he she they we you i his her their our your my me him them us not no so such than then there here
into onto over under up down out off about after before again very can could would should will shall may might
must do does did done has have had having what which who whom whose when where why how all any some each one
s t""".split())

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



def _lemma_phrases(ws: List[str], morphy: Morphy, out: Dict[str, int], src: int) -> None:
    """Lemmas of each word and 2-3-word WordNet collocations of a normalised token list."""
    L = len(ws)
    for i in range(L):
        w = ws[i]
        if w not in STOP and len(w) > 1:
            for f in morphy.base_forms(w):
                out.setdefault(f.replace("_", " "), src)
        for n in (2, 3):
            if i + n > L or ws[i] in STOP or ws[i + n - 1] in STOP:
                continue
            head = "_".join(ws[i:i + n - 1])
            for last in [ws[i + n - 1]] + morphy.base_forms(ws[i + n - 1]):
                c = f"{head}_{last}"
                if c in morphy.all_lemmas:
                    out.setdefault(c.replace("_", " "), src)


def candidates(b: Benchmark, j: int, morphy: Morphy) -> Dict[str, int]:
    """candidate query -> source (0 = example lemmas, 1 = gloss phrases) for synset j."""
    s = b.synsets[j]
    out: Dict[str, int] = {}
    for e in s.examples:
        _lemma_phrases(normalize(e).split(" "), morphy, out, 0)
    ws = normalize(s.definition).split(" ") if s.definition else []
    _lemma_phrases(ws, morphy, out, 1)
    L = len(ws)
    for i in range(L):
        if ws[i] in STOP:
            continue
        for n in (1, 2, 3):
            if i + n > L or ws[i + n - 1] in STOP:
                continue
            out.setdefault(" ".join(ws[i:i + n]), 1)
    return out


def generate(b: Benchmark, morphy: Morphy, stride: int = 1) -> List[Dict[str, int]]:
    """Candidates for every synset (every `stride`-th one in smoke runs)."""
    return [candidates(b, j, morphy) if j % stride == 0 else {} for j in range(len(b.synsets))]
