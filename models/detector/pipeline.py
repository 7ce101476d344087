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
from model import PAIR_MULT, Detector, ExportWrapper, pair_ids  # noqa: E402

BETAS = (0.0, 1.0, 3.0)  # MDCA weights tried (0 = plain CnC); rule: lowest validation ECE among those within 1 point of CE's accuracy
ACC_TOLERANCE = 0.01  # ... of CE's validation accuracy
PAIR_BUCKETS = 8191  # hashed adjacent-word pairs (model.py)
NONSPLICE = {"search": 0.5, "generation": 0.3}  # share of OOD training samples that are not CnC splices
NONSPLICE_FAMILIES = {"search": ("word_salad", "shuffle_all", "markov", "concat"),
                      "generation": ("word_salad", "shuffle_all")}  # a long KJV passage is ID: no concat there
BATCH = 256  # ID batch; CnC adds an equal OOD batch
LR = 3e-3
SEED = 1234
STEPS = {"search": 3000, "generation": 2000}
N_TRAIN_POOL = {"search": 2000 * BATCH, "generation": 1000 * BATCH}  # OOD training samples (reused cyclically)
N_EVAL_ID = 6000  # ID test / val samples used for the metrics (random subset; all when fewer)
N_SHIFT = 4000
OPSET = 17


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------------------------------------- tokens
class FastIds:
    """tok.ids(detector_text(t))[:MAX_LENGTH] with a per-word cache (checked against the tokenizer).
    features() adds the hashed adjacent-word pair ids and the word count (model.py)."""

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

    def features(self, text: str) -> Tuple[List[int], List[int], int]:
        ids = self(text)
        wids = [i for i in ids if i < self.tok.trigram_offset]
        return ids, pair_ids(wids, PAIR_BUCKETS), len(wids)


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


class Inputs:
    """Model inputs of many texts: token bags, pair bags and word counts."""

    def __init__(self, enc: "FastIds", texts: Sequence[str]):
        feats = [enc.features(t) for t in texts]
        self.tok = Bags([f[0] for f in feats])
        self.pairs = Bags([f[1] for f in feats])
        self.n_words = np.array([f[2] for f in feats], dtype=np.int64)

    def __len__(self):
        return len(self.n_words)

    def batch(self, idx: np.ndarray) -> Tuple[torch.Tensor, ...]:
        return (*self.tok.batch(idx), *self.pairs.batch(idx), torch.from_numpy(self.n_words[idx]))


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
    pool = cnc.make_pool(train, n_pool, random.Random(SEED + 11), vocab, NONSPLICE[domain], NONSPLICE_FAMILIES[domain])
    val_pool = cnc.make_pool(splits["val"], len(val), random.Random(SEED + 13), vocab, NONSPLICE[domain],
                             NONSPLICE_FAMILIES[domain])
    ood = {k: v for k, v in data["ood"].items()}
    log(domain, "tokenising ...")
    prep = {
        "domain": domain, "classes": CLASSES[domain], "K": len(CLASSES[domain]), "vocab": vocab, "spec": spec,
        "tok": tok, "enc": enc,
        "train": Inputs(enc, [t for t, _ in train]), "train_y": np.array([y for _, y in train], dtype=np.int64),
        "pool": Inputs(enc, pool), "pool_text": pool[:20],
        "val": [t for t, _ in val], "val_y": np.array([y for _, y in val]),
        "val_pool": val_pool,
        "test": [t for t, _ in test], "test_y": np.array([y for _, y in test]),
        "shifts": {k: ([t for t, _ in v], np.array([y for _, y in v])) for k, v in shifts.items()},
        "ood": ood, "info": data["info"],
    }
    log(domain, f"prepared in {time.time() - t0:.1f}s: train {len(train)}, pool {len(pool)}, vocab {len(vocab)}")
    return prep


