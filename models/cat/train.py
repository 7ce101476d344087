"""Train the dense baseline or the adaptive CAT on the corpus mix (corpus.py) with the name-copy
task, by a fixed step schedule, in resumable segments.

  /usr/bin/python3 models/cat/train.py --kind dense|adaptive --steps N --ckpt PATH [--resume]
      [--init-from MODEL.pt] [--segment-seconds S] [--out models/cat/<kind>/model.pt]

* Schedule: linear warm-up, cosine to 10% of the peak over --steps (a step count, not a clock).
  A resumed run may change --steps; the schedule follows the new total.
* Adaptive: one chunk size per step, drawn with --c-probs (default C=4 oversampled). With
  --init-from a dense model.pt the decoder starts from the dense weights; the compressor, SEP and
  dummies start fresh and train at --lr x --compressor-lr-mult.
* Segments: after --segment-seconds the run saves --ckpt and exits with status 3 ("more to do");
  run it again with --resume. When the last step is done it writes --out (a resumable
  checkpoint too: weights, optimizer moments in bf16, step, RNG state) and train_log.json, and
  exits 0. Run it under `flock /tmp/catskim-train.lock` with the env of docs/TEAM.md
  (run_training.sh does).
* --device cuda trains in bf16 autocast (written for a GPU host; untested here: no GPU was lent).
"""
import argparse
import contextlib
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
import corpus  # noqa: E402

MORE_TO_DO = 3


def parse(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["adaptive", "dense"], required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--compressor-lr-mult", type=float, default=2.0)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--c-probs", default="0.4,0.3,0.2,0.1", help="probabilities of C=4,8,16,32")
    ap.add_argument("--name-frac", type=float, default=0.25)
    ap.add_argument("--answer-weight", type=float, default=4.0)
    ap.add_argument("--d-lo", type=int, default=50)
    ap.add_argument("--d-hi", type=int, default=400)
    ap.add_argument("--curriculum-frac", type=float, default=0.5,
                    help="the name distance bound grows from d-lo to d-hi over this share of steps")
    ap.add_argument("--d-model", type=int, default=None,
                    help="decoder width (dense only; default the served width): 64 = the compressor's "
                         "width, the paper's dense comparison")
    ap.add_argument("--ffn", type=int, default=None, help="feed-forward width with --d-model (default 2.75x)")
    ap.add_argument("--init-from", default=None)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--segment-seconds", type=float, default=0, help="0 = run to the end")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--log-every", type=int, default=10)
    return ap.parse_args(argv)


def lr_at(a, step):
    prog = min(1.0, step / a.steps)
    return a.lr * min(1.0, (step + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


def make_optimizer(model, a):
    groups = {}
    for n, p in model.named_parameters():
        fresh = a.kind == "adaptive" and not n.startswith("decoder.")
        decay = p.dim() >= 2 and "embed" not in n
        groups.setdefault((fresh, decay), []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "weight_decay": 0.1 if decay else 0.0,
          "lr_mult": a.compressor_lr_mult if fresh else 1.0}
         for (fresh, decay), ps in sorted(groups.items())], lr=a.lr, betas=(0.9, 0.95))
    return opt


