"""Training text for the reference models, built from Debian packages into models/cat/work/
(nothing downloaded), and the training batches drawn from it.

Corpora (ASCII, one paragraph per line):
  kjv       `bible` (bible-kjv), verse references stripped
  web       World English Bible via `diatheke -b engWEB2015eb` (sword-text-web), markup stripped;
            Psalms is skipped (the module's Psalms key loops in diatheke 4.x) and KJV has them
  gcide     /usr/share/dictd/gcide.dict.dz (dict-gcide), one entry per line
  fortunes  /usr/share/games/fortunes/* (fortunes, fortunes-min), one fortune per line
Held-out books (Ruth, Ecclesiastes, Mark, 1 Peter) are kept out of EVERY training corpus:
whole books in both bibles, and in GCIDE / fortunes any paragraph that quotes a held-out KJV or
WEB verse (a shared 8-word run, confirmed by the whole verse's first 40 letters) or cites one
of those books. test_cat.py checks it.

Name-copy task (recall of a made-up name): "... a man named Zorvath ..." in ordinary text,
then 50-400 bytes later "... the man named Zorvath ...". The second copy's name bytes are the
answer (loss up-weighted). The distance follows a curriculum: the upper bound grows from
`d_lo` to `d_hi` over the first part of training (arXiv 2510.03971: easier samples first).
"""
from __future__ import annotations

import glob
import gzip
import os
import random
import re
import subprocess
import unicodedata

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
CORPORA = ("kjv", "web", "gcide", "fortunes")
# sampling weights of the training mix (the eval is on held-out KJV books)
MIX = {"kjv": 0.45, "web": 0.30, "gcide": 0.10, "fortunes": 0.15}

KJV_HELD = ("Ruth", "Eccl", "Mark", "1Pet")  # as printed by `bible`
WEB_HELD = ("Ruth", "Ecclesiastes", "Mark", "I Peter")  # as printed by diatheke
CITES = re.compile(r"\b(Ruth [ivxl]+\.|Eccl\.|Eccles\.|Mark [ivxl]+\.|1 Pet\.|I Pet\.)")
_KJV_REF = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
_WEB_REF = re.compile(r"^((?:I{1,3} )?[A-Z][A-Za-z ()]*?) (\d+):(\d+): ?(.*)$")
_TAG = re.compile(r"<[^>]*>")
_WS = re.compile(r"\s+")
WEB_RANGES = ("Gen 1:1-Job 42:17", "Prov 1:1-Mal 4:6", "Matt 1:1-Rev 22:21")


def ascii_text(s: str) -> str:
    s = (s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"')
         .replace("\u201d", '"').replace("\u2014", "--").replace("\u2013", "-"))
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    return _WS.sub(" ", s).strip()


def kjv_verses():
    raw = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True).stdout
    out = []
    for line in raw.decode("ascii").splitlines():
        m = _KJV_REF.match(line)
        if m:
            out.append((m.group(1), m.group(4).strip()))
    return out


def web_verses():
    """(book, text) of the WEB, first copy of each reference only."""
    seen, out = set(), []
    for rng in WEB_RANGES:
        raw = subprocess.run(["diatheke", "-b", "engWEB2015eb", "-f", "plain", "-k", rng],
                             check=True, capture_output=True).stdout.decode("utf-8", "replace")
        cur = None
        for line in raw.splitlines():
            m = _WEB_REF.match(line)
            if m:
                cur = None
                ref = (m.group(1), m.group(2), m.group(3))
                if ref in seen:
                    continue
                seen.add(ref)
                cur = [m.group(1), m.group(4)]
                out.append(cur)
            elif cur is not None:
                cur[1] += " " + line
    res = []
    for book, text in out:
        t = ascii_text(_TAG.sub(" ", text))
        t = re.sub(r" ([,.;:!?])", r"\1", t)
        if t:
            res.append((book, t))
    return res


def gcide_entries():
    with gzip.open("/usr/share/dictd/gcide.dict.dz", "rb") as f:
        raw = f.read().decode("utf-8", "replace")
    start = raw.find("Begin file 1 of 26")
    paras = re.split(r"\n\s*\n", raw[start:])
    return [t for t in (ascii_text(p) for p in paras) if len(t) > 20]


def fortune_entries():
    out = []
    for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if "." in os.path.basename(path) or os.path.isdir(path):
            continue
        with open(path, "rb") as f:
            raw = f.read().decode("utf-8", "replace")
        out += [t for t in (ascii_text(p) for p in raw.split("\n%\n")) if len(t) > 10]
    return out


def _words(s: str):
    return re.findall(r"[a-z]+", s.lower())


class HeldOutFilter:
    """Drops a paragraph that quotes a held-out verse or cites a held-out book."""

    def __init__(self, verses):
        self.grams, self.heads = set(), []
        for v in verses:
            w = _words(v)
            if len(w) >= 8:
                for i in range(len(w) - 7):
                    self.grams.add(tuple(w[i:i + 8]))
        self.verses = [" ".join(_words(v)) for v in verses if len(_words(v)) >= 8]

    def keep(self, para: str) -> bool:
        if CITES.search(para):
            return False
        w = _words(para)
        for i in range(len(w) - 7):
            if tuple(w[i:i + 8]) in self.grams:
                return False
        return True


