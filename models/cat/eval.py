"""Evaluation report: held-out bits per byte and associative-recall accuracy per chunk size and
for the dense baseline, plus KV slots per request. Writes models/cat/eval.json, EVAL.md, eval.png.

  /usr/bin/python3 models/cat/eval.py      (run under the train lock: about 2-3 minutes)
"""
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import catlib  # noqa: E402

T = 1024
BATCH = 8
RECALL_SEQS = 192
RECALL_PAIRS = 12
RECALL_SEED = 777


QUICK = os.environ.get("CAT_EVAL_QUICK") == "1"  # code-path smoke run: 2 windows, 8 sequences


def windows(text):
    n = (len(text) - 1) // T
    if QUICK:
        n = 2
    return text[:n * T].view(n, T)


@torch.no_grad()
def predictions(model, ids, C):
    """[B, T, V] logits where [:, i] predicts token i (i >= 1 for dense; all i for CAT)."""
    if C is None:
        lg = model.full_logits(ids)
        return torch.cat([torch.zeros_like(lg[:, :1]), lg[:, :-1]], 1)
    return model.token_logits(ids, C, structured=True)


@torch.no_grad()
def bits_per_byte(model, C, data):
    nll, count = 0.0, 0
    for s in range(0, data.shape[0], BATCH):
        ids = data[s:s + BATCH]
        lg = predictions(model, ids, C)[:, 1:]  # token 0 excluded for every model (dense cannot predict it)
        nll += F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
        count += ids[:, 1:].numel()
    return nll / count / math.log(2)


@torch.no_grad()
def recall(model, C, seqs):
    hit, byte_hit, total = 0, 0, 0
    for s in range(0, len(seqs), BATCH):
        part = seqs[s:s + BATCH]
        ids = torch.stack([p[0] for p in part])
        pred = predictions(model, ids, C).argmax(-1)
        for b, (_, targets) in enumerate(part):
            for q in targets:
                ok = [bool(pred[b, i] == ids[b, i]) for i in q]
                byte_hit += sum(ok)
                hit += all(ok)
                total += 1
    return hit / total, byte_hit / (3 * total)


@torch.no_grad()
def diagnostics(model, data, sizes, windows_n=16):
    """Where the CAT's bits go: the first byte of each chunk (predicted by SEP from compressed
    vectors only) vs the other bytes, and the same model with every f replaced by dummy_C
    (compressed information removed). First chunk of each window excluded."""
    data = data[:windows_n]
    out = []
    for C in sizes:
        lg = model.token_logits(data, C)
        nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), data.reshape(-1), reduction="none").view(data.shape)[:, C:]
        j = torch.arange(C, data.shape[1]) % C
        orig = model.compressor.forward
        model.compressor.forward = lambda ids, idx, CC, weight=None: model.dummy_for(CC).expand(ids.shape[0], -1)
        try:
            lg2 = model.token_logits(data, C)
        finally:
            model.compressor.forward = orig
        nll2 = F.cross_entropy(lg2.reshape(-1, lg2.shape[-1]), data.reshape(-1), reduction="none").view(data.shape)[:, C:]
        b = lambda x: round(x.mean().item() / math.log(2), 4)  # noqa: E731
        out.append({"chunk_size": C, "bits_per_byte": b(nll), "first_byte_of_chunk": b(nll[:, j == 0]),
                    "other_bytes": b(nll[:, j != 0]), "without_compressed_vectors": b(nll2)})
        print(json.dumps(out[-1]), flush=True)
    return {"windows": int(data.shape[0]), "rows": out,
            "note": "first chunk of each window excluded; 'without_compressed_vectors' replaces every "
                    "f by dummy_C (ablation)"}


def kv_slots(N, C):
    return N if C is None else 1 + N // C + C + 1