def opt_state_compact(opt):
    sd = opt.state_dict()
    for st in sd["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = st[k].to("cpu", torch.bfloat16)
    return sd


def opt_state_restore(opt, sd, device):
    for st in sd["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = st[k].to(device, torch.float32)
    opt.load_state_dict(sd)


def save_ckpt(path, model, opt, a, state):
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    torch.save({"config": model.cfg.to_dict(), "kind": model.kind, "state_dict": sd,
                "extra": state["summary"], "optimizer": opt_state_compact(opt), "step": state["step"],
                "tokens": state["tokens"], "seconds": state["seconds"], "log": state["log"],
                "rng_py": state["rng"].getstate(), "rng_torch": torch.get_rng_state(),
                "args": vars(a)}, tmp)
    os.replace(tmp, path)


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(1 if a.device == "cpu" else torch.get_num_threads())
    dev = torch.device(a.device)
    probs = [float(x) for x in a.c_probs.split(",")]
    out = a.out or os.path.join(catlib.model_dir(a.kind), "model.pt")
    sampler = corpus.Sampler()

    if a.resume and os.path.exists(a.ckpt):
        ck = torch.load(a.ckpt, map_location="cpu")
        model = catlib.build(a.kind, catlib.Config.from_dict(ck["config"]))
        model.load_state_dict(ck["state_dict"])
        model.to(dev)
        opt = make_optimizer(model, a)
        opt_state_restore(opt, ck["optimizer"], dev)
        rng = random.Random()
        rng.setstate(ck["rng_py"])
        torch.set_rng_state(ck["rng_torch"])
        step, tokens, seconds, log = ck["step"], ck["tokens"], ck["seconds"], ck["log"]
        init_note = ck["extra"].get("init_from")
        print(f"resumed {a.ckpt} at step {step}/{a.steps}", flush=True)
    else:
        torch.manual_seed(a.seed)
        rng = random.Random(a.seed)
        width = {}
        if a.d_model:
            if a.kind != "dense":
                raise SystemExit("--d-model is for the dense baseline only")
            width = {"d_model": a.d_model, "ffn": a.ffn or int(2.75 * a.d_model)}
        model = catlib.build(a.kind, catlib.Config(train_context=a.context, **width))
        init_note = None
        if a.init_from:
            src = torch.load(a.init_from, map_location="cpu")["state_dict"]
            if a.kind == "dense":
                model.load_state_dict(src)
            else:  # decoder from the dense model; compressor, SEP, dummies fresh
                dec = {k[len("decoder."):]: v for k, v in src.items() if k.startswith("decoder.")}
                model.decoder.load_state_dict(dec)
            init_note = a.init_from
        model.to(dev)
        opt = make_optimizer(model, a)
        step, tokens, seconds, log = 0, 0, 0.0, []

    model.train()
    cfg = model.cfg
    T = a.context
    t_seg = time.time()
    ema = log[-1]["ema"] if log else None
    sizes = cfg.chunk_sizes
    while step < a.steps:
        t_step = time.time()
        lr = lr_at(a, step)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        grow = min(1.0, step / max(1.0, a.curriculum_frac * a.steps))
        d_hi = int(a.d_lo + (a.d_hi - a.d_lo) * grow)
        ids, w = sampler.batch(a.batch, T, rng, a.name_frac, a.d_lo, d_hi, a.answer_weight)
        ids, w = ids.to(dev), w.to(dev)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
        with amp:
            if a.kind == "adaptive":
                C = rng.choices(sizes, probs)[0]
                K = T // C
                # chunk-index rows past train_context/C would never be trained: half of the steps
                # shift the chunk indices by a random offset so the whole table is used.
                off = 0 if rng.random() < 0.5 else rng.randrange(0, cfg.index_rows - K + 1)
                logits = model.token_logits(ids, C, structured=True, index_offset=off)
                tgt, wt = ids, w
            else:
                C = 0
                logits = model.full_logits(ids)[:, :-1]
                tgt, wt = ids[:, 1:], w[:, 1:]
            ce = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), tgt.reshape(-1),
                                 reduction="none")
            loss = (ce * wt.reshape(-1)).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += ids.numel()
        seconds += time.time() - t_step
        plain = (ce * (wt.reshape(-1) == 1)).sum().item() / max(1.0, (wt == 1).sum().item())
        ema = plain if ema is None else 0.95 * ema + 0.05 * plain
        step += 1
        if step % a.log_every == 0 or step == a.steps:
            tps = tokens / max(seconds, 1e-9)
            eta = (a.steps - step) * a.batch * T / max(tps, 1e-9)
            rec = {"step": step, "C": C, "loss": round(plain, 4), "ema": round(ema, 4),
                   "lr": round(lr, 6), "tokens": tokens, "seconds": round(seconds, 1),
                   "tokens_per_s": round(tps, 1), "d_hi": d_hi}
            log.append(rec)
            print(f"[{a.kind}] step {step}/{a.steps} C={C or '-'} loss {plain:.3f} "
                  f"(ema {ema:.3f} nats = {ema / math.log(2):.2f} bits/byte) lr {lr:.2e} "
                  f"{tps:,.0f} tok/s  trained {fmt_time(seconds)}  ETA {fmt_time(eta)}", flush=True)
        summary = {"kind": a.kind, "steps": step, "steps_planned": a.steps, "batch": a.batch,
                   "context": T, "tokens": tokens, "seconds": round(seconds, 1),
                   "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
                   "final_loss_ema_nats": round(ema, 4), "lr": a.lr,
                   "compressor_lr_mult": a.compressor_lr_mult, "c_probs": probs,
                   "name_frac": a.name_frac, "answer_weight": a.answer_weight,
                   "name_distance": [a.d_lo, a.d_hi], "seed": a.seed, "init_from": init_note,
                   "device": a.device, "positions": cfg.positions if a.kind == "adaptive" else None}
        state = {"summary": summary, "step": step, "tokens": tokens, "seconds": seconds,
                 "log": log, "rng": rng}
        if step >= a.steps:
            save_ckpt(out, model, opt, a, state)
            catlib.write_json(os.path.join(os.path.dirname(out), "train_log.json"),
                              {"summary": summary, "log": log})
            save_ckpt(a.ckpt, model, opt, a, state)
            print(json.dumps(summary), flush=True)
            return 0
        if a.segment_seconds and time.time() - t_seg >= a.segment_seconds:
            save_ckpt(a.ckpt, model, opt, a, state)
            print(f"segment done at step {step}/{a.steps}; resume with --resume", flush=True)
            return MORE_TO_DO
    return 0


if __name__ == "__main__":
    sys.exit(main())
