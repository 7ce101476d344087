"""Text CnC ("Mixing and Corrupting", arXiv 2207.13916, adapted to text as in
shared/design/ood-calibration.md): OOD training samples made from the ID training set alone.

make_ood(a, b, rng, vocab):
  1. mix: splice a span of input B (another class) into input A. Token-span CutMix with
     lambda ~ Beta(1, 1): a span of round((1 - lambda) * len(A)) tokens of A (at least one, at most
     len(A) - 1 when A has 2+ tokens) is replaced by a span of B of the same length (or all of B).
     Inputs of fewer than MIN_TOKENS tokens are mixed by character spans the same way.
  2. corrupt: ONE corruption family, chosen uniformly, at a severity 1-5 chosen uniformly;
     per-unit rate = 0.05 * severity.
Everything is a pure function of its rng (random.Random), so pools are reproducible.
"""
from __future__ import annotations

import random
from typing import Callable, Dict, List, Sequence, Tuple

MIN_TOKENS = 3
VOWELS = set("aeiouAEIOU")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PUNCT = "!?.,;:-_'\"()[]{}/\\|@#$%^&*+=~<>"
QWERTY_ROWS = ["1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm"]
# Latin letter -> look-alike from another script (Cyrillic / Greek).
HOMOGLYPHS = {"a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "j": "\u0458", "o": "\u043e",
              "p": "\u0440", "s": "\u0455", "x": "\u0445", "y": "\u0443", "A": "\u0391", "B": "\u0392",
              "E": "\u0395", "H": "\u0397", "K": "\u039a", "M": "\u039c", "O": "\u039f", "T": "\u03a4"}