# ----------------------------------------------------------------------------------------------- train
def cat_batches(a: Tuple[torch.Tensor, ...], b: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
    """Two Inputs.batch() results as one (offsets of the second shifted)."""
    tf, to, pf, po, nw = a
    tf2, to2, pf2, po2, nw2 = b
    return (torch.cat([tf, tf2]), torch.cat([to, to2 + len(tf)]), torch.cat([pf, pf2]), torch.cat([po, po2 + len(pf)]),
            torch.cat([nw, nw2]))


def train(prep: Dict, method: str, steps: int, beta: float = 0.0) -> Tuple[Detector, Dict]:
    torch.manual_seed(SEED)
    K = prep["K"]
    with_cnc = method.startswith("cnc")
    with_mdca = method.endswith("mdca")
    C = K + 1 if with_cnc else K
    model = Detector(prep["spec"]["num_embeddings"], C, prep["spec"]["trigram_offset"], PAIR_BUCKETS)
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
        xb = prep["train"].batch(idx)
        y = torch.from_numpy(prep["train_y"][idx])
        if with_cnc:
            pidx = (np.arange(step * BATCH, (step + 1) * BATCH) % n_pool)
            xb = cat_batches(xb, prep["pool"].batch(pidx))
            y = torch.cat([y, torch.full((BATCH,), K, dtype=torch.int64)])
        logits = model.forward_bags(*xb)
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
def predict_logits(model: Detector, prep: Dict, texts: Sequence[str], bs: int = 1024) -> np.ndarray:
    out = []
    for i in range(0, len(texts), bs):
        b = Inputs(prep["enc"], texts[i:i + bs])
        out.append(model.forward_bags(*b.batch(np.arange(len(b)))).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, model.num_outputs))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict(model: Detector, prep: Dict, texts: Sequence[str]) -> np.ndarray:
    """The full softmax (K or K+1 outputs)."""
    return softmax(predict_logits(model, prep, texts))


def id_probs(logits: np.ndarray, K: int, temperature: float) -> np.ndarray:
    """What is served as label probabilities: softmax over the K ID logits divided by the temperature."""
    return softmax(logits[:, :K] / temperature)


