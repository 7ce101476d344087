"""The training path (embedding_bag) and the exported path (padded input_ids/attention_mask) agree."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    from model import Detector, ExportWrapper
except ImportError:  # pragma: no cover
    torch = None


@unittest.skipIf(torch is None, "torch not importable")
class TestDetectorModel(unittest.TestCase):
    def test_bag_and_padded_paths_agree(self):
        torch.manual_seed(0)
        m = Detector(50, 5, dim=8, hidden=16).eval()
        m.round_embeddings_fp16()
        rows = [[3, 4, 5], [7], [], [9, 9, 10, 11, 12]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        flat = torch.tensor([i for r in rows for i in r])
        offsets = torch.tensor([0, 3, 4, 4])
        with torch.no_grad():
            a = m(ids, mask)
            b = m.forward_bags(flat, offsets)
        self.assertTrue(torch.allclose(a, b, atol=1e-6), (a - b).abs().max())
        # padding content must not matter
        with torch.no_grad():
            c = m(ids.masked_fill(mask == 0, 42), mask)
        self.assertTrue(torch.allclose(a, c, atol=1e-6))

    def test_export_wrapper_outputs_softmax(self):
        m = Detector(20, 4, dim=4, hidden=8).eval()
        probs, logits = ExportWrapper(m)(torch.tensor([[1, 2]]), torch.tensor([[1, 1]]))
        self.assertTrue(torch.allclose(probs, torch.softmax(logits, -1)))
        self.assertAlmostEqual(float(probs.sum()), 1.0, places=5)

    def test_fp16_rounding_is_idempotent(self):
        m = Detector(20, 4, dim=4, hidden=8)
        m.round_embeddings_fp16()
        w = m.emb.weight.clone()
        m.round_embeddings_fp16()
        self.assertTrue(torch.equal(w, m.emb.weight))
        self.assertTrue(torch.equal(w, w.half().float()))


if __name__ == "__main__":
    unittest.main()
