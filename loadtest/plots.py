"""Plots for BENCHMARKS.md from the benchmark JSON (loadtest/bench.ts) and the model report
(models/cat/eval.json). matplotlib from Debian's /usr/bin/python3, Agg backend.

    /usr/bin/python3 loadtest/plots.py --bench bench/results/bench.json \
        --eval models/cat/eval.json --out loadtest/plots

Writes (whatever the JSON holds):
  chunk_tradeoff.png      quality (held-out bits/byte; recall) vs decode speed and KV memory per
                          chunk size, dense as the reference point (4k context, batch 8)
  decode_throughput.png   decode tokens/s vs batch, per model, at 1k and 4k context
  batching.png            output tokens/s vs concurrency (gRPC closed loop) and the x-fold gain
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(r):
    c = r["config"]
    return "dense" if c["model"] == "dense" else f"CAT C={c['C']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with open(a.bench) as f:
        bench = json.load(f)
    with open(a.eval) as f:
        ev = json.load(f)
    quality = {}
    for r in ev.get("results", []):
        key = "dense" if r.get("chunk_size") in (None, 0) else f"CAT C={r['chunk_size']}"
        quality[key] = r
    trained = ev.get("trained", {})
    note = "" if all(trained.values()) else "  [models/cat/eval.json: models not fully trained yet]"
    wrote = []

    grid = (bench.get("catdense") or {}).get("results", [])
    sel = [r for r in grid if r["config"]["ctx"] == a.ctx and r["config"]["B"] == a.batch]
    if sel and quality:
        fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
        for r in sel:
            k = label(r)
            q = quality.get(k)
            if not q:
                continue
            color = "black" if k == "dense" else None
            kv = r["kvBytesPerRequest"] / 1024
            ax[0].scatter(r["tokensPerS"], q["heldout_bits_per_byte"], s=60, color=color)
            ax[0].annotate(k, (r["tokensPerS"], q["heldout_bits_per_byte"]), textcoords="offset points", xytext=(5, 5))
            ax[1].scatter(kv, q["heldout_bits_per_byte"], s=60, color=color)
            ax[1].annotate(k, (kv, q["heldout_bits_per_byte"]), textcoords="offset points", xytext=(5, 5))
            ax[2].scatter(kv, q["recall_accuracy"], s=60, color=color)
            ax[2].annotate(k, (kv, q["recall_accuracy"]), textcoords="offset points", xytext=(5, 5))
        ax[0].set_xlabel(f"decode tokens/s (context {a.ctx}, batch {a.batch})")
        ax[0].set_ylabel("held-out bits/byte (lower is better)")
        ax[1].set_xlabel(f"KV cache per request at {a.ctx} tokens (KiB, log)")
        ax[1].set_xscale("log")
        ax[1].set_ylabel("held-out bits/byte")
        ax[2].set_xlabel(f"KV cache per request at {a.ctx} tokens (KiB, log)")
        ax[2].set_xscale("log")
        ax[2].set_ylabel("associative recall accuracy")
        for x in ax:
            x.grid(alpha=0.3)
        fig.suptitle("Chunk-size trade-off: quality vs speed and memory" + note, fontsize=11)
        fig.tight_layout()
        p = os.path.join(a.out, "chunk_tradeoff.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        wrote.append(p)

    if grid:
        ctxs = sorted({r["config"]["ctx"] for r in grid})
        fig, ax = plt.subplots(1, len(ctxs), figsize=(6 * len(ctxs), 4.2), squeeze=False)
        for i, ctx in enumerate(ctxs):
            models = sorted({label(r) for r in grid if r["config"]["ctx"] == ctx}, key=lambda s: (s != "dense", len(s), s))
            for m in models:
                pts = sorted([(r["config"]["B"], r["tokensPerS"]) for r in grid if r["config"]["ctx"] == ctx and label(r) == m])
                ax[0][i].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m,
                              color="black" if m == "dense" else None, linewidth=2 if m == "dense" else 1.2)
            ax[0][i].set_xscale("log", base=2)
            ax[0][i].set_xlabel("batch (concurrent sequences)")
            ax[0][i].set_ylabel("decode tokens/s")
            ax[0][i].set_title(f"context {ctx}")
            ax[0][i].grid(alpha=0.3)
            ax[0][i].legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(a.out, "decode_throughput.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        wrote.append(p)

    rows = (bench.get("batching") or {}).get("rows", [])
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["concurrency"] for r in rows]
        ax.plot(xs, [r["outputTokPerS"] for r in rows], marker="o", label="continuous batching (gRPC)")
        ax.axhline(rows[0]["outputTokPerS"], color="gray", linestyle="--", label="one at a time")
        for r in rows:
            ax.annotate(f"{r['speedup']:.1f}x", (r["concurrency"], r["outputTokPerS"]), textcoords="offset points", xytext=(4, -12))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel("output tokens/s")
        ax.set_title("CAT C=16, prompt 200 B, 64 new tokens")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = os.path.join(a.out, "batching.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        wrote.append(p)
    for p in wrote:
        print(f"wrote {os.path.relpath(p)}")


if __name__ == "__main__":
    main()
