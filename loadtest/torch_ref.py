"""PyTorch side of the engine-vs-reference benchmark (issue 8).

Times the reference KV-cached, batched greedy generator of models/cat/gen.py (`generate`: the
cat.md serving algorithm, one padded decode call per tick, caches grown with torch.cat) on the
same weights the ONNX graphs were exported from (models/cat/{adaptive,dense}/model.pt).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 /usr/bin/python3 loadtest/torch_ref.py \
        --kind adaptive --chunk 16 --prompts prompts.json --new 128 --runs 5 --out result.json

prompts.json: {"batches": {"1": [[ids...]], "16": [[ids...] x 16]}}. Output: per batch size the
wall time of each run (prefill included), tokens/s = batch * new / time (median of the runs), and
the generated ids of every row of the last run (the driver compares them with the engine's greedy
output). torch runs on 1 thread (the engine's ORT session uses 1 intra-op thread).
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models", "cat"))

import torch  # noqa: E402

import catlib  # noqa: E402
import gen  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["adaptive", "dense"], required=True)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, trained = catlib.load(a.kind, allow_random=False)
    with open(a.prompts) as f:
        batches = json.load(f)["batches"]
    out = {"kind": a.kind, "chunk": a.chunk if a.kind == "adaptive" else 0, "new": a.new,
           "generator": "models/cat/gen.py generate (KV-cached, batched, greedy)",
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "weights": os.path.join("models/cat", a.kind, "model.pt"), "batches": {}}
    for bs, prompts in batches.items():
        C = [a.chunk if a.kind == "adaptive" else None] * len(prompts)
        gen.generate(model, [p[:64] for p in prompts], C, 4)  # warm-up
        times = []
        rows = None
        for _ in range(a.runs):
            t0 = time.perf_counter()
            rows = gen.generate(model, [list(p) for p in prompts], C, a.new)
            times.append(time.perf_counter() - t0)
        n = len(prompts)
        out["batches"][bs] = {
            "batch": n, "times_s": times, "median_s": statistics.median(times),
            "tokens_per_s": n * a.new / statistics.median(times),
            "generated": [r.ids[len(p):] for r, p in zip(rows, prompts)],
        }
        print(f"torch {a.kind} C={out['chunk']} batch {n}: {n * a.new / statistics.median(times):.0f} tok/s "
              f"(median of {a.runs}: {statistics.median(times):.3f} s)", file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
