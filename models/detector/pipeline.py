"""Train, evaluate, export and report the OOD detectors (both domains, all four methods).

  npm run models:detector                    (data.py, then this under flock /tmp/catskim-train.lock)
  /usr/bin/python3 models/detector/pipeline.py [--domains search,generation] [--methods ...] [--steps N]

Methods (same network, data, steps and seed; only the loss and the OOD samples differ):
  ce        CE on the K ID classes; OOD score = 1 - max softmax (MSP baseline)
  ce_mdca   CE + beta * MDCA on the K classes; MSP score
  cnc       K+1 classes: CE(ID batch, y) + CE(CnC batch, K), equal weights and batch sizes; score = p_K
  cnc_mdca  the same + beta * (MDCA(ID batch) + MDCA(CnC batch)) over the K+1 classes (shipped)
beta for the MDCA methods: chosen from BETAS by the lowest ECE on held-out ID validation data.
Outputs: models/detector/{search,generation}/ (detector.onnx, manifest.json, tokenizer.json,
vocab.txt, golden_ids.json, parity.json), models/detector/eval.json, EVAL.md, reliability.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calib  # noqa: E402
import cnc  # noqa: E402
from dconf import (CLASSES, HELD_OUT_BOOKS, HERE, MAX_LENGTH, MAX_WORDS, METHOD_TITLES, METHODS, ROOT,  # noqa: E402
                   GENERATION_GROUPS, SEARCH_GROUPS, TRIGRAM_BUCKETS, VOCAB_SIZE, WORK, TextTokenizer,
                   build_spec, detector_text, golden, read_json, sha256_file, words, write_json)
from model import Detector, ExportWrapper  # noqa: E402

BETAS = (1.0, 5.0, 10.0)  # MDCA weights tried (the paper's range); the one with the lowest validation ECE ships
BATCH = 256  # ID batch; CnC adds an equal OOD batch
LR = 3e-3
SEED = 1234
STEPS = {"search": 2000, "generation": 1000}
N_TRAIN_POOL = {"search": 2000 * BATCH, "generation": 1000 * BATCH}  # one fresh CnC sample per step slot
N_EVAL_ID = 6000  # ID test / val samples used for the metrics (random subset; all when fewer)
N_SHIFT = 4000
OPSET = 17


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------------------------------------- tokens
class FastIds:
    """tok.ids(detector_text(t))[:MAX_LENGTH] with a per-word cache (checked against the tokenizer)."""

    def __init__(self, tok: TextTokenizer):
        self.tok = tok
        self.cache: Dict[str, Tuple[int, List[int]]] = {}

    def __call__(self, text: str) -> List[int]:
        ws = words(text)[:MAX_WORDS]
        head, tail = [], []
        for w in ws:
            c = self.cache.get(w)
            if c is None:
                c = (self.tok.word_to_id.get(w, self.tok.unk_id), [self.tok.trigram_id(t) for t in _trigrams(w)])
                if len(self.cache) < 500_000:
                    self.cache[w] = c
            head.append(c[0])
            tail.extend(c[1])
        return (head + tail)[:MAX_LENGTH]


def _trigrams(w: str) -> List[str]:
    s = "<" + w + ">"
    return [s[i:i + 3] for i in range(len(s) - 2)]


class Bags:
    """Token id lists in CSR form (flat ids + offsets) for embedding_bag."""

    def __init__(self, id_lists: Sequence[Sequence[int]]):
        lens = np.fromiter((len(x) for x in id_lists), dtype=np.int64, count=len(id_lists))
        self.starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        self.lens = lens
        self.flat = np.fromiter((i for x in id_lists for i in x), dtype=np.int64, count=int(lens.sum()))

    def __len__(self):
        return len(self.lens)

    def batch(self, idx: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        lens = self.lens[idx]
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        flat = np.concatenate([self.flat[s:s + n] for s, n in zip(self.starts[idx], lens)]) if len(idx) else \
            np.zeros(0, dtype=np.int64)
        return torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(offsets)


def build_vocab(train_texts: Sequence[str], size: int) -> List[str]:
    c = Counter(w for t in train_texts for w in words(t)[:MAX_WORDS])
    return [w for w, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if n >= 2][:size]


# ----------------------------------------------------------------------------------------------- data
def prepare(domain: str, smoke: bool = False) -> Dict:
    """Tokenised splits, CnC pools and shift sets for one domain (smoke: a tiny subset, for debugging)."""
    global N_EVAL_ID, N_SHIFT
    t0 = time.time()
    data = read_json(os.path.join(WORK, domain, "data.json"))
    splits = {k: [(t, int(y)) for t, y in v] for k, v in data["splits"].items()}
    n_pool = N_TRAIN_POOL[domain]
    if smoke:
        splits = {k: v[:3000] for k, v in splits.items()}
        data["ood"] = {k: v[:200] for k, v in data["ood"].items()}
        N_EVAL_ID, N_SHIFT, n_pool = 500, 300, 5000
    rng = random.Random(SEED + (0 if domain == "search" else 1))
    vocab = build_vocab([t for t, _ in splits["train"]], VOCAB_SIZE[domain])
    spec = build_spec(vocab, TRIGRAM_BUCKETS, MAX_LENGTH)  # vocab_file "vocab.txt" (written at export)
    tok = TextTokenizer(build_spec(vocab, TRIGRAM_BUCKETS, MAX_LENGTH, vocab_file=None))
    enc = FastIds(tok)
    # The fast path must equal the shared tokenizer on detector_text (spot check).
    for t, _ in rng.sample(splits["train"], 500) + [("Ünïcödé  ﬁne, TEXT!! x1", 0)]:
        assert enc(t) == tok.ids(detector_text(t))[:MAX_LENGTH], t

    def sub(samples, n):
        return samples if len(samples) <= n else rng.sample(samples, n)

    val = sub(splits["val"], N_EVAL_ID)
    test = sub(splits["test"], N_EVAL_ID)
    shift_src = sub(splits["test"], N_SHIFT)
    srng = random.Random(SEED + 7)
    shifts = {"corrupted_sev2": [(cnc.corrupt(t, srng, vocab, severity=2)[0], y) for t, y in shift_src]}
    if "shift_books" in splits:
        shifts["held_out_books"] = sub(splits["shift_books"], N_SHIFT)
    train = splits["train"]
    log(domain, "CnC pools ...")
    pool = cnc.make_pool(train, n_pool, random.Random(SEED + 11), vocab)
    val_pool = cnc.make_pool(splits["val"], len(val), random.Random(SEED + 13), vocab)
    ood = {k: v for k, v in data["ood"].items()}
    log(domain, "tokenising ...")
    prep = {
        "domain": domain, "classes": CLASSES[domain], "K": len(CLASSES[domain]), "vocab": vocab, "spec": spec,
        "tok": tok, "enc": enc,
        "train": Bags([enc(t) for t, _ in train]), "train_y": np.array([y for _, y in train], dtype=np.int64),
        "pool": Bags([enc(t) for t in pool]), "pool_text": pool[:20],
        "val": [t for t, _ in val], "val_y": np.array([y for _, y in val]),
        "val_pool": val_pool,
        "test": [t for t, _ in test], "test_y": np.array([y for _, y in test]),
        "shifts": {k: ([t for t, _ in v], np.array([y for _, y in v])) for k, v in shifts.items()},
        "ood": ood, "info": data["info"],
    }
    log(domain, f"prepared in {time.time() - t0:.1f}s: train {len(train)}, pool {len(pool)}, vocab {len(vocab)}")
    return prep


# ----------------------------------------------------------------------------------------------- train
def train(prep: Dict, method: str, steps: int, beta: float = 0.0) -> Tuple[Detector, Dict]:
    torch.manual_seed(SEED)
    K = prep["K"]
    with_cnc = method.startswith("cnc")
    with_mdca = method.endswith("mdca")
    C = K + 1 if with_cnc else K
    model = Detector(prep["spec"]["num_embeddings"], C)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = np.random.default_rng(SEED)
    n, n_pool = len(prep["train"]), len(prep["pool"])
    perm = rng.permutation(n)
    pos = 0
    t0 = time.time()
    hist = []
    model.train()
    for step in range(steps):
        if pos + BATCH > n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos:pos + BATCH]
        pos += BATCH
        flat, off = prep["train"].batch(idx)
        y = torch.from_numpy(prep["train_y"][idx])
        if with_cnc:
            pidx = (np.arange(step * BATCH, (step + 1) * BATCH) % n_pool)
            pf, po = prep["pool"].batch(pidx)
            flat = torch.cat([flat, pf])
            off = torch.cat([off, po + len(flat) - len(pf)])
            y = torch.cat([y, torch.full((BATCH,), K, dtype=torch.int64)])
        logits = model.forward_bags(flat, off)
        if with_cnc:  # CE(ID) + CE(OOD) with equal weights and batch sizes
            loss_cls = F.cross_entropy(logits[:BATCH], y[:BATCH]) + F.cross_entropy(logits[BATCH:], y[BATCH:])
        else:
            loss_cls = F.cross_entropy(logits, y)
        loss = loss_cls
        loss_mdca = torch.zeros(())
        if with_mdca:
            p = torch.softmax(logits, -1)
            if with_cnc:
                # MDCA per part, as CnC computes its CE per part: the ID batch (target frequency of
                # the OOD class = 0) and the CnC batch (all OOD); classes absent from a part still count.
                loss_mdca = calib.mdca_loss(p[:BATCH], y[:BATCH], C) + calib.mdca_loss(p[BATCH:], y[BATCH:], C)
            else:
                loss_mdca = calib.mdca_loss(p, y, C)
            loss = loss + beta * loss_mdca
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            hist.append({"step": step, "loss": float(loss), "cls": float(loss_cls), "mdca": float(loss_mdca)})
            log(f"  {prep['domain']}/{method} step {step} loss {float(loss):.4f} (cls {float(loss_cls):.4f}, "
                f"mdca {float(loss_mdca):.4f}) {time.time() - t0:.0f}s")
    model.eval()
    model.round_embeddings_fp16()  # evaluate exactly the weights that ship
    return model, {"steps": steps, "seconds": round(time.time() - t0, 1), "history": hist, "num_outputs": C, "beta_mdca": beta}


# ----------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def predict(model: Detector, prep: Dict, texts: Sequence[str], bs: int = 1024) -> np.ndarray:
    out = []
    for i in range(0, len(texts), bs):
        b = Bags([prep["enc"](t) for t in texts[i:i + bs]])
        flat, off = b.batch(np.arange(len(b)))
        out.append(torch.softmax(model.forward_bags(flat, off), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.num_outputs), dtype=np.float32)


def scores(probs: np.ndarray, K: int) -> Tuple[np.ndarray, np.ndarray]:
    """(OOD score, ID score): p_K for a K+1-class model, 1 - max softmax for a K-class model."""
    if probs.shape[1] == K + 1:
        s = probs[:, K]
    else:
        s = 1.0 - probs.max(1)
    return s.astype(np.float64), 1.0 - s.astype(np.float64)


def calibration(probs: np.ndarray, y: np.ndarray, K: int) -> Dict:
    """On labelled ID data: top-1 over the K ID classes, with the model's own (never renormalised) probabilities."""
    p = probs[:, :K]
    pred = p.argmax(1)
    conf = p.max(1)
    correct = (pred == y)
    return {"accuracy": float(correct.mean()), "ece": calib.ece(conf, correct), "sce": calib.sce(p, y),
            "mean_confidence": float(conf.mean()), "mean_p_ood": float(probs[:, K].mean()) if probs.shape[1] > K else 0.0,
            "n": int(len(y)), "reliability": calib.reliability(conf, correct)}


