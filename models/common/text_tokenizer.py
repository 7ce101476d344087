"""Shared text tokenizer (Python side). Its twin is src/engine/text-tokenizer.ts; golden ids pin both.

Spec (a JSON file per model, e.g. models/skim/export/skim/tokenizer.json):
  {
    "type": "catskim-text-tokenizer", "version": 1,
    "normalization": "nfkc_lower_alnum",   # NFKC, then lowercase, then every char not in [a-z0-9] -> space, split on spaces
    "vocab_file": "vocab.txt",             # one word per line, relative to the spec file (or "vocab": [...] inline)
    "pad_id": 0, "unk_id": 1,              # reserved ids; padding positions carry pad_id and mask 0
    "word_offset": 2,                      # id of vocab line i = word_offset + i; a word not in the vocab -> unk_id
    "trigram_buckets": 8192,               # 0 = words only
    "trigram_offset": 10002,               # trigram id = trigram_offset + fnv1a32(utf8(trigram)) % trigram_buckets
    "hash": "fnv1a32_utf8",
    "layout": "words_then_trigrams",       # ids = [word ids of all words] + [3-grams of "<word>" for each word, in order]
    "max_length": 64,                      # default truncation length (after the layout is built)
    "max_lengths": {"query": 32, "label": 128},   # optional per-role overrides
    "num_embeddings": 18194                # trigram_offset + trigram_buckets (size of the embedding table)
  }

Character 3-grams are taken from the word wrapped in boundary marks: "cat" -> "<ca", "cat", "at>";
a one-letter word "a" -> "<a>". Nothing is de-duplicated (repeats weigh more in a mean).
Encoding returns input_ids and attention_mask (1 for real tokens, 0 for padding), truncated to the
role's max length and padded to a given length. Stdlib only (no numpy) so every tool can import it.
Unicode: Python 3.11 ships Unicode 14 and Node 20 ICU Unicode 15+; characters newer than 14 may differ.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


def normalize(text: str) -> str:
    """NFKC, lowercase, non [a-z0-9] -> single space, stripped."""
    t = unicodedata.normalize("NFKC", text).lower()
    return _NON_ALNUM.sub(" ", t).strip()


def words(text: str) -> List[str]:
    n = normalize(text)
    return n.split(" ") if n else []


def fnv1a32(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def char_trigrams(word: str) -> List[str]:
    s = "<" + word + ">"
    return [s[i:i + 3] for i in range(len(s) - 2)]


class TextTokenizer:
    def __init__(self, spec: Dict, base_dir: Optional[str] = None):
        if spec.get("type") != "catskim-text-tokenizer" or spec.get("version") != 1:
            raise ValueError("not a catskim-text-tokenizer v1 spec")
        if spec.get("normalization") != "nfkc_lower_alnum" or spec.get("hash", "fnv1a32_utf8") != "fnv1a32_utf8":
            raise ValueError("unsupported normalization or hash")
        if spec.get("layout", "words_then_trigrams") != "words_then_trigrams":
            raise ValueError("unsupported layout")
        if "vocab" in spec:
            vocab = list(spec["vocab"])
        else:
            path = os.path.join(base_dir or ".", spec["vocab_file"])
            with open(path, encoding="utf-8") as f:
                vocab = [line.rstrip("\n") for line in f if line.rstrip("\n")]
        self.spec = spec
        self.vocab = vocab
        self.pad_id = int(spec["pad_id"])
        self.unk_id = int(spec["unk_id"])
        self.word_offset = int(spec["word_offset"])
        self.buckets = int(spec.get("trigram_buckets", 0))
        self.trigram_offset = int(spec.get("trigram_offset", self.word_offset + len(vocab)))
        self.max_length = int(spec["max_length"])
        self.max_lengths = {k: int(v) for k, v in spec.get("max_lengths", {}).items()}
        self.num_embeddings = self.trigram_offset + self.buckets
        if "num_embeddings" in spec and int(spec["num_embeddings"]) != self.num_embeddings:
            raise ValueError("num_embeddings does not match trigram_offset + trigram_buckets")
        if self.trigram_offset < self.word_offset + len(vocab):
            raise ValueError("trigram ids overlap word ids")
        self.word_to_id = {}
        for i, w in enumerate(vocab):
            if w in self.word_to_id or normalize(w) != w or " " in w:
                raise ValueError(f"bad vocab entry {w!r} at line {i + 1}")
            self.word_to_id[w] = self.word_offset + i
        self._tri_cache: Dict[str, int] = {}

    @classmethod
    def from_file(cls, path: str) -> "TextTokenizer":
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        return cls(spec, os.path.dirname(os.path.abspath(path)))

    def trigram_id(self, tri: str) -> int:
        i = self._tri_cache.get(tri)
        if i is None:
            i = self.trigram_offset + fnv1a32(tri.encode("utf-8")) % self.buckets
            self._tri_cache[tri] = i
        return i

    def ids(self, text: str) -> List[int]:
        """Token ids before truncation/padding: word ids then trigram ids."""
        ws = words(text)
        out = [self.word_to_id.get(w, self.unk_id) for w in ws]
        if self.buckets > 0:
            for w in ws:
                out.extend(self.trigram_id(t) for t in char_trigrams(w))
        return out

    def max_len(self, role: Optional[str] = None) -> int:
        return self.max_lengths.get(role, self.max_length) if role else self.max_length

    def encode(self, text: str, role: Optional[str] = None, pad_to: Optional[int] = None) -> Tuple[List[int], List[int]]:
        ids = self.ids(text)[: self.max_len(role)]
        mask = [1] * len(ids)
        if pad_to is not None and pad_to > len(ids):
            extra = pad_to - len(ids)
            ids = ids + [self.pad_id] * extra
            mask = mask + [0] * extra
        return ids, mask

    def encode_batch(self, texts: Sequence[str], role: Optional[str] = None, pad: str = "longest") -> Tuple[List[List[int]], List[List[int]]]:
        """pad = "longest" (longest in the batch, at least 1) or "max" (the role's max length)."""
        raw = [self.ids(t)[: self.max_len(role)] for t in texts]
        width = self.max_len(role) if pad == "max" else max([1] + [len(r) for r in raw])
        ids, masks = [], []
        for r in raw:
            ids.append(r + [self.pad_id] * (width - len(r)))
            masks.append([1] * len(r) + [0] * (width - len(r)))
        return ids, masks


def build_spec(vocab: Iterable[str], trigram_buckets: int, max_length: int, max_lengths: Optional[Dict[str, int]] = None,
               vocab_file: Optional[str] = "vocab.txt") -> Dict:
    """A spec dict for a vocabulary (write the vocab to vocab_file yourself, or pass vocab_file=None to inline it)."""
    vocab = list(vocab)
    spec = {
        "type": "catskim-text-tokenizer", "version": 1, "normalization": "nfkc_lower_alnum", "hash": "fnv1a32_utf8",
        "layout": "words_then_trigrams", "pad_id": 0, "unk_id": 1, "word_offset": 2,
        "vocab_size": len(vocab), "trigram_buckets": int(trigram_buckets), "trigram_offset": 2 + len(vocab),
        "max_length": int(max_length), "max_lengths": dict(max_lengths or {}),
        "num_embeddings": 2 + len(vocab) + int(trigram_buckets),
    }
    if vocab_file is None:
        spec["vocab"] = vocab
    else:
        spec["vocab_file"] = vocab_file
    return spec


GOLDEN_TEXTS = [
    "Hello, World!",
    "hot_dog",
    "The quick brown fox jumps over the lazy dog.",
    "  multiple   spaces\tand\nnewlines  ",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff54\uff45\uff58\uff54",  # fullwidth -> ascii by NFKC
    "\ufb01ne \u2460 \u00bd",  # ligature fi, circled one, vulgar half
    "\u0130stanbul \u212a",  # dotted capital I, Kelvin sign
    "a",
    "",
    "!!!",
    "x1 2y 33 a-b c.d e'f",
    "\u65e5\u672c\u8a9e text \U0001F600 emoji",
    "a person who is unusually tall supercalifragilisticexpialidocious antidisestablishmentarianism " * 3,
]


def golden(tok: TextTokenizer, texts: Sequence[str] = GOLDEN_TEXTS, roles: Sequence[Optional[str]] = (None,)) -> Dict:
    cases = []
    for t in texts:
        case = {"text": t, "normalized": normalize(t), "ids": tok.ids(t)}
        for r in roles:
            ids, mask = tok.encode(t, role=r, pad_to=tok.max_len(r))
            case["input_ids" if r is None else f"input_ids_{r}"] = ids
            case["attention_mask" if r is None else f"attention_mask_{r}"] = mask
        cases.append(case)
    return {"fnv1a32": {s: fnv1a32(s.encode("utf-8")) for s in ["", "a", "<ca", "cat", "at>", "foobar"]}, "cases": cases}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write golden ids for a tokenizer spec")
    ap.add_argument("spec")
    ap.add_argument("out")
    a = ap.parse_args()
    tk = TextTokenizer.from_file(a.spec)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(golden(tk, roles=[None] + sorted(tk.max_lengths)), f, ensure_ascii=False, indent=1)