def fit_temperature(logits: np.ndarray, y: np.ndarray, K: int) -> float:
    """Temperature scaling (Guo et al., arXiv 1706.04599) of the K ID logits: the T minimising the
    NLL on labelled held-out ID validation data (golden-section search over log T)."""
    z = logits[:, :K]

    def nll(log_t: float) -> float:
        p = softmax(z / math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def scores(probs: np.ndarray, K: int) -> Tuple[np.ndarray, np.ndarray]:
    """(OOD score, ID score): p_K for a K+1-class model, 1 - max softmax for a K-class model."""
    if probs.shape[1] == K + 1:
        s = probs[:, K]
    else:
        s = 1.0 - probs.max(1)
    return s.astype(np.float64), 1.0 - s.astype(np.float64)


def calibration(logits: np.ndarray, y: np.ndarray, K: int, temperature: float) -> Dict:
    """On labelled ID data, top-1 over the K ID classes. The headline numbers are those of what is
    served (`id_probs`: softmax over the K ID logits / temperature); `raw_*` are the model's own
    K+1-way softmax values (what was served before), `renorm_*` the renormalised ones at T = 1."""
    served = id_probs(logits, K, temperature)
    pred = served.argmax(1)
    conf = served.max(1)
    correct = (pred == y)
    full = softmax(logits)
    raw_conf = full[np.arange(len(y)), pred]
    renorm_conf = id_probs(logits, K, 1.0).max(1)
    return {"accuracy": float(correct.mean()), "ece": calib.ece(conf, correct), "sce": calib.sce(served, y),
            "mean_confidence": float(conf.mean()), "temperature": temperature,
            "raw_ece": calib.ece(raw_conf, correct), "renorm_ece": calib.ece(renorm_conf, correct),
            "mean_p_ood": float(full[:, K].mean()) if full.shape[1] > K else 0.0,
            "n": int(len(y)), "reliability": calib.reliability(conf, correct)}


def choose_tau(val_ood_score: np.ndarray, tpr: float = 0.95) -> float:
    """Smallest tau with at least `tpr` of held-out ID validation samples passing (score <= tau)."""
    s = np.sort(val_ood_score)
    return float(s[int(math.ceil(tpr * len(s))) - 1])


def validate(model: Detector, prep: Dict) -> Dict:
    """Validation-only numbers (used to pick beta): temperature, served ECE, accuracy, AUROC vs the
    synthetic validation OOD samples."""
    K = prep["K"]
    lv = predict_logits(model, prep, prep["val"])
    T = fit_temperature(lv, prep["val_y"], K)
    cal = calibration(lv, prep["val_y"], K, T)
    _, iv = scores(softmax(lv), K)
    _, ivp = scores(predict(model, prep, prep["val_pool"]), K)
    return {"logits": lv, "temperature": T, "cal": cal, "auroc_synthetic": calib.auroc(iv, ivp)}


def evaluate(model: Detector, prep: Dict, val: Dict) -> Dict:
    K = prep["K"]
    T = val["temperature"]
    sv, iv = scores(softmax(val["logits"]), K)
    tau = choose_tau(sv)
    pvp = predict(model, prep, prep["val_pool"])
    svp, ivp = scores(pvp, K)
    lt = predict_logits(model, prep, prep["test"])
    st, it = scores(softmax(lt), K)
    res = {
        "tau": tau,
        "temperature": T,
        "validation": {"id_pass_rate": float(np.mean(sv <= tau)), **calib.ood_metrics(iv, ivp),
                       **{k: v for k, v in val["cal"].items() if k != "reliability"},
                       "ood_set": "synthetic OOD samples (CnC and non-splice) made from the validation split"},
        "test_id": calibration(lt, prep["test_y"], K, T),
        "test_id_pass_rate": float(np.mean(st <= tau)),
        "ood": {},
        "shift": {},
    }
    dump = {"test": st}
    for name, texts in prep["ood"].items():
        po = predict(model, prep, texts)
        so, io = scores(po, K)
        dump[name] = so
        res["ood"][name] = {**calib.ood_metrics(it, io), "gated_at_tau": float(np.mean(so > tau)), "n": len(texts)}
    if os.environ.get("DETECTOR_DUMP"):  # experiments: OOD scores per set, for looking at the misses
        np.savez(os.environ["DETECTOR_DUMP"] + f"-{prep['domain']}-{len(res)}.npz", **dump)
    for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "gated_at_tau"):
        res.setdefault("ood_mean", {})[k] = float(np.mean([v[k] for v in res["ood"].values()]))
    for name, (texts, y) in prep["shifts"].items():
        ls = predict_logits(model, prep, texts)
        ss, _ = scores(softmax(ls), K)
        res["shift"][name] = {**calibration(ls, y, K, T), "gated_at_tau": float(np.mean(ss > tau))}
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
    wrapper = ExportWrapper(model, K, res["temperature"]).eval()
    path = os.path.join(out_dir, "detector.onnx")
    tmp = path + ".fp32.tmp"
    ex_ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]], dtype=torch.int64)
    ex_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.int64)
    torch.onnx.export(wrapper, (ex_ids, ex_mask), tmp, input_names=["input_ids", "attention_mask"],
                      output_names=["probs", "id_probs", "logits"], opset_version=OPSET, do_constant_folding=True,
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                    "probs": {0: "batch"}, "id_probs": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(tmp)
    os.remove(tmp)
    # Both embedding tables (tokens, pairs) in fp16: Gather in fp16, then Cast to float.
    inits = {init.name: init for init in m.graph.initializer}
    gathers = [node for node in m.graph.node if node.op_type == "Gather" and node.input[0] in inits
               and len(inits[node.input[0]].dims) == 2
               and inits[node.input[0]].dims[0] in (model.num_embeddings, model.pair_buckets)]
    if len(gathers) != 2:
        raise RuntimeError(f"expected 2 embedding Gathers in the exported graph, found {len(gathers)}")
    casts = {}
    for k, gather in enumerate(gathers):
        name = gather.input[0]
        for i, init in enumerate(m.graph.initializer):
            if init.name == name:
                arr = numpy_helper.to_array(init).astype(np.float16)
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
        half_out = gather.output[0] + "_fp16"
        casts[id(gather)] = helper.make_node("Cast", [half_out], [gather.output[0]], to=TensorProto.FLOAT,
                                             name=f"embedding_to_float_{k}")
        gather.output[0] = half_out
    nodes = list(m.graph.node)
    m.graph.ClearField("node")
    for node in nodes:
        m.graph.node.append(node)
        if id(node) in casts:
            m.graph.node.append(casts[id(node)])
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
        probs, idp, logits = wrapper(torch.tensor(ids), torch.tensor(mask))
        flat = Inputs(prep["enc"], fixtures)
        probs_bags = torch.softmax(model.forward_bags(*flat.batch(np.arange(len(flat)))), -1)
    assert torch.allclose(probs, probs_bags, atol=1e-5), "padded and bag paths disagree"
    # The graph itself (onnx checker passed): onnxruntime when this Python has it.
    try:
        import onnxruntime as ort_py  # noqa: F401
        sess = ort_py.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = sess.run(["probs", "id_probs"], {"input_ids": np.array(ids, dtype=np.int64),
                                                "attention_mask": np.array(mask, dtype=np.int64)})
        assert np.allclose(got[0], probs.numpy(), atol=1e-4) and np.allclose(got[1], idp.numpy(), atol=1e-4)
    except ImportError:
        pass
    write_json(os.path.join(out_dir, "parity.json"), {
        "tolerance": 1e-4, "ood_index": K, "id_temperature": res["temperature"],
        "cases": [{"text": t, "detector_text": detector_text(t), "input_ids": i, "attention_mask": mk,
                   "probs": [float(x) for x in p], "id_probs": [float(x) for x in q], "logits": [float(x) for x in lg]}
                  for t, i, mk, p, q, lg in zip(fixtures, ids, mask, probs.tolist(), idp.tolist(), logits.tolist())],
    })

    files = ["detector.onnx", "tokenizer.json", "vocab.txt", "golden_ids.json", "parity.json"]
    v = res["validation"]
    manifest = {
        "name": f"detector-{prep['domain']}", "kind": "ood-detector", "domain": prep["domain"], "version": 2,
        "method": "cnc_mdca", "method_title": METHOD_TITLES["cnc_mdca"],
        "papers": {"cnc": "arXiv 2207.13916", "mdca": "arXiv 2203.13834"},
        "model": "detector.onnx", "tokenizer": "tokenizer.json", "golden_ids": "golden_ids.json", "parity": "parity.json",
        "inputs": {"input_ids": "int64 [batch, tokens]", "attention_mask": "int64 [batch, tokens]"},
        "outputs": {"probs": f"float32 [batch, {K + 1}] softmax over all outputs; probs[:, {K}] = P(OOD), the gate's score",
                    "id_probs": f"float32 [batch, {K}] softmax over the {K} ID logits / id_temperature: the served "
                                "label probabilities (renormalised over the ID classes, temperature-scaled on validation)",
                    "logits": f"float32 [batch, {K + 1}]"},
        "temperature": 1.0,
        "id_temperature": res["temperature"],
        "id_temperature_selection": "minimum NLL of the ID labels on held-out ID validation (arXiv 1706.04599)",
        "features": {"tokens": "word ids + hashed character 3-grams (tokenizer)",
                     "pairs": f"hashed adjacent-word pairs in the graph: (a * {PAIR_MULT} + b) mod {PAIR_BUCKETS}",
                     "length": "log(1 + words)"},
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
                 "served_ece": res["test_id"]["ece"],
                 "ood": {k: {kk: vv for kk, vv in d.items() if kk in ("auroc", "fpr95", "gated_at_tau")}
                         for k, d in res["ood"].items()},
                 "id_ece": res["test_id"]["ece"], "id_sce": res["test_id"]["sce"], "id_accuracy": res["test_id"]["accuracy"]},
        "training": {"steps": train_info["steps"], "batch": BATCH, "beta_mdca": train_info["beta_mdca"],
                     "beta_sweep": train_info.get("beta_sweep"), "beta_rule": train_info.get("beta_rule"),
                     "nonsplice_share": NONSPLICE[prep["domain"]],
                     "nonsplice_families": list(NONSPLICE_FAMILIES[prep["domain"]]), "lr": LR, "seed": SEED,
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
            for meth, style in zip(METHODS, ["-o", "--s", "-s"]):
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
            ax.set_xlabel("served label_prob (id_probs: ID softmax / T)")
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


TARGETS = {"auroc": 0.95, "fpr95": 0.25, "ece": 0.02}


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(results: Dict, elapsed: float) -> str:
    L = ["# OOD detectors: CnC + MDCA, calibrated as served (models/detector)", "",
         "Generated by `npm run models:detector` (models/detector/pipeline.py); numbers from `eval.json`. "
         "CnC: arXiv 2207.13916 (text adaptation in shared/design/ood-calibration.md); MDCA: arXiv 2203.13834; "
         "temperature scaling: arXiv 1706.04599.", "",
         f"Total pipeline time: {elapsed / 60:.1f} min on this 2-core machine (torch 1 thread).", "",
         "**What is served.** `score` = `probs[K]` = P(OOD) from the K+1-way softmax (the gate compares it with tau). "
         "`label` = argmax of the K ID logits; `label_prob` = its value in the graph output `id_probs` = "
         "softmax(logits[:K] / T): renormalised over the K in-distribution classes, then temperature-scaled, with T "
         "fitted by NLL on held-out ID validation data. **Every ECE below is of `id_probs`, exactly what is served**; "
         "`raw ECE` is the K+1-way softmax value that was served before (kept for comparison).", "",
         "**Network.** Features that see order: embeddings of word ids and hashed character 3-grams (mean + max), of "
         f"hashed adjacent-word pairs computed inside the graph (mean + max; {PAIR_BUCKETS} buckets), and log(1 + words); "
         "an MLP. Embedding tables are fp16 in the ONNX file (opset 17).", "",
         "**Methods** (same network, data, seed and steps): **ce** = cross-entropy over the K classes, OOD score "
         "1 - max softmax (MSP); **cnc** = K+1 classes, CE(ID batch, y) + CE(OOD batch, K), equal weights and batch "
         "sizes, OOD score p_K; **cnc_mdca** = cnc + beta * (MDCA(ID batch) + MDCA(OOD batch)) (shipped). OOD training "
         "samples: CnC's (splice a span of another class's input, then one of 17 corruptions at severity 1-5) plus a "
         "share of samples that are not splices (word salad at ID word frequencies, a whole input's words shuffled, a "
         "first-order word chain of ID text, and, for search only, 2-5 whole ID inputs joined), half of them "
         "corrupted; all made from the ID training split alone. "
         f"**beta** (tried: {list(BETAS)}): the lowest served validation ECE among the betas whose validation accuracy "
         f"is within {ACC_TOLERANCE * 100:g} point of CE's.", "",
         "OOD metrics use the ID score (1 - p_K, or max softmax) with ID as the positive class. FPR95: share of an OOD "
         "set at or above the threshold that keeps 95% of ID test. `gated@tau`: share with score > tau (tau: 95% of "
         "held-out ID validation passes). ECE/SCE: 15 equal-width bins. All in %. OOD sets are natural units (a "
         "fortune, a package description, a verse span, a WordNet lemma or gloss, random strings), capped at 64 words; "
         "no OOD evaluation set, nor any text from their sources, is used in training.", ""]
    L += ["## Summary (test; targets: mean OOD AUROC >= 95, FPR95 <= 25, served ECE <= 2, accuracy >= CE's)", "",
          "| domain | mean OOD AUROC: MSP (ce) -> cnc -> shipped | mean FPR95 (shipped) | served ECE (shipped) | raw ECE "
          "(before) | accuracy: shipped vs CE | beta | T | tau |",
          "|---|---|---|---|---|---|---|---|---|"]
    for d, r in results.items():
        m = r["methods"]
        if "cnc_mdca" not in m or "ce" not in m:
            continue
        sh, ce = m["cnc_mdca"], m["ce"]
        cnc_auc = pct(m["cnc"]["ood_mean"]["auroc"]) if "cnc" in m else "-"
        L.append(f"| {d} | {pct(ce['ood_mean']['auroc'])} -> {cnc_auc} -> {pct(sh['ood_mean']['auroc'])} "
                 f"({met(sh['ood_mean']['auroc'] >= TARGETS['auroc'])}) | {pct(sh['ood_mean']['fpr95'])} "
                 f"({met(sh['ood_mean']['fpr95'] <= TARGETS['fpr95'])}) | {pct(sh['test_id']['ece'])} "
                 f"({met(sh['test_id']['ece'] <= TARGETS['ece'])}) | {pct(sh['test_id']['raw_ece'])} | "
                 f"{pct(sh['test_id']['accuracy'])} vs {pct(ce['test_id']['accuracy'])} "
                 f"({met(sh['test_id']['accuracy'] >= ce['test_id']['accuracy'])}) | {sh['train']['beta_mdca']:g} | "
                 f"{sh['temperature']:.3f} | {sh['tau']:.4f} |")
    L.append("")
    for d, r in results.items():
        info = r["info"]
        L += [f"## {d}", "", f"Classes ({len(info['classes'])} + OOD): " + ", ".join(info["classes"]), "",
              f"Train {r['train_size']} ID samples; OOD training pool {r['pool_size']}; vocab {r['vocab_size']} words + "
              f"{TRIGRAM_BUCKETS} 3-gram buckets + {PAIR_BUCKETS} pair buckets; eval ID test "
              f"n={r['methods']['cnc_mdca']['test_id']['n']}.", ""]
        sets = list(r["methods"]["cnc_mdca"]["ood"])
        L += ["### OOD detection (test): AUROC / AUPR-In / FPR95", "",
              "| method | " + " | ".join(sets) + " | mean AUROC | mean FPR95 |",
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
        L += ["", "### Calibration of the served `label_prob` (ECE / SCE / accuracy, %)", "",
              "| method | T | ID test ECE (served) | raw ECE (K+1 softmax) | renormalised, T=1 | ID SCE | ID acc | mean P(OOD) on ID | "
              + " | ".join(f"{s} ECE / acc" for s in shifts) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(shifts)]
        for meth, m in r["methods"].items():
            t = m["test_id"]
            L.append(f"| {meth} | {m['temperature']:.3f} | {pct(t['ece'])} | {pct(t['raw_ece'])} | {pct(t['renorm_ece'])} | "
                     f"{pct(t['sce'])} | {pct(t['accuracy'])} | {pct(t['mean_p_ood'])} | " + " | ".join(
                         f"{pct(m['shift'][s]['ece'])} / {pct(m['shift'][s]['accuracy'])}" for s in shifts) + " |")
        L += ["", "Training time per method (s): " + ", ".join(f"{k} {v['train']['seconds']}" for k, v in r["methods"].items())
              + f"; steps {r['methods']['cnc_mdca']['train']['steps']}, batch {BATCH} ID (+ {BATCH} OOD for cnc).", ""]
        sw = r["methods"]["cnc_mdca"]["train"].get("beta_sweep")
        rule = r["methods"]["cnc_mdca"]["train"].get("beta_rule")
        if sw and rule:
            L += [f"MDCA weight (validation; CE's validation accuracy {pct(rule['ce_val_accuracy'])}; chosen beta = "
                  f"{rule['chosen']:g}{'' if rule['any_within'] else ', the most accurate: none was within the tolerance'}):", "",
                  "| beta | served val ECE | raw val ECE | val acc | within 1 point of CE | T | val AUROC vs synthetic OOD | train s |",
                  "|---|---|---|---|---|---|---|---|"]
            L += [f"| {x['beta']:g} | {pct(x['val_ece'])} | {pct(x['val_raw_ece'])} | {pct(x['val_accuracy'])} | "
                  f"{'yes' if x['within_accuracy'] else 'no'} | {x['val_temperature']:.3f} | {pct(x['val_auroc_synthetic'])} | "
                  f"{x['seconds']} |" for x in sw]
            L.append("")
    L += ["## Notes", ""]
    pood = {d: r["methods"]["cnc_mdca"]["test_id"]["mean_p_ood"] for d, r in results.items() if "cnc_mdca" in r["methods"]}
    L += ["- **Why renormalise.** The OOD class keeps part of the mass on ID inputs (mean P(OOD) on ID test, shipped: "
          + ", ".join(f"{d} {pct(v)}%" for d, v in pood.items()) + "), so the K+1-way softmax value of the top ID class "
          "is under-confident (raw ECE column). `id_probs` answers the served question, P(label | input is ID), and the "
          "temperature fitted on validation removes the remaining mis-scaling.",
          "- **5% of ID is gated by construction** (tau at 95% ID TPR on validation). Generation therefore flags by "
          "default; `detector.routes.generate.action=reject` (env `CATSKIM_GATE_GENERATE_ACTION=reject`) turns "
          "rejection on.",
          "- **Short search queries.** A single rare lemma carries little evidence; some true WordNet lemmas are "
          "gated, which is why the search route flags.", ""]
    L += ["![reliability](reliability.png)", ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", default="search,generation")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=0, help="override the step count (smoke runs)")
    ap.add_argument("--betas", default="", help="override BETAS (comma-separated; experiments)")
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
        methods = a.methods.split(",")
        models: Dict[str, Tuple[Detector, Dict, Dict]] = {}
        # CE first: its validation accuracy bounds the choice of beta.
        m_ce, t_ce = train(prep, "ce", steps)
        models["ce"] = (m_ce, t_ce, validate(m_ce, prep))
        ce_acc = models["ce"][2]["cal"]["accuracy"]
        if "cnc" in methods or "cnc_mdca" in methods:
            # beta: the lowest served validation ECE among the betas whose validation accuracy is
            # within ACC_TOLERANCE of CE's (the most accurate beta when none is).
            sweep, runs = [], {}
            for beta in ([float(x) for x in a.betas.split(",")] if a.betas else BETAS):
                m_b, t_b = train(prep, "cnc_mdca" if beta > 0 else "cnc", steps, beta)
                v = validate(m_b, prep)
                runs[beta] = (m_b, t_b, v)
                row = {"beta": beta, "val_ece": v["cal"]["ece"], "val_sce": v["cal"]["sce"],
                       "val_accuracy": v["cal"]["accuracy"], "val_temperature": v["temperature"],
                       "val_raw_ece": v["cal"]["raw_ece"], "val_auroc_synthetic": v["auroc_synthetic"],
                       "within_accuracy": v["cal"]["accuracy"] >= ce_acc - ACC_TOLERANCE, "seconds": t_b["seconds"]}
                sweep.append(row)
                log(f"  {domain} beta {beta}: val ECE {row['val_ece']:.4f} acc {row['val_accuracy']:.4f} (CE {ce_acc:.4f}) "
                    f"T {row['val_temperature']:.3f} AUROC(synthetic) {row['val_auroc_synthetic']:.4f}")
            ok = [x for x in sweep if x["within_accuracy"]]
            chosen = min(ok, key=lambda x: x["val_ece"]) if ok else max(sweep, key=lambda x: x["val_accuracy"])
            rule = {"rule": f"lowest served validation ECE among betas with validation accuracy >= CE's - {ACC_TOLERANCE:g}",
                    "ce_val_accuracy": ce_acc, "chosen": chosen["beta"], "any_within": bool(ok)}
            for _, t_b, _ in runs.values():
                t_b["beta_sweep"], t_b["beta_rule"] = sweep, rule
            if 0.0 in runs:
                models["cnc"] = runs[0.0]
            models["cnc_mdca"] = runs[chosen["beta"]]
        for method in METHODS:
            if method not in models or method not in methods:
                continue
            model, tinfo, val = models[method]
            res = evaluate(model, prep, val)
            res["train"] = tinfo
            r["methods"][method] = res
            log(f"{domain}/{method}: tau {res['tau']:.4f} T {res['temperature']:.3f} mean AUROC {res['ood_mean']['auroc']:.4f} "
                f"FPR95 {res['ood_mean']['fpr95']:.4f} ECE {res['test_id']['ece']:.4f} (raw {res['test_id']['raw_ece']:.4f}) "
                f"acc {res['test_id']['accuracy']:.4f} " + " ".join(f"{k} {v['auroc']:.4f}" for k, v in res["ood"].items()))
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