def choose_tau(val_ood_score: np.ndarray, tpr: float = 0.95) -> float:
    """Smallest tau with at least `tpr` of held-out ID validation samples passing (score <= tau)."""
    s = np.sort(val_ood_score)
    return float(s[int(math.ceil(tpr * len(s))) - 1])


def evaluate(model: Detector, prep: Dict) -> Dict:
    K = prep["K"]
    pv = predict(model, prep, prep["val"])
    sv, iv = scores(pv, K)
    tau = choose_tau(sv)
    pvp = predict(model, prep, prep["val_pool"])
    svp, ivp = scores(pvp, K)
    pt = predict(model, prep, prep["test"])
    st, it = scores(pt, K)
    res = {
        "tau": tau,
        "validation": {"id_pass_rate": float(np.mean(sv <= tau)), **calib.ood_metrics(iv, ivp),
                       **{k: v for k, v in calibration(pv, prep["val_y"], K).items() if k != "reliability"},
                       "ood_set": "CnC samples made from the validation split (synthetic)"},
        "test_id": calibration(pt, prep["test_y"], K),
        "test_id_pass_rate": float(np.mean(st <= tau)),
        "ood": {},
        "shift": {},
    }
    for name, texts in prep["ood"].items():
        po = predict(model, prep, texts)
        so, io = scores(po, K)
        res["ood"][name] = {**calib.ood_metrics(it, io), "gated_at_tau": float(np.mean(so > tau)), "n": len(texts)}
    for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "gated_at_tau"):
        res.setdefault("ood_mean", {})[k] = float(np.mean([v[k] for v in res["ood"].values()]))
    for name, (texts, y) in prep["shifts"].items():
        ps = predict(model, prep, texts)
        ss, _ = scores(ps, K)
        res["shift"][name] = {**calibration(ps, y, K), "gated_at_tau": float(np.mean(ss > tau))}
    return res


