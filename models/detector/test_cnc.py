"""Unit tests for the text CnC mixing and corruption code (models/detector/cnc.py).

  /usr/bin/python3 -m unittest discover -s models/detector -p 'test_*.py'
"""
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cnc  # noqa: E402

A = "And God said, Let there be light: and there was light."
B = "Blessed are the meek: for they shall inherit the earth."
VOCAB = ["apple", "run", "red", "light", "earth"]


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class TestCorruptions(unittest.TestCase):
    def test_every_family_changes_text_at_every_severity(self):
        for name, fn in cnc.FAMILIES.items():
            for sev in range(1, 6):
                for seed in range(20):
                    for text in (A, "dog", "hot dog"):
                        out = fn(text, sev, random.Random(seed), VOCAB)
                        self.assertIsInstance(out, str)
                        self.assertTrue(out.strip(), f"{name} emptied {text!r}")
                        if name != "local_shuffle" or len(set(text.split())) > 1:
                            self.assertNotEqual(out, text, f"{name} sev {sev} seed {seed} left {text!r} unchanged")

    def test_severity_increases_damage(self):
        # The mean edit distance grows with severity for the rate-based character families.
        for name in ("char_insert", "char_delete", "char_substitute", "keyboard_typo", "inject_punct"):
            means = []
            for sev in (1, 3, 5):
                d = [levenshtein(A, cnc.FAMILIES[name](A, sev, random.Random(s), VOCAB)) for s in range(60)]
                means.append(sum(d) / len(d))
            self.assertLess(means[0], means[1], name)
            self.assertLess(means[1], means[2], name)

    def test_rate_and_bad_severity(self):
        self.assertAlmostEqual(cnc.rate(1), 0.05)
        self.assertAlmostEqual(cnc.rate(5), 0.25)
        for bad in (0, 6):
            with self.assertRaises(ValueError):
                cnc.rate(bad)

    def test_corrupt_picks_one_family_and_a_severity(self):
        seen_f, seen_s = set(), set()
        for seed in range(400):
            out, fam, sev = cnc.corrupt(A, random.Random(seed), VOCAB)
            self.assertIn(fam, cnc.FAMILIES)
            self.assertTrue(1 <= sev <= 5)
            seen_f.add(fam)
            seen_s.add(sev)
            # deterministic given the rng
            self.assertEqual(out, cnc.corrupt(A, random.Random(seed), VOCAB)[0])
        self.assertEqual(seen_f, set(cnc.FAMILIES))
        self.assertEqual(seen_s, {1, 2, 3, 4, 5})

    def test_random_tokens_use_the_vocabulary(self):
        out = cnc.random_tokens("a b c d e f g h i j", 5, random.Random(3), ["zebra"])
        self.assertIn("zebra", out.split())
        self.assertTrue(set(out.split()) <= set("abcdefghij") | {"zebra"})

    def test_homoglyphs_are_not_latin(self):
        out = cnc.homoglyphs("cocoa espresso", 5, random.Random(0))
        self.assertTrue(any(ord(c) > 127 for c in out))


