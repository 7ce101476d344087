"""Tests for the training text (run with the other models/cat tests)."""
import os
import random
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402


def words(s):
    return tuple(re.findall(r"[a-z]+", s.lower()))


class TestHeldOut(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.paths, cls.held_path = corpus.build()
        cls.lines = {}
        for name, path in cls.paths.items():
            with open(path) as f:
                cls.lines[name] = f.read().splitlines()

    def test_bibles_hold_no_verse_of_a_held_out_book(self):
        kjv = corpus.kjv_verses()
        web = corpus.web_verses()
        for name, verses, held in (("kjv", kjv, corpus.KJV_HELD), ("web", web, corpus.WEB_HELD)):
            books = {b for b, _ in verses}
            self.assertTrue(set(held) <= books, f"{name}: held-out book names not found")
            elsewhere = {t for b, t in verses if b not in held}
            only_held = {t for b, t in verses if b in held} - elsewhere
            self.assertGreater(len(only_held), 1000)
            present = only_held & set(self.lines[name])
            self.assertEqual(present, set(), f"{name} train text holds held-out verses")
        with open(self.held_path) as f:
            self.assertEqual(f.read().splitlines(), [t for b, t in kjv if b in corpus.KJV_HELD])

    def test_other_corpora_quote_no_held_out_verse(self):
        with open(self.held_path) as f:
            held = [words(v) for v in f.read().splitlines()]
        with open(os.path.join(corpus.WORK, "web_heldout.txt")) as f:
            held += [words(v) for v in f.read().splitlines()]
        first = {}
        for v in held:
            if len(v) >= 8:
                first.setdefault(v[:8], []).append(v)
        for name in ("gcide", "fortunes"):
            hits = 0
            for line in self.lines[name]:
                w = words(line)
                for i in range(len(w) - 7):
                    for v in first.get(w[i:i + 8], ()):
                        hits += w[i:i + len(v)] == v
            self.assertEqual(hits, 0, f"{name} quotes held-out verses")


class TestNameCopy(unittest.TestCase):
    def test_answers_repeat_the_introduced_name_at_the_asked_distance(self):
        text = corpus.load_bytes(corpus.build()[0]["kjv"])
        rng = random.Random(7)
        for d_lo, d_hi in ((50, 50), (100, 300), (400, 400)):
            ids, answers = corpus.name_copy_sequence(text, 1024, rng, d_lo, d_hi)
            self.assertEqual(len(ids), 1024)
            self.assertGreater(len(answers), 0)
            s = bytes(ids.tolist())
            for a in answers:
                name = s[a[0]:a[-1] + 1]
                self.assertRegex(name.decode(), r"^[A-Z][a-z]+$")
                self.assertEqual(a, list(range(a[0], a[0] + len(name))))
                intro = s.rfind(b"named " + name, 0, a[0] - 1)
                self.assertGreaterEqual(intro, 0)
                d = a[0] - (intro + len(b"named "))
                self.assertGreaterEqual(d, d_lo)
                self.assertLessEqual(d, max(d_hi, 60))  # short d: the intro+query text alone

    def test_sampler_weights_answers(self):
        s = corpus.Sampler()
        ids, w = s.batch(4, 512, random.Random(1), 1.0, 50, 200, 4.0)
        self.assertEqual(tuple(ids.shape), (4, 512))
        self.assertTrue(((w == 1) | (w == 4)).all())
        self.assertGreater(int((w == 4).sum()), 0)


if __name__ == "__main__":
    unittest.main()
