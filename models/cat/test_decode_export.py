"""The copy-free decode.onnx (decode_export.py) against the concat graph, both in onnxruntime-node.

  /usr/bin/python3 -m unittest discover -s models/cat -p 'test_decode_export.py'

Random-init models (weights scaled so attention is far from uniform): the graphs, not the training,
are under test, so this does not depend on the committed model.pt files.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import catlib  # noqa: E402
import export  # noqa: E402
from decode_export import decode_graph  # noqa: E402

HERE = catlib.HERE
ROOT = os.path.dirname(os.path.dirname(HERE))
TOL = {"abs": 1e-5, "rel": 1e-5}
# (B, T, P): one new token (the decode step), several new tokens (prefill), and P = 0
SHAPES = [(1, 1, 0), (3, 4, 0), (1, 1, 37), (2, 3, 5), (4, 1, 300), (8, 1, 64), (2, 6, 129)]


def random_model(kind):
    torch.manual_seed(11)
    m = catlib.build(kind)
    m.eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(4)
    return m


def feeds_into_past_concat(g):
    """Concat nodes that take a past_key_/past_value_ graph input: the per-layer cache copy."""
    return [n.name for n in g.graph.node if n.op_type == "Concat"
            and any(i.startswith(("past_key_", "past_value_")) for i in n.input)]


class TestCopyFreeDecode(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.tmp = tempfile.mkdtemp(prefix="decode-export-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_same_contract_and_no_cache_copy(self):
        import onnx
        m = random_model("dense")
        paths = {}
        for graph in ("concat", "concat-free"):
            paths[graph] = os.path.join(self.tmp, f"contract-{graph}.onnx")
            export.export_decode(m, paths[graph], graph)
        a, b = (onnx.load(paths[g]) for g in ("concat", "concat-free"))
        onnx.checker.check_model(b)

        def sig(vs):
            return [(v.name, v.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in vs]
        self.assertEqual(sig(a.graph.input), sig(b.graph.input))
        self.assertEqual(sig(a.graph.output), sig(b.graph.output))
        self.assertEqual(b.opset_import[0].version, export.OPSET)
        self.assertEqual(len(feeds_into_past_concat(a)), 2 * m.cfg.n_layers)  # the check can fail
        self.assertEqual(feeds_into_past_concat(b), [])

    def test_context_restores_the_trained_forward(self):
        m = random_model("dense")
        args = export.decode_inputs(m.cfg, 2, 1, 9, 5)
        g = export.DecodeGraph(m.decoder).eval()
        with torch.no_grad():
            ref = g(*args)
            with decode_graph(m.decoder, "concat-free"):
                self.assertTrue(all("forward" in vars(layer) for layer in m.decoder.layers))
                free = g(*args)
            self.assertTrue(all("forward" not in vars(layer) for layer in m.decoder.layers))
        self.assertLess(max(float((x - y).abs().max()) for x, y in zip(ref, free)), 1e-5)
        with self.assertRaises(ValueError):
            with decode_graph(m.decoder, "fused"):
                pass

    def test_onnxruntime_parity_with_concat_graph(self):
        node = shutil.which("node")
        if not node or not os.path.isdir(os.path.join(ROOT, "node_modules", "onnxruntime-node")):
            self.skipTest("node / onnxruntime-node not available")
        for kind in ("dense", "adaptive"):
            m = random_model(kind)
            paths = {}
            for graph in ("concat", "concat-free"):
                paths[graph] = os.path.join(self.tmp, f"{kind}-{graph}.onnx")
                export.export_decode(m, paths[graph], graph)
            ins, _ = export.decode_names(m.cfg.n_layers)
            cases = []
            for i, (B, T, P) in enumerate(SHAPES):
                args = export.decode_inputs(m.cfg, B, T, P, 100 + i)
                cases.append({"name": f"B{B}_T{T}_P{P}",
                              "inputs": {n: export.tensor_json(t) for n, t in zip(ins, args)}})
            spec = os.path.join(self.tmp, f"{kind}-cases.json")
            with open(spec, "w") as f:
                json.dump({"a": paths["concat"], "b": paths["concat-free"], "tolerance": TOL,
                           "cases": cases}, f)
            p = subprocess.run([node, os.path.join(HERE, "compare_graphs.mjs"), spec],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(p.returncode, 0, f"{kind}:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
            lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
            self.assertEqual(lines[-1], {"summary": True, "cases": len(SHAPES), "failures": 0})
            print(f"\n{kind}: worst abs diff "
                  f"{max(x['max_abs_diff'] for x in lines[:-1]):.2e}, worst rel diff "
                  f"{max(x['max_rel_diff'] for x in lines[:-1]):.2e}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