# ----------------------------------------------------------------------------------------------- export
def export(model: Detector, prep: Dict, res: Dict, train_info: Dict, out_dir: str) -> Dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    os.makedirs(out_dir, exist_ok=True)
    K = prep["K"]
    # Tokenizer spec + vocab + golden ids.
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(prep["vocab"]) + "\n")
    spec = dict(prep["spec"])
    write_json(os.path.join(out_dir, "tokenizer.json"), spec)
    tok = TextTokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    gold_texts = list(dict.fromkeys([
        "Hello, World!", "hot_dog", "  multiple   spaces\tand\nnewlines  ", "Caf\u00e9 na\u00efve r\u00e9sum\u00e9",
        "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff54\uff45\uff58\uff54", "\ufb01ne \u2460 \u00bd",
        "\u0130stanbul \u212a", "a", "", "!!!", "x1 2y 33 a-b c.d e'f", "\u65e5\u672c\u8a9e text \U0001F600 emoji",
        "s\u043em\u0435one (homoglyphs)", *prep["test"][:6],
        " ".join(["word"] * 80) + " supercalifragilisticexpialidocious" * 3,
    ]))
    g = golden(tok, gold_texts, roles=[None])
    for c in g["cases"]:
        c["detector_text"] = detector_text(c["text"])
        c["detector_ids"] = tok.ids(c["detector_text"])[:MAX_LENGTH]
    write_json(os.path.join(out_dir, "golden_ids.json"), g)

    # ONNX: export fp32, then store the embedding table in fp16 (Gather in fp16, Cast to float).
    wrapper = ExportWrapper(model).eval()
    path = os.path.join(out_dir, "detector.onnx")
    tmp = path + ".fp32.tmp"
    ex_ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]], dtype=torch.int64)
    ex_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.int64)
    torch.onnx.export(wrapper, (ex_ids, ex_mask), tmp, input_names=["input_ids", "attention_mask"],
                      output_names=["probs", "logits"], opset_version=OPSET, do_constant_folding=True,
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                    "probs": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(tmp)
    os.remove(tmp)
    emb_name = None
    for node in m.graph.node:
        if node.op_type == "Gather":
            for init in m.graph.initializer:
                if init.name == node.input[0] and len(init.dims) == 2 and init.dims[0] == model.num_embeddings:
                    emb_name, gather = init.name, node
    if emb_name is None:
        raise RuntimeError("embedding Gather not found in the exported graph")
    for i, init in enumerate(m.graph.initializer):
        if init.name == emb_name:
            arr = numpy_helper.to_array(init).astype(np.float16)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, emb_name))
    half_out = gather.output[0] + "_fp16"
    cast = helper.make_node("Cast", [half_out], [gather.output[0]], to=TensorProto.FLOAT, name="embedding_to_float")
    gather.output[0] = half_out
    nodes = list(m.graph.node)
    m.graph.ClearField("node")
    for node in nodes:
        m.graph.node.append(node)
        if node is gather or (node.output and node.output[0] == half_out):
            m.graph.node.append(cast)
    del m.graph.value_info[:]
    m.doc_string = f"catskim OOD detector ({prep['domain']}): CnC (arXiv 2207.13916) + MDCA (arXiv 2203.13834)"
    onnx.checker.check_model(m)
    onnx.save(m, path)

    # Parity fixtures: Python reference probs from the padded-input path (== the graph's maths).
    fixtures = list(dict.fromkeys([*prep["test"][:4], *(t for t in list(prep["ood"].values())[0][:2]),
                                   prep["ood"]["random"][0], prep["ood"]["random"][1], "qzxv wkpf jjrt", "",
                                   "zzzz", *prep["pool_text"][:2]]))
    ids, mask = tok.encode_batch([detector_text(t) for t in fixtures])
    with torch.no_grad():
        probs, logits = wrapper(torch.tensor(ids), torch.tensor(mask))
        flat = Bags([prep["enc"](t) for t in fixtures])
        probs_bags = torch.softmax(model.forward_bags(*flat.batch(np.arange(len(flat)))), -1)
    assert torch.allclose(probs, probs_bags, atol=1e-5), "padded and bag paths disagree"
    write_json(os.path.join(out_dir, "parity.json"), {
        "tolerance": 1e-4, "ood_index": K,
        "cases": [{"text": t, "detector_text": detector_text(t), "input_ids": i, "attention_mask": mk,
                   "probs": [float(x) for x in p], "logits": [float(x) for x in lg]}
                  for t, i, mk, p, lg in zip(fixtures, ids, mask, probs.tolist(), logits.tolist())],
    })

    files = ["detector.onnx", "tokenizer.json", "vocab.txt", "golden_ids.json", "parity.json"]
    v = res["validation"]
    manifest = {
        "name": f"detector-{prep['domain']}", "kind": "ood-detector", "domain": prep["domain"], "version": 1,
        "method": "cnc_mdca", "method_title": METHOD_TITLES["cnc_mdca"],
        "papers": {"cnc": "arXiv 2207.13916", "mdca": "arXiv 2203.13834"},
        "model": "detector.onnx", "tokenizer": "tokenizer.json", "golden_ids": "golden_ids.json", "parity": "parity.json",
        "inputs": {"input_ids": "int64 [batch, tokens]", "attention_mask": "int64 [batch, tokens]"},
        "outputs": {"probs": f"float32 [batch, {K + 1}] softmax (temperature baked in)",
                    "logits": f"float32 [batch, {K + 1}]"},
        "temperature": 1.0,
        "preprocessing": {"max_words": MAX_WORDS, "max_length": MAX_LENGTH,
                          "rule": "text -> the first max_words words of the tokenizer's normalisation joined by one "
                                  "space -> tokenizer ids (words then 3-grams) truncated to max_length"},
        "classes": prep["classes"], "ood_index": K, "num_outputs": K + 1,
        "class_groups": SEARCH_GROUPS if prep["domain"] == "search" else GENERATION_GROUPS,
        "score": f"probs[:, {K}] (P(OOD)); ID score = 1 - score",
        "gate_rule": "gated iff score > tau",
        "tau": res["tau"],
        "tau_selection": {"rule": "smallest tau with >= 95% of held-out ID validation samples passing (score <= tau)",
                          "target_id_tpr": 0.95, "validation_samples": len(prep["val"]),
                          "validation_id_pass_rate": v["id_pass_rate"], "test_id_pass_rate": res["test_id_pass_rate"]},
        "validation": {"auroc": v["auroc"], "fpr95": v["fpr95"], "aupr_in": v["aupr_in"], "ece": v["ece"],
                       "sce": v["sce"], "accuracy": v["accuracy"], "bins": calib.N_BINS, "ood_set": v["ood_set"]},
        "test": {"ood_auroc_mean": res["ood_mean"]["auroc"], "ood_fpr95_mean": res["ood_mean"]["fpr95"],
                 "ood": {k: {kk: vv for kk, vv in d.items() if kk in ("auroc", "fpr95", "gated_at_tau")}
                         for k, d in res["ood"].items()},
                 "id_ece": res["test_id"]["ece"], "id_sce": res["test_id"]["sce"], "id_accuracy": res["test_id"]["accuracy"]},
        "training": {"steps": train_info["steps"], "batch": BATCH, "beta_mdca": train_info["beta_mdca"],
                     "beta_sweep": train_info.get("beta_sweep"), "lr": LR, "seed": SEED,
                     "seconds": train_info["seconds"], "embedding_dtype": "float16 in the graph (Cast to float32)"},
        "files": {f: {"sha256": sha256_file(os.path.join(out_dir, f)), "bytes": os.path.getsize(os.path.join(out_dir, f))}
                  for f in files},
    }
    manifest["sha256"] = manifest["files"]["detector.onnx"]["sha256"]
    write_json(os.path.join(out_dir, "manifest.json"), manifest)
    return manifest


