"""Train the adaptive CAT (chunk sizes cycling 4, 8, 16, 32, one size per step) or the dense
baseline on KJV bytes plus synthetic associative-recall sequences.

  /usr/bin/python3 models/cat/train.py --kind adaptive --steps N [--batch 8] [--context 1024]

Run it under `flock /tmp/catskim-train.lock` with the env from docs/TEAM.md (build.sh does).
Writes models/cat/<kind>/model.pt and models/cat/<kind>/train_log.json.
"""
import argparse
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["adaptive", "dense"], required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--recall-frac", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=None, help="model.pt path (default models/cat/<kind>/model.pt)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="wall budget: the LR schedule follows max(step/steps, elapsed/budget) "
                         "and training stops when that reaches 1 (0 = steps only)")
    a = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    work = os.path.join(catlib.HERE, "work")
    train_text, _ = catlib.kjv_split(work)
    cfg = catlib.Config(train_context=a.context)
    model = catlib.build(a.kind, cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
    sizes = cfg.chunk_sizes
    T = a.context
    log = []
    t0 = time.time()
    tokens = 0
    ema = None
    step = 0
    while True:
        prog = step / a.steps
        if a.max_seconds > 0:
            prog = max(prog, (time.time() - t0) / a.max_seconds)
        if prog >= 1.0:
            break
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids = catlib.batch(train_text, a.batch, T, rng, a.recall_frac)
        if a.kind == "adaptive":
            C = sizes[step % len(sizes)]
            K = T // C
            # chunk-index rows beyond train_context/C would never be trained: half of the steps
            # shift the chunk indices by a random offset so the whole table (max_context) is used.
            off = 0 if rng.random() < 0.5 else rng.randrange(0, cfg.index_rows - K + 1)
            logits = model.token_logits(ids, C, structured=True, index_offset=off)
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids.reshape(-1))
        else:
            C = 0
            logits = model.full_logits(ids)[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += ids.numel()
        li = loss.item()
        ema = li if ema is None else 0.98 * ema + 0.02 * li
        if step % a.log_every == 0:
            el = time.time() - t0
            rec = {"step": step, "C": C, "loss": round(li, 4), "ema": round(ema, 4), "lr": lr,
                   "seconds": round(el, 1), "tokens_per_s": round(tokens / el, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
        step += 1
    el = time.time() - t0
    # final loss: mean over the last steps (one full cycle of chunk sizes at least)
    out = a.out or os.path.join(catlib.model_dir(a.kind), "model.pt")
    summary = {"kind": a.kind, "steps": step, "steps_planned": a.steps, "max_seconds": a.max_seconds, "batch": a.batch, "context": T,
               "tokens": tokens, "seconds": round(el, 1), "tokens_per_s": round(tokens / el, 1),
               "final_loss_ema_nats": round(ema, 4), "lr": a.lr, "recall_frac": a.recall_frac,
               "seed": a.seed, "argv": sys.argv[1:], "threads": torch.get_num_threads()}
    catlib.save(model, out, summary)
    catlib.write_json(os.path.join(os.path.dirname(out), "train_log.json"), {"summary": summary, "log": log})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
