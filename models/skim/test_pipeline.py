"""Cheap unit tests for the SKIM-mini pipeline pieces (run: /usr/bin/python3 -m unittest discover -s models/skim -p 'test_*.py')."""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.text_tokenizer import TextTokenizer, build_spec, char_trigrams, fnv1a32, normalize  # noqa: E402
import wn  # noqa: E402
from metrics import rank_metrics, topk_dense  # noqa: E402
import skim_map  # noqa: E402
from bm25 import BM25  # noqa: E402
from encoder import DualEncoder, Tokens  # noqa: E402
import generator as gen  # noqa: E402


class TokenizerTest(unittest.TestCase):
    def test_golden_fixture(self):
        d = os.path.join(HERE, "..", "common", "testdata")
        tok = TextTokenizer.from_file(os.path.join(d, "tokenizer.json"))
        g = json.load(open(os.path.join(d, "golden_ids.json"), encoding="utf-8"))
        for s, h in g["fnv1a32"].items():
            self.assertEqual(fnv1a32(s.encode()), h)
        for c in g["cases"]:
            self.assertEqual(normalize(c["text"]), c["normalized"])
            self.assertEqual(tok.ids(c["text"]), c["ids"])
            self.assertEqual(tok.encode(c["text"], pad_to=tok.max_len())[0], c["input_ids"])

    def test_rules(self):
        self.assertEqual(normalize("Hot_Dog! \uff26\uff4f\uff4f"), "hot dog foo")
        self.assertEqual(char_trigrams("a"), ["<a>"])
        self.assertEqual(fnv1a32(b"a"), 0xE40C292C)
        tok = TextTokenizer(build_spec(["cat"], 10, 4, {"query": 2}, vocab_file=None))
        self.assertEqual(tok.ids("cat dog")[:2], [2, 1])
        ids, mask = tok.encode("cat dog", role="query", pad_to=3)
        self.assertEqual((ids, mask), ([2, 1, 0], [1, 1, 0]))
        with self.assertRaises(ValueError):
            TextTokenizer(build_spec(["Cat"], 10, 4, vocab_file=None))


class WordnetTest(unittest.TestCase):
    def test_split_gloss(self):
        d, ex = wn.split_gloss('(usually followed by `to\') having the means; "able to swim"; "she was able"')
        self.assertEqual(d, "(usually followed by `to') having the means")
        self.assertEqual(ex, ["able to swim", "she was able"])
        self.assertEqual(wn.split_gloss("no examples here")[0], "no examples here")

    def test_contains_phrase(self):
        self.assertTrue(wn.contains_phrase("a hot dog stand", "hot dog"))
        self.assertFalse(wn.contains_phrase("a hotdog stand", "hot dog"))


class MetricsTest(unittest.TestCase):
    def test_rank_metrics(self):
        top = np.array([[3, 1, 2] + list(range(10, 107)), [5] + list(range(200, 299))])
        m = rank_metrics(top, [{1, 2, 500}, {7}])
        self.assertAlmostEqual(m["R@10"], (2 / 3 + 0) / 2)
        self.assertAlmostEqual(m["P@1"], 0.0)
        self.assertAlmostEqual(m["P@5"], (2 / 5) / 2)
        self.assertEqual(m["queries"], 2)
        self.assertEqual(rank_metrics(top, [set(), set()])["queries"], 0)

    def test_topk_excludes(self):
        q = np.eye(3, dtype=np.float32)
        L = np.eye(3, dtype=np.float32) + 0.01
        self.assertEqual(topk_dense(q, L, 1)[0, 0], 0)
        self.assertNotEqual(topk_dense(q, L, 1, exclude=[{0}, set(), set()])[0, 0], 0)


class MappingTest(unittest.TestCase):
    def test_threshold_topk_union_clip(self):
        lemma = np.array([[1, 0], [0.8, 0.6], [-1, 0]], dtype=np.float32)
        emb = {"x": np.array([1, 0], dtype=np.float32), "y": np.array([0, 1], dtype=np.float32)}
        pairs = skim_map.map_synthetic([["x"], ["y"]], lambda ss: np.stack([emb[s] for s in ss]), lemma, topk=10, threshold=0.8)
        # x: cos 1 -> 1.0 (lemma 0), cos 0.8 -> 0.9 (lemma 1), cos -1 -> 0 (dropped); y: lemma 1 cos 0.6 -> 0.8 kept
        self.assertEqual({k: round(v, 5) for k, v in pairs.items()}, {(0, 0): 1.0, (1, 0): 0.9, (1, 1): 0.8})
        p, w = skim_map.union_clip([(1, 0)], pairs)
        self.assertEqual([tuple(x) for x in p], [(0, 0), (1, 0), (1, 1)])
        self.assertEqual([round(float(x), 3) for x in w], [1.0, 1.0, 0.8])


class Bm25Test(unittest.TestCase):
    def test_ranks_matching_doc_first(self):
        b = BM25(["the cat sat", "a dog barked loudly", "dog dog dog"])
        self.assertEqual(list(b.topk(["dog"], 2)[0]), [2, 1])
        self.assertEqual(b.topk(["dog"], 1, exclude=[{2}])[0, 0], 1)


class EncoderTest(unittest.TestCase):
    def test_normalised_and_padding_invariant(self):
        torch.manual_seed(0)
        m = DualEncoder(50, 8, 16)
        t = Tokens([[2, 3, 4], [5]], 10)
        ids, mask = t.batch(np.array([0, 1]))
        e = m(ids, mask)
        self.assertTrue(torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5))
        e1 = m(torch.tensor([[5]]), torch.tensor([[1]]))
        self.assertTrue(torch.allclose(e[1], e1[0], atol=1e-6))


class GeneratorTest(unittest.TestCase):
    def test_stem(self):
        self.assertEqual(gen.stem("running"), "run")
        self.assertEqual(gen.stem("flies"), "fly")
        self.assertEqual(gen.stem_phrase("hot dogs"), "hot dog")

    def test_generate_counts(self):
        """count = round(sum of calibrated probabilities), 0..10; no string twice."""
        sc = gen.Scorer()
        keys = [["a", "b", "c"], [], ["d"], [f"w{i}" for i in range(30)]]
        X = [np.random.rand(len(k), gen.N_FEATURES).astype(np.float32) for k in keys]
        with torch.no_grad():
            for prm in sc.parameters():
                prm.zero_()
            sc.net[2].bias.fill_(20.0)  # p ~ 1 for every candidate
        out = gen.generate(sc, keys, X, seed=0)
        self.assertEqual([sorted(o) for o in out[:3]], [["a", "b", "c"], [], ["d"]])
        self.assertEqual(len(out[3]), gen.MAX_PER_SYNSET)
        self.assertEqual(len(set(out[3])), gen.MAX_PER_SYNSET)
        with torch.no_grad():
            sc.net[2].bias.fill_(-20.0)  # p ~ 0: the generator writes nothing
        self.assertEqual(gen.generate(sc, keys, X, seed=0), [[], [], [], []])

if __name__ == "__main__":
    unittest.main()
