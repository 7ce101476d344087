"""The training path (embedding_bag) and the exported path (padded input_ids/attention_mask) agree,
including the hashed word pairs computed inside the graph and the length feature."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    from model import Detector, ExportWrapper, pair_ids
except ImportError:  # pragma: no cover
    torch = None

TRIGRAM_OFFSET = 20  # ids below are words (0 = pad, 1 = unk), ids from 20 on are 3-grams


@unittest.skipIf(torch is None, "torch not importable")
class TestDetectorModel(unittest.TestCase):
    def paths(self, m, rows):
        width = max(1, max(len(r) for r in rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        words = [[i for i in r if i < TRIGRAM_OFFSET] for r in rows]
        pairs = [pair_ids(w, m.pair_buckets) for w in words]
        flat = torch.tensor([i for r in rows for i in r], dtype=torch.int64)
        off = torch.tensor([sum(len(r) for r in rows[:k]) for k in range(len(rows))])
        pflat = torch.tensor([i for r in pairs for i in r], dtype=torch.int64)
        poff = torch.tensor([sum(len(r) for r in pairs[:k]) for k in range(len(pairs))])
        nw = torch.tensor([len(w) for w in words])
        with torch.no_grad():
            return m(ids, mask), m.forward_bags(flat, off, pflat, poff, nw), ids, mask

    def test_bag_and_padded_paths_agree(self):
        torch.manual_seed(0)
        m = Detector(50, 5, TRIGRAM_OFFSET, pair_buckets=13, dim=8, hidden=16).eval()
        m.round_embeddings_fp16()
        rows = [[3, 4, 5, 30, 31], [7, 25], [], [9, 9, 10, 11, 12, 40, 41, 42], [1, 1, 33]]
        a, b, ids, mask = self.paths(m, rows)
        self.assertTrue(torch.allclose(a, b, atol=1e-5), (a - b).abs().max())
        # padding content must not matter
        with torch.no_grad():
            c = m(ids.masked_fill(mask == 0, 42), mask)
            d = m(ids.masked_fill(mask == 0, 3), mask)
        self.assertTrue(torch.allclose(a, c, atol=1e-6))
        self.assertTrue(torch.allclose(a, d, atol=1e-6))

    def test_word_order_matters(self):
        torch.manual_seed(1)
        m = Detector(50, 3, TRIGRAM_OFFSET, pair_buckets=101, dim=8, hidden=16).eval()
        a, _, _, _ = self.paths(m, [[3, 4, 5, 6], [6, 5, 4, 3]])
        self.assertFalse(torch.allclose(a[0], a[1], atol=1e-4), "a bag of the same ids in another order must differ")

    def test_pair_ids_formula(self):
        self.assertEqual(pair_ids([2, 3, 4], 7), [(2 * 1_000_003 + 3) % 7, (3 * 1_000_003 + 4) % 7])
        self.assertEqual(pair_ids([5], 7), [])

    def test_export_wrapper_outputs(self):
        m = Detector(30, 4, TRIGRAM_OFFSET, pair_buckets=11, dim=4, hidden=8).eval()
        probs, id_probs, logits = ExportWrapper(m, 3, 2.0)(torch.tensor([[2, 3, 25]]), torch.tensor([[1, 1, 1]]))
        self.assertTrue(torch.allclose(probs, torch.softmax(logits, -1)))
        self.assertTrue(torch.allclose(id_probs, torch.softmax(logits[:, :3] / 2.0, -1)))
        self.assertAlmostEqual(float(id_probs.sum()), 1.0, places=5)
        self.assertEqual(tuple(id_probs.shape), (1, 3))

    def test_fp16_rounding_is_idempotent(self):
        m = Detector(20, 4, TRIGRAM_OFFSET, pair_buckets=7, dim=4, hidden=8)
        m.round_embeddings_fp16()
        w, p = m.emb.weight.clone(), m.pair_emb.weight.clone()
        m.round_embeddings_fp16()
        self.assertTrue(torch.equal(w, m.emb.weight))
        self.assertTrue(torch.equal(p, m.pair_emb.weight))
        self.assertTrue(torch.equal(w, w.half().float()))


if __name__ == "__main__":
    unittest.main()
