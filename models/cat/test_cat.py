"""Tests for the reference CAT (run: /usr/bin/python3 -m unittest discover -s models/cat -p 'test_*.py').

Uses the committed model.pt files when present, else random-init models.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import catlib  # noqa: E402
from gen import generate, greedy_full  # noqa: E402

torch.set_num_threads(1)
HERE = catlib.HERE
ROOT = os.path.dirname(os.path.dirname(HERE))
TOL = 1e-4


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TestBlockMask(unittest.TestCase):
    def test_structured_training_path_equals_full_block_mask(self):
        torch.manual_seed(3)
        m = catlib.build("adaptive")
        m.eval()
        with torch.no_grad():
            for p in m.parameters():  # larger weights: make attention non-uniform
                if p.dim() > 1:
                    p.mul_(5)
            ids = torch.randint(0, 256, (2, 64))
            for C in m.cfg.chunk_sizes:
                a = m.token_logits(ids, C, structured=True, index_offset=9)
                b = m.token_logits(ids, C, structured=False)
                c = m.token_logits(ids, C, structured=True)
                self.assertLess((c - b).abs().max().item(), 1e-4, f"C={C}")
                self.assertGreater((a - b).abs().max().item(), 1e-4, "chunk index must matter")

    def test_block_mask_rule(self):
        n, r, S, pos, blk = catlib.block_layout(10, 4)  # 2 full blocks + [f, SEP, 2 tokens]
        self.assertEqual((n, r, S), (2, 2, 16))
        bias = catlib.block_mask_bias(blk)[0, 0]
        visible = lambda q, k: bias[q, k].item() == 0.0  # noqa: E731
        self.assertTrue(visible(7, 6))      # token sees earlier token of its block
        self.assertFalse(visible(8, 5))     # ... not a token of an earlier block
        self.assertTrue(visible(8, 0))      # ... but earlier compressed slots
        self.assertTrue(visible(12, 6))     # f_2 sees f_1
        self.assertFalse(visible(12, 7))    # ... not SEP of block 1
        self.assertFalse(visible(6, 7))     # no future
        self.assertEqual(catlib.pred_position(0, 4), 1)
        self.assertEqual(catlib.pred_position(5, 4), 8)

    def test_recency_positions(self):
        # block k sits at k .. k+C+1: its slot index in [dummy, f_0..f_{k-1}, SEP, x..]
        _, _, _, pos, _ = catlib.block_layout(10, 4)
        self.assertEqual(pos, [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5])
        _, _, _, seq, _ = catlib.block_layout(10, 4, "sequential")
        self.assertEqual(seq, [0, 1, 2, 3, 4, 5] * 2 + [0, 1, 2, 3])
        # the serving rule gives the same positions: block 2 = [f_1, SEP, x, x] with 2 compressed
        # slots held before f_1 is appended (dummy, f_0), local emptied at the boundary
        self.assertEqual(catlib.slot_position(2, 0, True), 2)
        self.assertEqual(catlib.slot_position(3, 0, False), 3)   # SEP
        self.assertEqual(catlib.slot_position(3, 2, False), 5)   # second token after SEP
        self.assertEqual(catlib.slot_position(2, 0, True, "sequential"), 0)
        self.assertEqual(catlib.slot_position(3, 2, False, "sequential"), 3)
        with self.assertRaises(ValueError):
            catlib.slot_position(1, 1, False, "absolute")

    def test_config_without_positions_is_sequential(self):
        d = catlib.Config().to_dict()
        self.assertEqual(catlib.Config.from_dict(d).positions, "recency")
        del d["positions"]
        self.assertEqual(catlib.Config.from_dict(d).positions, "sequential")


class TestCachedGeneration(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model, cls.trained = catlib.load("adaptive")
        cls.dense, _ = catlib.load("dense")

    def _check(self, model, prompts, sizes, max_new):
        rows = generate(model, prompts, sizes, max_new)
        for p, C, r in zip(prompts, sizes, rows):
            toks, logits = greedy_full(model, p, C, max_new)
            worst = max((a - b).abs().max().item() for a, b in zip(logits, r.logits))
            self.assertLess(worst, TOL, f"C={C} P={len(p)}")
            self.assertEqual(r.ids[len(p):], toks, f"C={C} P={len(p)}")

    def test_mixed_chunk_sizes_one_batch(self):
        text = list("Now it came to pass in the days when the judges ruled, that there was a famine "
                    "in the land.".encode())
        prompts = [text[:1], text[:16], text[:37], text[:64], text[:31], text[:8], text[:5]]
        sizes = [4, 8, 16, 32, 32, 4, 16]  # exact multiples (16/8, 64/32, 8/4), length 1,
        self._check(self.model, prompts, sizes, 40)  # 31 at C=32: boundary right after prefill

    def test_dense_cached_equals_full(self):
        text = list("And God said, Let there be light: and there was light.".encode())
        self._check(self.dense, [text[:1], text[:20], text[:33]], [None] * 3, 24)

    def test_sequential_rule_cached_equals_full(self):
        torch.manual_seed(5)
        m = catlib.build("adaptive", catlib.Config(positions="sequential"))
        m.eval()
        text = list("In the beginning God created the heaven and the earth.".encode())
        self._check(m, [text[:3], text[:17], text[:33]], [4, 8, 16], 20)

    def test_untrained_chunk_size_rejected(self):
        with self.assertRaises(AssertionError):
            generate(self.model, [[65, 66]], [12], 2)


class TestFixtures(unittest.TestCase):
    def _load(self, name):
        path = os.path.join(HERE, "fixtures", name)
        if not os.path.exists(path):
            self.skipTest(f"{path} not generated")
        with open(path) as f:
            return json.load(f)

    def test_prompt_fixtures_match_model(self):
        for kind, name in (("adaptive", "adaptive.json"), ("dense", "dense.json")):
            fx = self._load(name)
            d = catlib.model_dir(kind)
            self.assertEqual(fx["model_pt_sha256"], sha256(os.path.join(d, "model.pt")), f"{name} is stale")
            model, _ = catlib.load(kind, allow_random=False)
            sizes = sorted(set(c["chunk_size"] or 0 for c in fx["cases"]))
            self.assertEqual(len(fx["cases"]), 3 * len(sizes))
            case = fx["cases"][-1]  # longest prompt, largest chunk size
            toks, logits = greedy_full(model, case["prompt_ids"], case["chunk_size"], 8)
            want = torch.tensor(case["next_logits"])
            self.assertLess((logits[0] - want).abs().max().item(), 1e-5)
            self.assertEqual(toks, case["greedy_ids"][:8])
            self.assertEqual(len(case["greedy_ids"]), 64)


class TestOnnx(unittest.TestCase):
    def test_graph_contract_and_manifest(self):
        import onnx
        for kind in ("adaptive", "dense"):
            d = catlib.model_dir(kind)
            mpath = os.path.join(d, "manifest.json")
            if not os.path.exists(mpath):
                self.skipTest("not exported")
            with open(mpath) as f:
                man = json.load(f)
            self.assertEqual(man["format"], "catskim.cat/v1")
            for name, meta in man["files"].items():
                self.assertEqual(sha256(os.path.join(d, name)), meta["sha256"], name)
            g = onnx.load(os.path.join(d, "decode.onnx"))
            L = man["n_layers"]
            ins = [i.name for i in g.graph.input]
            outs = [o.name for o in g.graph.output]
            want_in = ["input_ids", "special_embeds", "use_special", "position_ids", "attn_bias"]
            want_out = ["logits"]
            for l in range(L):
                want_in += [f"past_key_{l}", f"past_value_{l}"]
                want_out += [f"new_key_{l}", f"new_value_{l}"]
            self.assertEqual(ins, want_in)
            self.assertEqual(outs, want_out)
            self.assertEqual(g.opset_import[0].version, 17)
            ops = {n.op_type for n in g.graph.node}
            self.assertIn("Softmax", ops)
            if kind == "adaptive":
                model, _ = catlib.load(kind, allow_random=False)
                self.assertEqual(man.get("positions", "sequential"), model.cfg.positions)
                sp = os.path.getsize(os.path.join(d, "specials.bin"))
                self.assertEqual(sp, 4 * man["d_model"] * len(man["specials"]["rows"]))
                self.assertGreaterEqual(man["max_context"], 4096)
                for C in man["chunk_sizes"]:
                    cg = onnx.load(os.path.join(d, f"compress_c{C}.onnx"))
                    self.assertEqual([i.name for i in cg.graph.input], ["chunk_ids", "chunk_index"])
                    self.assertEqual([o.name for o in cg.graph.output], ["f"])

    def test_graph_fixtures_are_current_and_onnx_matches(self):
        path = os.path.join(HERE, "fixtures", "graphs.json")
        if not os.path.exists(path):
            self.skipTest("graphs.json not generated")
        from export import CompressGraph, DecodeGraph, decode_names
        with open(path) as f:
            fx = json.load(f)["graphs"]
        # 1) the PyTorch outputs stored in the fixture come from the committed model.pt
        def tens(t):
            dt = {"int64": torch.int64, "bool": torch.bool, "float32": torch.float32}[t["dtype"]]
            return torch.tensor(t["data"], dtype=dt).view(t["dims"])
        for kind in ("adaptive", "dense"):
            model, _ = catlib.load(kind, allow_random=False)
            ins, outs = decode_names(model.cfg.n_layers)
            g = DecodeGraph(model.decoder).eval()
            for case in fx[f"{kind}/decode.onnx"][:2]:
                with torch.no_grad():
                    res = g(*[tens(case["inputs"][n]) for n in ins])
                for n, t in zip(outs, res):
                    self.assertLess((t - tens(case["outputs"][n])).abs().max().item(), 1e-5, n)
            if kind == "adaptive":
                for C in model.cfg.chunk_sizes:
                    cg = CompressGraph(model.compressor, C).eval()
                    case = fx[f"adaptive/compress_c{C}.onnx"][-1]
                    with torch.no_grad():
                        f = cg(tens(case["inputs"]["chunk_ids"]), tens(case["inputs"]["chunk_index"]))
                    self.assertLess((f - tens(case["outputs"]["f"])).abs().max().item(), 1e-5)
        # 2) onnxruntime (Node) reproduces them
        node = shutil.which("node")
        if not node or not os.path.isdir(os.path.join(ROOT, "node_modules", "onnxruntime-node")):
            self.skipTest("node / onnxruntime-node not available: ONNX-vs-PyTorch check skipped")
        p = subprocess.run([node, os.path.join(HERE, "check_onnx.mjs")], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr[-3000:])


if __name__ == "__main__":
    unittest.main()
