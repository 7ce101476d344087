"""Benchmark export of the copy-free decode.onnx (models/cat/decode_export.py) next to the shipped
graphs, so `npm run bench -- --only concatfree` runs both side by side without touching models/.

    OMP_NUM_THREADS=1 /usr/bin/python3 loadtest/concat_free_export.py [--out var/bench/concatfree]

Writes <out>/{adaptive,dense}/ with the variant decode.onnx next to copies of the shipped
manifest.json, compress_c*.onnx and specials.bin (the manifest's sha256 of decode.onnx no longer
matches: load with verifySha256 off, as loadtest/engine-step.js does). Checks the variant against
the original forward in torch first (max abs diff printed; refuses above 1e-4).
"""
import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "models", "cat"))

import torch  # noqa: E402

import catlib  # noqa: E402
import export  # noqa: E402
from decode_export import decode_graph  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "var", "bench", "concatfree"))
    ap.add_argument("--graph", default="concat-free", choices=["concat-free", "concat"],
                    help="which decode graph to write (concat: the baseline, whatever models/ ships)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for kind in ("adaptive", "dense"):
        model, _ = catlib.load(kind, allow_random=False)
        args = export.decode_inputs(model.cfg, 2, 3, 37, 1)
        g = export.DecodeGraph(model.decoder).eval()
        with torch.no_grad():
            ref = g(*args)
            with decode_graph(model.decoder, "concat-free"):
                new = g(*args)
        diff = max(float((r - n).abs().max()) for r, n in zip(ref, new))
        print(f"{kind}: concat-free vs original forward, max abs diff {diff:.2e}")
        if diff > 1e-4:
            raise SystemExit(f"{kind}: the concat-free forward differs from the original ({diff})")
        src = catlib.model_dir(kind)
        dst = os.path.join(a.out, kind)
        os.makedirs(dst, exist_ok=True)
        for f in os.listdir(src):
            if f.endswith(".onnx") and f != "decode.onnx" or f in ("manifest.json", "specials.bin"):
                shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
        export.export_decode(model, os.path.join(dst, "decode.onnx"), a.graph)
        print(f"{kind}: wrote {dst}/decode.onnx ({a.graph})")


if __name__ == "__main__":
    main()
