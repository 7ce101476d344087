"""Benchmark-only variant of decode.onnx without the K/V concatenation (issue 8: quantify, do not
change models/).

The shipped decode.onnx (models/cat/catlib.py Block.forward) builds kk = cat([past_k, k]) and
vv = cat([past_v, v]) inside every layer, so ONNX Runtime copies the whole cache of every layer
on every step. The same maths without that copy: scores against the past and against the new
entries separately, one joint softmax over the concatenated *scores* ([B,H,T,P+T], small for
T = 1), then p[..., :P] @ past_v + p[..., P:] @ v. Same inputs and outputs (the catskim.cat/v1
contract), so the engine runs it unchanged.

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


def forward_split(self, x, cos, sin, bias=None, past_k=None, past_v=None):
    q, k, v = self._qkv(x, cos, sin)
    q = q * self.scale
    s_new = torch.matmul(q, k.transpose(-1, -2))
    if past_k is None:
        s = s_new if bias is None else s_new + bias
        o = torch.matmul(torch.softmax(s, dim=-1), v)
        return self._finish(x, o), k, v
    P = past_k.shape[2]
    s = torch.cat([torch.matmul(q, past_k.transpose(-1, -2)), s_new], dim=-1)
    if bias is not None:
        s = s + bias
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p[..., :P], past_v) + torch.matmul(p[..., P:], v)
    return self._finish(x, o), k, v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "var", "bench", "concatfree"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    original = catlib.Block.forward
    for kind in ("adaptive", "dense"):
        model, _ = catlib.load(kind, allow_random=False)
        args = export.decode_inputs(model.cfg, 2, 3, 37, 1)
        g = export.DecodeGraph(model.decoder).eval()
        with torch.no_grad():
            ref = g(*args)
            catlib.Block.forward = forward_split
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
        export.export_decode(model, os.path.join(dst, "decode.onnx"))
        catlib.Block.forward = original
        print(f"{kind}: wrote {dst}/decode.onnx")


if __name__ == "__main__":
    main()