class TestMixing(unittest.TestCase):
    def test_token_span_from_b_spliced_into_a(self):
        ta, tb = A.split(), B.split()
        for seed in range(200):
            out = cnc.mix(A, B, random.Random(seed)).split()
            from_b = [w for w in out if w in tb and w not in ta]
            self.assertTrue(from_b, f"nothing of B in {out}")
            kept_a = [w for w in out if w in ta and w not in tb]
            self.assertTrue(kept_a, f"nothing of A left in {out}")  # lambda span leaves part of A
            # B's tokens form one contiguous span of B
            span = [w for w in out if w in tb and w not in ta]
            self.assertIn(" ".join(span), " ".join(tb))

    def test_span_length_follows_lambda(self):
        # lambda ~ Beta(1,1) = U(0,1): the share of A replaced is spread over (0, 1).
        long_a = " ".join(f"a{i}" for i in range(100))
        long_b = " ".join(f"b{i}" for i in range(100))
        shares = [sum(w.startswith("b") for w in cnc.mix(long_a, long_b, random.Random(s)).split()) / 100 for s in range(500)]
        mean = sum(shares) / len(shares)
        self.assertAlmostEqual(mean, 0.5, delta=0.06)
        self.assertLess(min(shares), 0.1)
        self.assertGreater(max(shares), 0.9)

    def test_short_inputs_mix_characters(self):
        for seed in range(100):
            out = cnc.mix("dog", "zebra", random.Random(seed))
            self.assertNotIn(" ", out)
            self.assertTrue(set(out) & set("zebra") - set("dog"), out)
            self.assertTrue(set(out) & set("dog"), out)

    def test_pool_mixes_different_classes(self):
        samples = [("alpha beta gamma delta", 0), ("one two three four", 1), ("red green blue cyan", 2)]
        pool = cnc.make_pool(samples, 300, random.Random(5), ["zebra"])
        self.assertEqual(len(pool), 300)
        groups = [set(t.split()) for t, _ in samples]
        for out in pool:
            # every sample carries material from two different source texts (modulo corruption)
            hits = [len(g & set(out.split())) > 0 for g in groups]
            self.assertLessEqual(sum(hits), 2)
            self.assertNotIn(out, [t for t, _ in samples])
        with self.assertRaises(ValueError):
            cnc.make_pool([("a b c", 0), ("d e f", 0)], 3, random.Random(0))

    def test_pool_is_reproducible(self):
        samples = [("alpha beta gamma delta", 0), ("one two three four", 1)]
        self.assertEqual(cnc.make_pool(samples, 50, random.Random(9)), cnc.make_pool(samples, 50, random.Random(9)))


SAMPLES = [("the quick brown fox jumps over the lazy dog", 0), ("a domesticated carnivorous mammal", 1),
           ("move fast by using one's feet", 2), ("dog", 0), ("a building where travellers can pay for lodging", 1),
           ("the dog barked all night", 2)]
ID_WORDS = {w for t, _ in SAMPLES for w in t.split()}


class TestNonSplice(unittest.TestCase):
    def test_word_salad_and_shuffle_use_id_words_only(self):
        for seed in range(100):
            rng = random.Random(seed)
            for fn in (cnc.word_salad, cnc.shuffle_all):
                out = fn(SAMPLES, rng)
                self.assertTrue(out.split())
                self.assertTrue(set(out.split()) <= ID_WORDS, out)
                self.assertNotIn(out, [t for t, _ in SAMPLES])

    def test_shuffle_all_keeps_the_words_of_one_input(self):
        for seed in range(50):
            out = cnc.shuffle_all(SAMPLES, random.Random(seed)).split()
            self.assertTrue(any(sorted(out) == sorted(t.split()) for t, _ in SAMPLES), out)

    def test_markov_follows_id_word_transitions(self):
        chain = cnc.MarkovText(SAMPLES, random.Random(0))
        pairs = {(a.lower(), b) for t, _ in SAMPLES for a, b in zip(t.split(), t.split()[1:])}
        starts = {t.split()[0] for t, _ in SAMPLES if len(t.split()) >= 2}
        for seed in range(50):
            out = chain(SAMPLES, random.Random(seed)).split()
            self.assertGreaterEqual(len(out), 4)
            for a, b in zip(out, out[1:]):
                self.assertTrue((a.lower(), b) in pairs or b in starts, (a, b))

    def test_concat_joins_several_whole_inputs(self):
        for seed in range(50):
            out = cnc.concat_inputs(SAMPLES, random.Random(seed))
            n = len(out.split())
            self.assertGreaterEqual(n, 2)
            self.assertTrue(set(out.split()) <= ID_WORDS)

    def test_pool_share_of_nonsplice_samples(self):
        pool_all = cnc.make_pool(SAMPLES, 400, random.Random(1), ["zebra"], nonsplice=1.0,
                                 nonsplice_families=("word_salad",))
        # word salad, then a corruption in about half of them: the uncorrupted ones are ID words only
        clean = sum(set(t.split()) <= ID_WORDS for t in pool_all)
        self.assertGreater(clean, 120)
        self.assertLess(clean, 320)
        self.assertEqual(cnc.make_pool(SAMPLES, 60, random.Random(3), (), 0.5),
                         cnc.make_pool(SAMPLES, 60, random.Random(3), (), 0.5))


if __name__ == "__main__":
    unittest.main()