def main():
    torch.set_num_threads(1)
    if "--only-diagnostics" in sys.argv:  # refresh the diagnostics of an existing eval.json
        path = os.path.join(catlib.HERE, "eval.json")
        with open(path) as f:
            out = json.load(f)
        _, held = catlib.kjv_split(os.path.join(catlib.HERE, "work"))
        ada, _ = catlib.load("adaptive", allow_random=False)
        out["diagnostics"] = diagnostics(ada, windows(held), ada.cfg.chunk_sizes)
        catlib.write_json(path, out)
        write_md(out)
        plot(out)
        return
    t0 = time.time()
    _, held = catlib.kjv_split(os.path.join(catlib.HERE, "work"))
    data = windows(held)
    rng = random.Random(RECALL_SEED)
    seqs = [catlib.recall_sequence(held, T, rng, RECALL_PAIRS) for _ in range(8 if QUICK else RECALL_SEQS)]
    ada, ada_trained = catlib.load("adaptive", allow_random=False)
    dense, dense_trained = catlib.load("dense", allow_random=False)
    cfg = ada.cfg
    rows = []
    for C in list(cfg.chunk_sizes) + [None]:
        model = dense if C is None else ada
        bpb = bits_per_byte(model, C, data)
        acc, byte_acc = recall(model, C, seqs)
        row = {"model": "dense" if C is None else f"cat_c{C}", "chunk_size": C,
               "heldout_bits_per_byte": round(bpb, 4), "recall_accuracy": round(acc, 4),
               "recall_value_byte_accuracy": round(byte_acc, 4),
               "kv_slots_1k": kv_slots(1024, C), "kv_slots_4k": kv_slots(4096, C),
               "kv_reduction_4k_vs_dense": round(4096 / kv_slots(4096, C), 2),
               "kv_bytes_4k_fp32": kv_slots(4096, C) * 2 * cfg.n_layers * cfg.d_model * 4}
        rows.append(row)
        print(json.dumps(row), flush=True)
    tr = {}
    for kind in ("adaptive", "dense"):
        with open(os.path.join(catlib.model_dir(kind), "train_log.json")) as f:
            tr[kind] = json.load(f)["summary"]
    out = {"format": "catskim.cat.eval/v1",
           "heldout": {"books": list(catlib.HELD_OUT_BOOKS), "windows": int(data.shape[0]),
                       "window_bytes": T, "scored_bytes": int(data.shape[0] * (T - 1)),
                       "note": "bits/byte over tokens 1..1023 of each non-overlapping 1024-byte "
                               "window (token 0 excluded for all models); CAT uses the block-masked "
                               "full forward, i.e. what cached generation computes"},
           "recall": {"sequences": len(seqs), "pairs_per_sequence": RECALL_PAIRS,
                      "format": "'abc=123;' x 12 at the start, held-out KJV filler, then every key "
                                "again (shuffled) at the end; a query is a hit when all 3 value bytes "
                                "are the argmax under teacher forcing; chance ~ 0.001",
                      "seed": RECALL_SEED},
           "kv_slots": "per layer per request: CAT 1 + floor(N/C) + C + 1 (upper bound: compressed + "
                       "SEP + local tokens), dense N",
           "trained": {"adaptive": ada_trained and bool(tr["adaptive"].get("steps", 0) > 100),
                       "dense": dense_trained and bool(tr["dense"].get("steps", 0) > 100)},
           "training": tr, "results": rows}
    out["diagnostics"] = diagnostics(ada, data, cfg.chunk_sizes)
    out["eval_seconds"] = round(time.time() - t0, 1)
    catlib.write_json(os.path.join(catlib.HERE, "eval.json"), out)
    write_md(out)
    plot(out)
    print(f"eval done in {out['eval_seconds']} s")