def build(work: str = WORK, force: bool = False):
    """Writes work/{kjv,web,gcide,fortunes}_train.txt and work/kjv_heldout.txt."""
    os.makedirs(work, exist_ok=True)
    paths = {c: os.path.join(work, f"{c}_train.txt") for c in CORPORA}
    held_path = os.path.join(work, "kjv_heldout.txt")
    if not force and all(os.path.exists(p) for p in list(paths.values()) + [held_path]):
        return paths, held_path
    kjv = kjv_verses()
    web = web_verses()
    kjv_tr = [t for b, t in kjv if b not in KJV_HELD]
    kjv_ho = [t for b, t in kjv if b in KJV_HELD]
    web_tr = [t for b, t in web if b not in WEB_HELD]
    web_ho = [t for b, t in web if b in WEB_HELD]
    filt = HeldOutFilter(kjv_ho + web_ho)
    gcide = [p for p in gcide_entries() if filt.keep(p)]
    fortunes = [p for p in fortune_entries() if filt.keep(p)]
    for name, paras in (("kjv", kjv_tr), ("web", web_tr), ("gcide", gcide), ("fortunes", fortunes)):
        with open(paths[name], "w") as f:
            f.write("\n".join(paras) + "\n")
    with open(held_path, "w") as f:
        f.write("\n".join(kjv_ho) + "\n")
    with open(os.path.join(work, "web_heldout.txt"), "w") as f:
        f.write("\n".join(web_ho) + "\n")
    return paths, held_path


def load_bytes(path: str) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


# ----------------------------------------------------------------------------- name copy

_ON = "bcdfghjklmnprstvz"
_NUC = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODA = ("", "", "", "n", "r", "th", "s", "l", "m", "k")
KINDS = ("man", "woman", "city", "servant", "prophet", "river")


def made_up_name(rng: random.Random) -> str:
    syl = [rng.choice(_ON) + rng.choice(_NUC) + rng.choice(_CODA) for _ in range(rng.randint(2, 3))]
    return "".join(syl).capitalize()


def name_copy_pair(rng: random.Random):
    """(intro, query prefix, name): the text reads intro ... query_prefix + name."""
    name, kind = made_up_name(rng), rng.choice(KINDS)
    intro = rng.choice(("And there was a {k} named {n}. ", "Now a {k} named {n} was there. ",
                        "They saw a {k} named {n}. ")).format(k=kind, n=name)
    query = rng.choice((" Then the {k} named ", " And the {k} named ", " So the {k} named ")).format(k=kind)
    return intro, query, name


def name_copy_sequence(text: torch.Tensor, T: int, rng: random.Random, d_lo: int, d_hi: int):
    """T bytes: ordinary text with name-copy pairs (each query d bytes after its intro, d in
    [d_lo, d_hi]). Returns (ids [T], answer positions: the name bytes of each query)."""
    out, answers = bytearray(), []

    def filler(n):
        s = rng.randrange(0, len(text) - n - 1)
        return bytes(text[s:s + n].tolist())

    out += filler(rng.randint(0, 60))
    while True:
        intro, query, name = name_copy_pair(rng)
        d = rng.randint(d_lo, d_hi)
        tail = (query + name + ".").encode()
        need = len(intro) + d + len(tail)
        if len(out) + need > T:
            break
        i0 = len(out) + intro.index(name)
        out += intro.encode()
        # d = bytes from the intro's name to the query's name
        out += filler(max(0, i0 + d - len(query) - len(out)))
        a0 = len(out) + len(query)
        out += tail
        answers.append(list(range(a0, a0 + len(name))))
        out += filler(rng.randint(0, 40))
    out += filler(T - len(out))
    return torch.tensor(list(out[:T])), answers


class Sampler:
    """Draws training batches: corpus by MIX, name-copy in `name_frac` of the rows."""

    def __init__(self, work: str = WORK, mix=None):
        paths, _ = build(work)
        mix = mix or MIX
        self.names = list(mix)
        self.weights = [mix[n] for n in self.names]
        self.texts = {n: load_bytes(paths[n]) for n in self.names}

    def batch(self, B: int, T: int, rng: random.Random, name_frac: float, d_lo: int, d_hi: int,
              answer_weight: float):
        rows, weights = [], []
        for _ in range(B):
            text = self.texts[rng.choices(self.names, self.weights)[0]]
            w = torch.ones(T)
            if rng.random() < name_frac:
                ids, answers = name_copy_sequence(text, T, rng, d_lo, d_hi)
                for a in answers:
                    w[a] = answer_weight
            else:
                s = rng.randrange(0, len(text) - T - 1)
                ids = text[s:s + T].long()
            rows.append(ids)
            weights.append(w)
        return torch.stack(rows), torch.stack(weights)


if __name__ == "__main__":
    import sys
    p, h = build(force="--force" in sys.argv)
    for k, v in p.items():
        print(k, os.path.getsize(v), "bytes")
    print("kjv held-out", os.path.getsize(h), "bytes")