def _keyboard_neighbours() -> Dict[str, str]:
    pos = {c: (r, i) for r, row in enumerate(QWERTY_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in pos.items():
        nb = [d for d, (r2, i2) in pos.items() if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1]
        out[c] = "".join(nb)
    return out


KEY_NEIGHBOURS = _keyboard_neighbours()


def rate(severity: int) -> float:
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return 0.05 * severity


def _at_least_one(n: int, p: float, rng: random.Random) -> List[int]:
    """Indices in range(n) each picked with probability p; at least one when n > 0."""
    idx = [i for i in range(n) if rng.random() < p]
    if not idx and n > 0:
        idx = [rng.randrange(n)]
    return idx


# ---------------------------------------------------------------- character-level families
def char_insert(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    cs = list(t)
    for i in sorted(_at_least_one(len(cs), rate(s), rng), reverse=True):
        cs.insert(i, rng.choice(LETTERS))
    return "".join(cs)


def char_delete(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    if len(t) <= 1:
        return t + rng.choice(LETTERS)
    drop = set(_at_least_one(len(t), rate(s), rng))
    out = "".join(c for i, c in enumerate(t) if i not in drop)
    return out or t[0]


def char_substitute(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    cs = list(t)
    for i in _at_least_one(len(cs), rate(s), rng):
        cs[i] = rng.choice([c for c in LETTERS if c != cs[i].lower()])
    return "".join(cs)


def char_transpose(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    cs = list(t)
    if len(cs) < 2:
        return t + t
    for i in _at_least_one(len(cs) - 1, rate(s), rng):
        cs[i], cs[i + 1] = cs[i + 1], cs[i]
    return "".join(cs)


def keyboard_typo(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    cs = list(t)
    keyed = [i for i, c in enumerate(cs) if c.lower() in KEY_NEIGHBOURS]
    if not keyed:
        return char_substitute(t, s, rng)
    for j in _at_least_one(len(keyed), rate(s), rng):
        i = keyed[j]
        cs[i] = rng.choice(KEY_NEIGHBOURS[cs[i].lower()])
    return "".join(cs)


def repeat_chars(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    cs = list(t)
    for i in sorted(_at_least_one(len(cs), rate(s), rng), reverse=True):
        cs.insert(i, cs[i] * rng.randint(1, 3))
    return "".join(cs)


def drop_vowels(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    vi = [i for i, c in enumerate(t) if c in VOWELS]
    if not vi:
        return char_delete(t, s, rng)
    drop = {vi[j] for j in _at_least_one(len(vi), min(1.0, 2 * rate(s)), rng)}
    out = "".join(c for i, c in enumerate(t) if i not in drop)
    return out or t[0]


def split_words(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    """Spaces inside words."""
    inner = [i for i in range(1, len(t)) if t[i - 1].isalnum() and t[i].isalnum()]
    if not inner:
        return char_insert(t, s, rng)
    cs = list(t)
    for j in sorted(_at_least_one(len(inner), rate(s), rng), reverse=True):
        cs.insert(inner[j], " ")
    return "".join(cs)


def homoglyphs(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    hi = [i for i, c in enumerate(t) if c in HOMOGLYPHS]
    if not hi:
        return char_substitute(t, s, rng)
    cs = list(t)
    for j in _at_least_one(len(hi), min(1.0, 2 * rate(s)), rng):
        cs[hi[j]] = HOMOGLYPHS[cs[hi[j]]]
    return "".join(cs)


def inject_punct(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    cs = list(t)
    for i in sorted(_at_least_one(len(cs) + 1, rate(s), rng), reverse=True):
        cs.insert(i, "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 3))))
    return "".join(cs)


def inject_digits(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    toks = t.split()
    for i in sorted(_at_least_one(len(toks) + 1, rate(s), rng), reverse=True):
        d = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.5 and i < len(toks):
            toks[i] = toks[i] + d  # glued to a word
        else:
            toks.insert(i, d)
    return " ".join(toks)


# ---------------------------------------------------------------- token-level families
def token_drop(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    toks = t.split()
    if len(toks) < 2:
        return char_delete(t, s, rng)
    drop = set(_at_least_one(len(toks), rate(s), rng))
    if len(drop) >= len(toks):
        drop.discard(rng.randrange(len(toks)))
    return " ".join(w for i, w in enumerate(toks) if i not in drop)


def token_duplicate(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    toks = t.split()
    for i in sorted(_at_least_one(len(toks), rate(s), rng), reverse=True):
        toks.insert(i, toks[i])
    return " ".join(toks) if toks else t


def local_shuffle(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    """Shuffle tokens inside windows of severity + 1 tokens (characters for a single token)."""
    toks = t.split()
    unit, joiner = (toks, " ") if len(toks) >= 2 else (list(t), "")
    if len(unit) < 2:
        return t + t
    w = s + 1
    out = []
    for i in range(0, len(unit), w):
        chunk = unit[i:i + w]
        rng.shuffle(chunk)
        out.extend(chunk)
    if out == unit:  # make sure something moved
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return joiner.join(out)


def random_tokens(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    """Replace tokens by random in-vocabulary tokens (from the ID training vocabulary)."""
    toks = t.split()
    if not vocab or not toks:
        return char_substitute(t, s, rng)
    for i in _at_least_one(len(toks), min(1.0, 2 * rate(s)), rng):
        toks[i] = rng.choice(vocab)
    return " ".join(toks)


def truncation(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    """Keep a prefix or a suffix: 1 - 0.15 * severity of the tokens (characters for one token)."""
    toks = t.split()
    unit, joiner = (toks, " ") if len(toks) >= 2 else (list(t), "")
    if len(unit) < 2:
        return t + rng.choice(LETTERS)
    keep = max(1, min(len(unit) - 1, int(round(len(unit) * (1 - 0.15 * s)))))
    return joiner.join(unit[:keep] if rng.random() < 0.5 else unit[-keep:])


def reversal(t: str, s: int, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    """Reverse a span of 0.2 * severity of the tokens, or the characters of words at the corruption rate."""
    toks = t.split()
    if len(toks) >= 3 and rng.random() < 0.5:
        n = max(2, int(round(len(toks) * 0.2 * s)))
        i = rng.randrange(0, len(toks) - n + 1)
        toks[i:i + n] = toks[i:i + n][::-1]
        return " ".join(toks)
    if not toks:
        return t[::-1] or t
    for i in _at_least_one(len(toks), min(1.0, 2 * rate(s)), rng):
        toks[i] = toks[i][::-1]
    out = " ".join(toks)
    return out if out != t else out + out[::-1]


FAMILIES: Dict[str, Callable[..., str]] = {
    "char_insert": char_insert, "char_delete": char_delete, "char_substitute": char_substitute,
    "char_transpose": char_transpose, "keyboard_typo": keyboard_typo, "repeat_chars": repeat_chars,
    "drop_vowels": drop_vowels, "split_words": split_words, "homoglyphs": homoglyphs,
    "token_drop": token_drop, "token_duplicate": token_duplicate, "local_shuffle": local_shuffle,
    "random_tokens": random_tokens, "truncation": truncation, "reversal": reversal,
    "inject_punct": inject_punct, "inject_digits": inject_digits,
}


def corrupt(t: str, rng: random.Random, vocab: Sequence[str] = (), family: str | None = None,
            severity: int | None = None) -> Tuple[str, str, int]:
    """One random corruption family at a random severity 1-5 (or the given ones)."""
    fam = family if family is not None else rng.choice(list(FAMILIES))
    sev = severity if severity is not None else rng.randint(1, 5)
    out = FAMILIES[fam](t, sev, rng, vocab)
    return (out if out.strip() else t), fam, sev


def mix(a: str, b: str, rng: random.Random) -> str:
    """Token-span CutMix: a span of B spliced into A (character spans for very short inputs)."""
    ta, tb = a.split(), b.split()
    if len(ta) >= MIN_TOKENS and len(tb) >= 1:
        ua, ub, joiner = ta, tb, " "
    else:
        ua, ub, joiner = list(a.strip() or a), list(b.strip() or b), ""
    lam = rng.betavariate(1.0, 1.0)
    n = int(round((1.0 - lam) * len(ua)))
    n = max(1, min(n, len(ua) - 1)) if len(ua) >= 2 else 1
    n_b = min(n, len(ub))
    i = rng.randrange(0, len(ua) - n + 1)
    j = rng.randrange(0, len(ub) - n_b + 1)
    out = joiner.join(ua[:i] + ub[j:j + n_b] + ua[i + n:])
    return out


def make_ood(a: str, b: str, rng: random.Random, vocab: Sequence[str] = ()) -> str:
    """One CnC OOD sample: mix(a, b), then one corruption (b must come from another class than a)."""
    out, _, _ = corrupt(mix(a, b, rng), rng, vocab)
    return out


# ---------------------------------------------------------------- OOD samples that are not splices
# CnC's mixed samples all contain long runs of real ID text, so a detector trained on them alone
# learns splice seams and character damage. These are whole inputs that are wrong everywhere in a
# different way; none of them uses any text outside the ID training split.
def word_salad(samples: Sequence[Tuple[str, int]], rng: random.Random) -> str:
    """Words drawn at their ID frequency (the words of random ID inputs), in random order."""
    n = len(rng.choice(samples)[0].split()) + rng.randint(0, 6)
    bag: List[str] = []
    while len(bag) < 4 * max(n, 1):
        bag.extend(samples[rng.randrange(len(samples))][0].split())
    return " ".join(rng.sample(bag, max(n, 1)))


def shuffle_all(samples: Sequence[Tuple[str, int]], rng: random.Random) -> str:
    """Every word of one ID input in random order (of a 3+ word input; word salad otherwise)."""
    for _ in range(8):
        toks = rng.choice(samples)[0].split()
        if len(set(toks)) >= 3:
            out = toks[:]
            while out == toks:
                rng.shuffle(out)
            return " ".join(out)
    return word_salad(samples, rng)


class MarkovText:
    """A first-order word chain estimated on ID inputs: fluent for two words, aimless after that."""

    def __init__(self, samples: Sequence[Tuple[str, int]], rng: random.Random, max_inputs: int = 60000):
        self.next: Dict[str, List[str]] = {}
        self.starts: List[str] = []
        for t, _ in (samples if len(samples) <= max_inputs else rng.sample(list(samples), max_inputs)):
            toks = t.split()
            if len(toks) < 2:
                continue
            self.starts.append(toks[0])
            for a, b in zip(toks, toks[1:]):
                self.next.setdefault(a.lower(), []).append(b)

    def __call__(self, samples: Sequence[Tuple[str, int]], rng: random.Random) -> str:
        if not self.starts:
            return word_salad(samples, rng)
        n = max(4, len(rng.choice(samples)[0].split()) + rng.randint(2, 12))
        w = rng.choice(self.starts)
        out = [w]
        while len(out) < n:
            nxt = self.next.get(w.lower())
            w = rng.choice(nxt) if nxt else rng.choice(self.starts)
            out.append(w)
        return " ".join(out)


def concat_inputs(samples: Sequence[Tuple[str, int]], rng: random.Random) -> str:
    """2-5 whole ID inputs joined: longer and more varied than any one input (for domains whose
    inputs are short units; a long passage is in distribution for generation)."""
    return " ".join(samples[rng.randrange(len(samples))][0] for _ in range(rng.randint(2, 5)))


NONSPLICE_FAMILIES = ("word_salad", "shuffle_all", "markov", "concat")


def make_pool(samples: Sequence[Tuple[str, int]], n: int, rng: random.Random, vocab: Sequence[str] = (),
              nonsplice: float = 0.0, nonsplice_families: Sequence[str] = NONSPLICE_FAMILIES) -> List[str]:
    """n OOD samples. A share `nonsplice` are made by one of `nonsplice_families` (a corruption
    follows in half of them); the rest are CnC's: a random A, a random B of a different class,
    mixed, then corrupted."""
    by_class: Dict[int, List[str]] = {}
    for t, y in samples:
        by_class.setdefault(y, []).append(t)
    classes = sorted(by_class)
    if len(classes) < 2:
        raise ValueError("CnC mixing needs at least two classes")
    makers: Dict[str, Callable[[Sequence[Tuple[str, int]], random.Random], str]] = {
        "word_salad": word_salad, "shuffle_all": shuffle_all, "concat": concat_inputs}
    if nonsplice > 0 and "markov" in nonsplice_families:
        makers["markov"] = MarkovText(samples, rng)
    fams = [f for f in nonsplice_families if f in makers]
    out = []
    for _ in range(n):
        if fams and rng.random() < nonsplice:
            t = makers[rng.choice(fams)](samples, rng)
            out.append(corrupt(t, rng, vocab)[0] if rng.random() < 0.5 else t)
            continue
        a, ya = samples[rng.randrange(len(samples))]
        yb = rng.choice([c for c in classes if c != ya])
        b = rng.choice(by_class[yb])
        out.append(make_ood(a, b, rng, vocab))
    return out
