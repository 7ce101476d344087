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
import hybrid  # noqa: E402


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
    def test_exact_stem_neighbours_df_and_sources(self):
        # synthetic strings of 3 labels; training lemmas "dog", "run", "cat"
        syn = [{"dog": 0, "runs": 0}, {"dog": 1, "kitten": 0}, {"dog": 0}]
        emb = {"dog": [1, 0], "runs": [0, 1], "kitten": [0.8, 0.6]}
        lemma = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
        m = skim_map.Mapping(syn, ["dog", "run", "cat"], lambda ss: np.array([emb[s] for s in ss], dtype=np.float32), lemma, topk=3, min_score=0.8)
        NL = 3
        pairs = lambda th, md, src="examples+gloss": dict(zip(*[x.tolist() for x in m.pairs(NL, th, md, src)]))
        # exact: dog -> labels 0,1,2; stem: runs -> run (row 1) on label 0
        got = pairs(skim_map.EXACT_ONLY, 10)
        self.assertEqual(got, {0 * NL + 0: 1.0, 0 * NL + 1: 1.0, 0 * NL + 2: 1.0, 1 * NL + 0: 1.0})
        # "dog" is proposed for 3 labels: max_df 2 drops it
        self.assertEqual(pairs(skim_map.EXACT_ONLY, 2), {1 * NL + 0: 1.0})
        # sources: label 1's "dog" came from its gloss
        self.assertNotIn(0 * NL + 1, pairs(skim_map.EXACT_ONLY, 10, "examples"))
        # neighbours: kitten ~ cat: cos 0.96 -> 0.98 >= 0.95 (label 1, row 2); kitten ~ dog: cos .8 -> .9
        nb = pairs(0.95, 10)
        self.assertAlmostEqual(nb[2 * NL + 1], 0.98, places=5)
        self.assertNotIn(2 * NL + 0, nb)
        sweep, best = skim_map.validate(m, NL, np.array([0, 1 * NL + 0]), thresholds=(skim_map.EXACT_ONLY, 0.9), max_dfs=(2, 10), sources=("examples",))
        # max_df 10, examples only: pairs {0, 2, 3}, observed {0, 3}: F1 0.8 (max_df 2: {3}: F1 0.67)
        self.assertEqual(best[:2], (skim_map.EXACT_ONLY, 10))
        self.assertEqual(len(sweep), 4)

    def test_union_clip(self):
        p, w = skim_map.union_clip([(1, 0)], {(0, 0): 1.0, (1, 0): 0.9, (1, 1): 0.8})
        self.assertEqual([tuple(x) for x in p], [(0, 0), (1, 0), (1, 1)])
        self.assertEqual([round(float(x), 3) for x in w], [1.0, 1.0, 0.8])


class HybridTest(unittest.TestCase):
    def test_fts_query_matches_the_server(self):
        self.assertEqual(hybrid.fts_query("A place to SLEEP, sleep!"), '"place" OR "sleep"')
        self.assertEqual(hybrid.fts_query("the"), '"the"')
        self.assertIsNone(hybrid.fts_query("?!"))

    def test_sparse_and_rrf(self):
        sp = hybrid.Sparse(["dog", "", ""], ["a member of the genus canis", "the dogs barked", "salt water"], ["canine", "", ""])
        self.assertEqual(sorted(sp.search("dogs", 5)), [0, 1])       # porter stemming: dogs -> dog
        self.assertEqual(sp.search("dogs", 5, {0}), [1])
        self.assertEqual(sp.search("canine", 5), [0])
        # the same worked example as test/index/sparse-index.test.ts
        self.assertEqual(hybrid.rrf([1, 2, 3], [3, 4], 1, 0.5, 10), [3, 1, 2, 4])


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

    def test_morphy_uses_the_exception_lists(self):
        m = wn.Morphy()
        self.assertEqual(m.base_forms("geese"), ["goose"])          # noun.exc
        self.assertIn("run", m.base_forms("ran"))                   # verb.exc
        self.assertIn("good", m.base_forms("better"))               # adj.exc
        self.assertEqual(m.base_forms("dogs"), ["dog"])             # detachment rule
        self.assertEqual(m.base_forms("zzzq"), [])

    def test_candidates_from_examples_and_gloss(self):
        b = wn.build()
        m = wn.Morphy()
        c = gen.candidates(b, b.label_index["02086723-n"], m)
        self.assertEqual(c["bark"], 0)            # "barked" in the example, lemmatised
        self.assertEqual(c["night"], 0)
        self.assertEqual(c["common wolf"], 1)     # a gloss phrase
        self.assertEqual(c["wolf"], 1)
        self.assertNotIn("the", c)
        self.assertNotIn("dog", [k for k, v in c.items() if v == 1 and k == "domestic dog"])


if __name__ == "__main__":
    unittest.main()