def write_md(ev):
    r = ev["results"]
    dense = [x for x in r if x["chunk_size"] is None][0]
    lines = ["# CAT evaluation (generated by models/cat/eval.py)", "",
             "Adaptive CAT (arXiv 2511.05313) trained once on chunk sizes 4/8/16/32 and a dense "
             "transformer with the same decoder (D=128, 4 layers, 4 heads), both on the same number "
             "of KJV + recall tokens. Held-out books: " + ", ".join(ev["heldout"]["books"]) + ".", "",
             "| model | held-out bits/byte | recall (all 3 bytes) | recall (per byte) | KV slots @1k | KV slots @4k | KV reduction @4k |",
             "|---|---|---|---|---|---|---|"]
    for x in r:
        lines.append(f"| {x['model']} | {x['heldout_bits_per_byte']:.4f} | {x['recall_accuracy']:.3f} | "
                     f"{x['recall_value_byte_accuracy']:.3f} | {x['kv_slots_1k']} | {x['kv_slots_4k']} | "
                     f"{x['kv_reduction_4k_vs_dense']}x |")
    t = ev["training"]
    lines += ["",
              f"Training: adaptive {t['adaptive']['steps']} steps, {t['adaptive']['tokens']:,} tokens, "
              f"{t['adaptive']['seconds']} s ({t['adaptive']['tokens_per_s']} tokens/s); dense "
              f"{t['dense']['steps']} steps, {t['dense']['tokens']:,} tokens, {t['dense']['seconds']} s "
              f"({t['dense']['tokens_per_s']} tokens/s). 2 shared CPU cores.", "",
              f"Held-out: {ev['heldout']['windows']} windows x {ev['heldout']['window_bytes']} bytes; "
              + ev["heldout"]["note"] + ".", "",
              "Recall: " + ev["recall"]["format"] + f" ({ev['recall']['sequences']} sequences).", "",
              "KV slots: " + ev["kv_slots"] + ".", "", "![eval](eval.png)", "", "## Reading", ""]
    lines += trade_off_text(r, dense, ev.get("diagnostics"))
    dg = ev.get("diagnostics")
    if dg:
        lines += ["", "## Diagnostics: where the CAT's bits go", "",
                  f"{dg['windows']} held-out windows; {dg['note']}.", "",
                  "| C | bits/byte | first byte of a chunk | other bytes | without compressed vectors |",
                  "|---|---|---|---|---|"]
        for x in dg["rows"]:
            lines.append(f"| {x['chunk_size']} | {x['bits_per_byte']:.3f} | {x['first_byte_of_chunk']:.3f} | "
                         f"{x['other_bytes']:.3f} | {x['without_compressed_vectors']:.3f} |")
    with open(os.path.join(catlib.HERE, "EVAL.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def trade_off_text(r, dense, dg=None):
    cat = [x for x in r if x["chunk_size"] is not None]
    bpbs = [x["heldout_bits_per_byte"] for x in cat]
    recs = [x["recall_accuracy"] for x in cat]
    rising = all(a <= b + 1e-3 for a, b in zip(bpbs, bpbs[1:]))
    falling = all(a >= b - 1e-3 for a, b in zip(bpbs, bpbs[1:]))
    trend = " -> ".join(f"{b:.3f}" for b in bpbs)
    out = []
    if rising:
        out.append(f"* Quality vs chunk size: bits/byte {trend} for C = 4 -> 32 (dense "
                   f"{dense['heldout_bits_per_byte']:.3f}): it rises with C, the paper's trade-off "
                   "(more compression, slightly worse modelling).")
    else:
        txt = (f"* Quality vs chunk size: bits/byte {trend} for C = 4 -> 32 (dense "
               f"{dense['heldout_bits_per_byte']:.3f}). "
               + ("This is the **opposite** of the paper's ordering (there, smaller C is better and "
                  "approaches dense). " if falling else "Not monotone in C. "))
        if dg:
            first = [x["first_byte_of_chunk"] for x in dg["rows"]]
            other = [x["other_bytes"] for x in dg["rows"]]
            abl = [x["without_compressed_vectors"] - x["bits_per_byte"] for x in dg["rows"]]
            txt += (f"The diagnostics below say why: the first byte of every chunk, which the decoder "
                    f"predicts from compressed vectors alone, costs {min(first):.2f}-{max(first):.2f} "
                    f"bits (about a byte unigram), against {min(other):.2f}-{max(other):.2f} for the "
                    f"other bytes. The compressed vectors do carry context (removing them costs "
                    f"{min(abl):.2f}-{max(abl):.2f} bits/byte) but not yet the chunk's last bytes, so at "
                    f"this training budget (~5M bytes) a small C, which puts more bytes at or near a chunk "
                    f"start with few raw predecessors, loses more than it gains from finer compression. The paper's ordering needs a compressor that "
                    f"transmits its chunk, i.e. far more training; this run shows the mechanism, not the "
                    f"converged trade-off.")
        out.append(txt)
    if max(recs + [dense["recall_accuracy"]]) < 0.05:
        out.append(f"* Recall: {' -> '.join(f'{a:.3f}' for a in recs)} (dense {dense['recall_accuracy']:.3f}); "
                   "per value byte " + ", ".join("%.3f" % x["recall_value_byte_accuracy"] for x in cat) + " "
                   f"(dense {dense['recall_value_byte_accuracy']:.3f}), i.e. chance for a digit (0.1). "
                   "**No model, dense included, learned in-context recall at this budget**, so the "
                   "recall side of the trade-off is not measurable here; the dense failure shows the "
                   "limit is training compute, not the CAT. The task and metric are in place for a "
                   "longer run (`CAT_STEPS`/`CAT_SECONDS` in build.sh).")
    else:
        mono = all(a >= b - 0.02 for a, b in zip(recs, recs[1:])) and recs[0] > recs[-1] + 0.02
        out.append(f"* Recall: {' -> '.join(f'{a:.3f}' for a in recs)} for C = 4 -> 32 (dense "
                   f"{dense['recall_accuracy']:.3f}); "
                   + ("it falls as C grows, as the paper reports (recall goes through one compressed "
                      "vector per chunk)." if mono else "no clean monotone trend at this budget."))
    out.append("* Memory (visible, exact): the KV cache per request at 4k context is "
               + ", ".join(f"{x['kv_reduction_4k_vs_dense']}x (C={x['chunk_size']})" for x in cat)
               + " smaller than dense; one trained model serves every C, so C is a per-request "
                 "quality/memory knob (the paper's adaptive claim). The dense baseline here has the CAT "
                 "decoder's width (D=128); against a dense model of the compressor's width (D/2, the "
                 "paper's recipe Dg = 2 Dc) each reduction halves (about 2x, 3.9x, 7.5x, 12.6x at 4k, "
                 "the figures in cat.md).")
    out.append("* Scale caveat: each model saw about 5M bytes on two shared CPU cores (minutes, not "
               "the paper's GPU budget). Absolute bits/byte are far from converged, and the "
               "dense-vs-CAT gap mixes architecture with under-training.")
    return out


def plot(ev):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    r = ev["results"]
    cat = [x for x in r if x["chunk_size"] is not None]
    dense = [x for x in r if x["chunk_size"] is None][0]
    Cs = [x["chunk_size"] for x in cat]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].plot(Cs, [x["heldout_bits_per_byte"] for x in cat], "o-", label="adaptive CAT")
    ax[0].axhline(dense["heldout_bits_per_byte"], color="k", ls="--", label="dense")
    ax[0].set_title("held-out bits/byte (lower is better)")
    ax[1].plot(Cs, [x["recall_accuracy"] for x in cat], "o-", label="adaptive CAT")
    ax[1].axhline(dense["recall_accuracy"], color="k", ls="--", label="dense")
    ax[1].set_title("associative recall accuracy")
    ax[1].set_ylim(-0.02, 1.02)
    ax[2].plot(Cs, [x["kv_slots_4k"] for x in cat], "o-", label="CAT @4k")
    ax[2].plot(Cs, [x["kv_slots_1k"] for x in cat], "s-", label="CAT @1k")
    ax[2].axhline(4096, color="k", ls="--", label="dense @4k")
    ax[2].axhline(1024, color="gray", ls=":", label="dense @1k")
    ax[2].set_yscale("log")
    ax[2].set_title("KV slots per layer per request")
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xticks(Cs)
        a.set_xticklabels([str(c) for c in Cs])
        a.set_xlabel("chunk size C")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(catlib.HERE, "eval.png"), dpi=90)


if __name__ == "__main__":
    main()
