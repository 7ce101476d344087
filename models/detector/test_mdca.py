"""Unit tests for the MDCA loss and the report metrics (models/detector/calib.py)."""
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calib  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


@unittest.skipIf(torch is None, "torch not importable")
class TestMDCA(unittest.TestCase):
    def test_matches_the_formula_by_hand(self):
        p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
        y = torch.tensor([0, 1, 0, 0])
        # mean p per class: [0.425, 0.4, 0.175]; label frequency: [0.75, 0.25, 0]
        expected = (abs(0.425 - 0.75) + abs(0.4 - 0.25) + abs(0.175 - 0.0)) / 3
        self.assertAlmostEqual(float(calib.mdca_loss(p, y, 3)), expected, places=6)

    def test_absent_classes_count(self):
        p = torch.tensor([[0.5, 0.25, 0.25]])
        y = torch.tensor([0])
        self.assertAlmostEqual(float(calib.mdca_loss(p, y, 3)), (0.5 + 0.25 + 0.25) / 3, places=6)

    def test_zero_when_mean_matches_frequency(self):
        p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        self.assertEqual(float(calib.mdca_loss(p, torch.tensor([1, 0]), 2)), 0.0)  # wrong but matched on average

    def test_gradient_flows_and_shape_is_checked(self):
        logits = torch.randn(8, 4, requires_grad=True)
        loss = calib.mdca_loss(torch.softmax(logits, -1), torch.randint(0, 4, (8,)), 4)
        loss.backward()
        self.assertTrue(torch.isfinite(logits.grad).all())
        self.assertGreater(float(logits.grad.abs().sum()), 0)
        with self.assertRaises(ValueError):
            calib.mdca_loss(torch.softmax(logits, -1), torch.zeros(8, dtype=torch.int64), 5)


class TestMetrics(unittest.TestCase):
    def test_ece_by_hand(self):
        conf = np.array([0.95, 0.95, 0.55, 0.55])
        correct = np.array([1, 0, 1, 1])
        # bin (14/15, 1]: acc 0.5 conf 0.95 -> 0.45 * 2/4; bin (8/15, 9/15]: acc 1 conf 0.55 -> 0.45 * 2/4
        self.assertAlmostEqual(calib.ece(conf, correct), 0.45, places=9)
        self.assertAlmostEqual(calib.ece(np.array([1.0, 0.0]), np.array([1, 0])), 0.0)

    def test_sce_perfect_and_bad(self):
        y = np.array([0, 1, 0, 1])
        onehot = np.eye(2)[y]
        self.assertAlmostEqual(calib.sce(onehot, y), 0.0)
        wrong = np.eye(2)[1 - y]
        self.assertAlmostEqual(calib.sce(wrong, y), 1.0)
        # restricted to a subset of the columns
        self.assertAlmostEqual(calib.sce(np.hstack([onehot, np.zeros((4, 1))]), y, classes=[0, 1]), 0.0)

    def test_ood_metrics_direction(self):
        rng = np.random.default_rng(0)
        id_s = rng.normal(2, 1, 2000)
        ood_s = rng.normal(0, 1, 2000)
        m = calib.ood_metrics(id_s, ood_s)
        self.assertGreater(m["auroc"], 0.9)
        self.assertLess(m["fpr95"], 0.5)
        flipped = calib.ood_metrics(ood_s, id_s)  # wrong direction must look bad
        self.assertLess(flipped["auroc"], 0.1)
        self.assertAlmostEqual(m["auroc"] + flipped["auroc"], 1.0, places=9)

    def test_auroc_ties_and_exact_values(self):
        self.assertEqual(calib.auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])), 0.5)
        self.assertEqual(calib.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])), 1.0)
        self.assertEqual(calib.auroc(np.array([0.0, 3.0]), np.array([1.0, 2.0])), 0.5)

    def test_fpr95_exact(self):
        id_s = np.arange(100, dtype=float)  # threshold keeping 95% of ID = 5
        ood_s = np.array([4.0, 5.0, 6.0, 100.0])
        self.assertAlmostEqual(calib.fpr_at_tpr(id_s, ood_s), 0.75)

    def test_average_precision(self):
        self.assertAlmostEqual(calib.average_precision(np.array([3.0, 2.0]), np.array([1.0, 0.0])), 1.0)
        # ranking: pos, neg, pos -> AP = (1/2)*1 + (1/2)*(2/3)
        self.assertAlmostEqual(calib.average_precision(np.array([3.0, 1.0]), np.array([2.0])), 0.5 + 1 / 3)


if __name__ == "__main__":
    unittest.main()