# ----------------------------------------------------------------------------------------------- report
def plot(results: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = [d for d in ("search", "generation") if d in results]
    cols = [("test_id", None, "ID test")] + [("shift", "corrupted_sev2", "shift: corrupted, severity 2")]
    fig, axes = plt.subplots(len(domains), len(cols), figsize=(5.2 * len(cols), 4.6 * len(domains)), squeeze=False)
    for r, d in enumerate(domains):
        for c, (key, sub, title) in enumerate(cols):
            ax = axes[r][c]
            ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
            for meth, style in zip(METHODS, ["-o", "-s", "--o", "--s"]):
                if meth not in results[d]["methods"]:
                    continue
                block = results[d]["methods"][meth][key]
                block = block[sub] if sub else block
                rel = block["reliability"]
                xs = [x for x, n in zip(rel["confidence"], rel["count"]) if n >= 20]
                ys = [y for y, n in zip(rel["accuracy"], rel["count"]) if n >= 20]
                ax.plot(xs, ys, style, ms=3, lw=1.2,
                        label=f"{METHOD_TITLES[meth]}: ECE {100 * block['ece']:.1f}%")
            ax.set_title(f"{d}: {title}", fontsize=10)
            ax.set_xlabel("confidence (top ID class, own softmax)")
            ax.set_ylabel("accuracy")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Reliability (15 equal-width bins; bins with >= 20 samples)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(results: Dict, elapsed: float) -> str:
    L = ["# OOD detectors: CnC + MDCA (models/detector)", "",
         "Generated by `npm run models:detector` (models/detector/pipeline.py); numbers from `eval.json`. ",
         "CnC: arXiv 2207.13916 (text adaptation in shared/design/ood-calibration.md); MDCA: arXiv 2203.13834.",
         "", f"Total pipeline time: {elapsed / 60:.1f} min on this 2-core machine (torch 1 thread).", ""]
    L += ["Methods (same network, data, seed and steps): **ce** = cross-entropy over K classes, OOD score "
          "1 - max softmax; **ce_mdca** = CE + beta * MDCA; **cnc** = K+1 classes, CE(ID batch, y) + CE(CnC batch, K), "
          "equal weights and batch sizes, OOD score p_K; **cnc_mdca** = cnc + beta * (MDCA(ID batch) + MDCA(CnC batch)) "
          "over the K+1 classes (shipped). MDCA is computed per part because CnC computes its CE per part: on the ID "
          f"batch the OOD class has target frequency 0. beta is chosen per domain and method from {list(BETAS)} by "
          "the lowest validation ECE (table below).", "",
          "OOD metrics use the ID score (1 - p_K, or max softmax) with ID as the positive class. AUPR-In: ID "
          "positive. FPR95: share of an OOD set at or above the threshold that keeps 95% of ID test. "
          "`gated@tau`: share of the OOD set with score > tau, tau chosen on held-out ID validation (95% pass). "
          "ECE/SCE: 15 equal-width bins, top-1 over the K ID classes with the model's own softmax (never "
          "renormalised after dropping the OOD class, as served); SCE averages over the K ID classes. All in %. "
          "OOD sets are natural units (a fortune, a package description, a verse span, a WordNet gloss or lemma) "
          "capped at 64 words by the detector; none is used in training.", ""]
    L += ["## Summary", "",
          "| domain | mean OOD AUROC: MSP (ce) -> CnC+MDCA | mean FPR95: MSP -> CnC+MDCA | ID ECE: ce -> ce_mdca | "
          "ID ECE: cnc -> cnc_mdca | shift ECE (corrupted sev 2): ce -> ce_mdca | shipped tau |",
          "|---|---|---|---|---|---|---|"]
    for d, r in results.items():
        m = r["methods"]
        if not all(k in m for k in METHODS):
            continue
        L.append(f"| {d} | {pct(m['ce']['ood_mean']['auroc'])} -> {pct(m['cnc_mdca']['ood_mean']['auroc'])} | "
                 f"{pct(m['ce']['ood_mean']['fpr95'])} -> {pct(m['cnc_mdca']['ood_mean']['fpr95'])} | "
                 f"{pct(m['ce']['test_id']['ece'])} -> {pct(m['ce_mdca']['test_id']['ece'])} | "
                 f"{pct(m['cnc']['test_id']['ece'])} -> {pct(m['cnc_mdca']['test_id']['ece'])} | "
                 f"{pct(m['ce']['shift']['corrupted_sev2']['ece'])} -> {pct(m['ce_mdca']['shift']['corrupted_sev2']['ece'])} | "
                 f"{m['cnc_mdca']['tau']:.4f} |")
    L.append("")
    for d, r in results.items():
        info = r["info"]
        L += [f"## {d}", "", f"Classes ({len(info['classes'])} + OOD): " + ", ".join(info["classes"]), "",
              f"Train {r['train_size']} ID samples; CnC pool {r['pool_size']}; vocab {r['vocab_size']} words + "
              f"{TRIGRAM_BUCKETS} 3-gram buckets; eval ID test n={r['methods']['cnc_mdca']['test_id']['n']}.", ""]
        sets = list(r["methods"]["cnc_mdca"]["ood"])
        L += ["### OOD detection (test)", "",
              "| method | " + " | ".join(f"{s} AUROC / AUPR-In / FPR95" for s in sets) + " | mean AUROC | mean FPR95 |",
              "|---|" + "---|" * (len(sets) + 2)]
        for meth, m in r["methods"].items():
            cells = [f"{pct(m['ood'][s]['auroc'])} / {pct(m['ood'][s]['aupr_in'])} / {pct(m['ood'][s]['fpr95'])}"
                     for s in sets]
            L.append(f"| {meth} | " + " | ".join(cells) + f" | {pct(m['ood_mean']['auroc'])} | {pct(m['ood_mean']['fpr95'])} |")
        L += ["", "### Threshold tau (95% ID TPR on held-out validation) and what it gates (test)", "",
              "| method | tau (OOD score) | val ID pass | test ID pass | " + " | ".join(f"{s} gated" for s in sets) + " |",
              "|---|---|---|---|" + "---|" * len(sets)]
        for meth, m in r["methods"].items():
            L.append(f"| {meth} | {m['tau']:.4f} | {pct(m['validation']['id_pass_rate'])} | {pct(m['test_id_pass_rate'])} | "
                     + " | ".join(pct(m['ood'][s]['gated_at_tau']) for s in sets) + " |")
        shifts = list(r["methods"]["cnc_mdca"]["shift"])
        L += ["", "### Calibration (ECE / SCE / accuracy, %)", "",
              "| method | ID test ECE | ID SCE | ID acc | " + " | ".join(f"{s} ECE / SCE / acc" for s in shifts) + " |",
              "|---|---|---|---|" + "---|" * len(shifts)]
        for meth, m in r["methods"].items():
            t = m["test_id"]
            L.append(f"| {meth} | {pct(t['ece'])} | {pct(t['sce'])} | {pct(t['accuracy'])} | " + " | ".join(
                f"{pct(m['shift'][s]['ece'])} / {pct(m['shift'][s]['sce'])} / {pct(m['shift'][s]['accuracy'])}"
                for s in shifts) + " |")
        L += ["", "Training time per method (s): " + ", ".join(f"{k} {v['train']['seconds']}" for k, v in r["methods"].items()), ""]
        for meth in ("ce_mdca", "cnc_mdca"):
            sw = r["methods"].get(meth, {}).get("train", {}).get("beta_sweep")
            if sw:
                L += [f"MDCA weight for {meth} (validation; chosen beta = {r['methods'][meth]['train']['beta_mdca']:g}):", "",
                      "| beta | val ECE | val SCE | val acc | val AUROC vs CnC samples | train s |", "|---|---|---|---|---|---|"]
                L += [f"| {x['beta']:g} | {pct(x['val_ece'])} | {pct(x['val_sce'])} | {pct(x['val_accuracy'])} | "
                      f"{pct(x['val_auroc_cnc'])} | {x['seconds']} |" for x in sw]
                L.append("")
    L += ["## Notes", ""]
    pood = {d: r["methods"]["cnc_mdca"]["test_id"]["mean_p_ood"] for d, r in results.items() if "cnc_mdca" in r["methods"]}
    L += ["- **CnC and served calibration.** The (K+1)-th class keeps part of the probability mass on in-distribution "
          "inputs (mean P(OOD) on ID test for the shipped models: " + ", ".join(f"{d} {pct(v)}%" for d, v in pood.items()) +
          "). Because `label_prob` is served as the model's own softmax value (never renormalised), the CnC models are "
          "under-confident on ID text (their reliability curves lie above the diagonal) and their ECE is higher than the "
          "K-class models'. MDCA, computed per part of the CnC batch, lowers it but does not remove it.",
          "- **MDCA's weight trades accuracy for calibration here** (sweep tables): larger beta flattens the softmax "
          "towards the batch's class frequencies. The shipped beta is the one with the lowest validation ECE; choose a "
          "smaller beta (`BETAS` in pipeline.py) if accuracy of `label` matters more than its calibration.",
          "- **Short search queries.** A single rare lemma looks much like CnC's character-spliced pseudo-words (unknown "
          "word, unusual 3-grams), so some true WordNet lemmas are gated; that is why the search route flags by default "
          "instead of rejecting.",
          "- **5% of ID is gated by construction** (tau at 95% ID TPR on validation). With the default `reject` on "
          "generation, about 1 in 20 genuine KJV prompts gets FAILED_PRECONDITION; use `detector.routes.generate.action="
          "flag` (or a higher `tau`) where that is unacceptable.",
          "- Generation ID data includes character windows cut anywhere (byte-level prompts), so a prompt ending inside a "
          "word is in distribution; very short prompts (a few characters) carry little evidence either way.", ""]
    L += ["![reliability](reliability.png)", ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", default="search,generation")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=0, help="override the step count (smoke runs)")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny data subset (debugging the code path only)")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--report-only", action="store_true", help="rewrite EVAL.md and reliability.png from eval.json")
    a = ap.parse_args()
    if a.report_only:
        ev = read_json(os.path.join(a.out, "eval.json"))
        plot(ev["domains"], os.path.join(a.out, "reliability.png"))
        with open(os.path.join(a.out, "EVAL.md"), "w", encoding="utf-8") as f:
            f.write(markdown(ev["domains"], ev["elapsed_seconds"]))
        return
    torch.set_num_threads(1)
    t_all = time.time()
    results = {}
    for domain in a.domains.split(","):
        prep = prepare(domain, a.smoke)
        steps = a.steps or STEPS[domain]
        r = {"info": {"classes": prep["classes"]}, "train_size": len(prep["train"]),
             "pool_size": len(prep["pool"]), "vocab_size": len(prep["vocab"]), "data": prep["info"], "methods": {}}
        for method in a.methods.split(","):
            if method.endswith("mdca"):
                # beta chosen on held-out validation ECE (ID, top-1 over the K classes, own softmax)
                sweep, best = [], None
                for beta in BETAS:
                    m_b, t_b = train(prep, method, steps, beta)
                    pv = predict(m_b, prep, prep["val"])
                    cal = calibration(pv, prep["val_y"], prep["K"])
                    _, iv = scores(pv, prep["K"])
                    _, ivp = scores(predict(m_b, prep, prep["val_pool"]), prep["K"])
                    row = {"beta": beta, "val_ece": cal["ece"], "val_sce": cal["sce"], "val_accuracy": cal["accuracy"],
                           "val_auroc_cnc": calib.auroc(iv, ivp), "seconds": t_b["seconds"]}
                    sweep.append(row)
                    log(f"  {domain}/{method} beta {beta}: val ECE {cal['ece']:.4f} SCE {cal['sce']:.4f} acc {cal['accuracy']:.4f}")
                    if best is None or cal["ece"] < best[2]["ece"] - 1e-9:
                        best = (m_b, t_b, cal)
                model, tinfo = best[0], best[1]
                tinfo["beta_sweep"] = sweep
            else:
                model, tinfo = train(prep, method, steps)
            res = evaluate(model, prep)
            res["train"] = tinfo
            r["methods"][method] = res
            log(f"{domain}/{method}: tau {res['tau']:.4f} mean AUROC {res['ood_mean']['auroc']:.4f} "
                f"FPR95 {res['ood_mean']['fpr95']:.4f} ECE {res['test_id']['ece']:.4f} SCE {res['test_id']['sce']:.4f} "
                f"acc {res['test_id']['accuracy']:.4f}")
            if method == "cnc_mdca" and not a.no_export:
                r["manifest"] = export(model, prep, res, tinfo, os.path.join(a.out, domain))
        results[domain] = r
    elapsed = time.time() - t_all
    write_json(os.path.join(a.out, "eval.json"), {"elapsed_seconds": round(elapsed, 1), "bins": calib.N_BINS,
                                                  "betas_tried": list(BETAS), "domains": results})
    plot(results, os.path.join(a.out, "reliability.png"))
    with open(os.path.join(a.out, "EVAL.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results, elapsed))
    log(f"done in {elapsed:.0f}s")


if __name__ == "__main__":
    main()
