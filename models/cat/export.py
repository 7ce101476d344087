"""Export models/cat/{adaptive,dense}/model.pt to ONNX (opset 17) + specials.bin + manifest.json,
and write the graph-level parity fixture models/cat/fixtures/graphs.json (random small inputs
and the PyTorch outputs; check_onnx.mjs replays them in onnxruntime-node).

  /usr/bin/python3 models/cat/export.py [--kind adaptive|dense|both] [--decode-graph concat-free|concat]
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import catlib  # noqa: E402
import corpus  # noqa: E402
from decode_export import DEFAULT_GRAPH, GRAPHS, decode_graph  # noqa: E402

OPSET = 17


class DecodeGraph(nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, special_embeds, use_special, position_ids, attn_bias, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, new = self.decoder.step(input_ids, special_embeds, use_special, position_ids,
                                        attn_bias, pairs)
        out = [logits]
        for k, v in new:
            out += [k, v]
        return tuple(out)


class CompressGraph(nn.Module):
    """Compressor + the projection resized for this C (baked), size token baked."""

    def __init__(self, compressor, C):
        super().__init__()
        self.compressor = compressor
        self.C = C
        self.weight = nn.Parameter(compressor.proj_weight(C).detach().clone())

    def forward(self, chunk_ids, chunk_index):
        return self.compressor(chunk_ids, chunk_index, self.C, weight=self.weight)


def decode_names(L):
    ins = ["input_ids", "special_embeds", "use_special", "position_ids", "attn_bias"]
    outs = ["logits"]
    for l in range(L):
        ins += [f"past_key_{l}", f"past_value_{l}"]
        outs += [f"new_key_{l}", f"new_value_{l}"]
    return ins, outs


def decode_inputs(cfg, B, T, P, seed):
    g = torch.Generator().manual_seed(seed)
    H, Dh, D = cfg.n_heads, cfg.head_dim, cfg.d_model
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    spec = torch.randn(B, T, D, generator=g)
    use = torch.rand(B, T, generator=g) < 0.4
    pos = torch.randint(0, 40, (B, T), generator=g)
    bias = torch.where(torch.rand(B, 1, T, P + T, generator=g) < 0.3, torch.tensor(catlib.NEG), torch.tensor(0.0))
    for t in range(T):  # causal among the new slots, each query sees itself
        bias[:, :, t, P + t + 1:] = catlib.NEG
        bias[:, :, t, P + t] = 0.0
    past = []
    for _ in range(cfg.n_layers):
        past += [torch.randn(B, H, P, Dh, generator=g), torch.randn(B, H, P, Dh, generator=g)]
    return [ids, spec, use, pos, bias] + past


def export_decode(model, path, graph=DEFAULT_GRAPH):
    """graph: "concat-free" (decode_export.py: same contract, no K/V copy) or "concat" (as trained)."""
    cfg = model.cfg
    g = DecodeGraph(model.decoder).eval()
    ins, outs = decode_names(cfg.n_layers)
    args = tuple(decode_inputs(cfg, 2, 3, 5, 0))
    dyn = {"input_ids": {0: "batch", 1: "new"}, "special_embeds": {0: "batch", 1: "new"},
           "use_special": {0: "batch", 1: "new"}, "position_ids": {0: "batch", 1: "new"},
           "attn_bias": {0: "batch", 2: "new", 3: "past_plus_new"}, "logits": {0: "batch", 1: "new"}}
    for l in range(cfg.n_layers):
        for n in (f"past_key_{l}", f"past_value_{l}"):
            dyn[n] = {0: "batch", 2: "past"}
        for n in (f"new_key_{l}", f"new_value_{l}"):
            dyn[n] = {0: "batch", 2: "new"}
    with torch.no_grad(), decode_graph(model.decoder, graph):
        torch.onnx.export(g, args, path, input_names=ins, output_names=outs, dynamic_axes=dyn,
                          opset_version=OPSET, do_constant_folding=True)
    return g


def export_compress(model, C, path):
    g = CompressGraph(model.compressor, C).eval()
    ids = torch.randint(0, 256, (3, C), generator=torch.Generator().manual_seed(C))
    idx = torch.tensor([0, 7, 2])
    with torch.no_grad():
        torch.onnx.export(g, (ids, idx), path, input_names=["chunk_ids", "chunk_index"],
                          output_names=["f"],
                          dynamic_axes={"chunk_ids": {0: "n"}, "chunk_index": {0: "n"}, "f": {0: "n"}},
                          opset_version=OPSET, do_constant_folding=True)
    return g


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def tensor_json(t):
    t = t.detach()
    if t.dtype == torch.bool:
        data = [bool(x) for x in t.reshape(-1).tolist()]
        dtype = "bool"
    elif t.dtype == torch.int64:
        data = [int(x) for x in t.reshape(-1).tolist()]
        dtype = "int64"
    else:
        data = t.to(torch.float32).reshape(-1).tolist()  # float32 -> exact float64 repr
        dtype = "float32"
    return {"dtype": dtype, "dims": list(t.shape), "data": data}


def training_info(model_pt):
    ck = torch.load(model_pt, map_location="cpu")
    ex = ck.get("extra", {}) or {}
    if not ex:
        return {"note": "random init (no training record)"}
    env = ("OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2 "
           "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 "
           "MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1")
    args = ck.get("args") or {}
    argv = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items()
                    if v not in (None, False) and k not in ("resume", "segment_seconds"))
    cmd = (f"flock /tmp/catskim-train.lock env {env} /usr/bin/python3 models/cat/train.py {argv} "
           "(in segments: --resume --segment-seconds 600; see models/cat/run_training.sh)")
    return {"command": cmd, "seconds": ex.get("seconds"), "steps": ex.get("steps"),
            "tokens": ex.get("tokens"), "tokens_per_s": ex.get("tokens_per_s"),
            "batch": ex.get("batch"), "context": ex.get("context"),
            "final_loss": {"nats_per_byte_ema": ex.get("final_loss_ema_nats"),
                           "bits_per_byte_ema": round(ex["final_loss_ema_nats"] / np.log(2), 4)
                           if ex.get("final_loss_ema_nats") is not None else None},
            "init_from": ex.get("init_from"),
            "data": {"text": "mix (models/cat/corpus.py): " + ", ".join(
                         f"{k} {v}" for k, v in corpus.MIX.items()) + "; KJV (bible-kjv), WEB "
                         "(sword-text-web via diatheke), GCIDE (dict-gcide), fortunes",
                     "held_out_books": ["Ruth", "Ecclesiastes", "Mark", "1 Peter"],
                     "name_copy_fraction": ex.get("name_frac"),
                     "answer_weight": ex.get("answer_weight"),
                     "name_distance": ex.get("name_distance"),
                     "chunk_size_probs": ex.get("c_probs") if ex.get("kind") == "adaptive" else None},
            "hardware": "2 shared CPU cores, torch 1.13 (1 thread), OpenBLAS (2 threads), jemalloc"}


def io_description(cfg, adaptive):
    L = cfg.n_layers
    d = {"decode.onnx": {
        "inputs": {"input_ids": "int64 [B,T] byte ids (ignored where use_special)",
                   "special_embeds": "float32 [B,T,D] layer-0 vectors for special rows (dummy/SEP/f)",
                   "use_special": "bool [B,T] true = layer-0 input is special_embeds",
                   "position_ids": "int64 [B,T] RoPE positions (computed in-graph)",
                   "attn_bias": "float32 [B,1,T,P+T] 0 or -1e9, keys are [past..., new...]",
                   "past_key_{l}/past_value_{l}": f"float32 [B,H,P,Dh], l = 0..{L - 1}; P may be 0"},
        "outputs": {"logits": "float32 [B,T,V] at every new position",
                    "new_key_{l}/new_value_{l}": "float32 [B,H,T,Dh] only the new entries (keys after RoPE)"}}}
    if adaptive:
        d["compress_c{C}.onnx"] = {
            "inputs": {"chunk_ids": "int64 [N,C]", "chunk_index": "int64 [N] (< index_rows)"},
            "outputs": {"f": "float32 [N,D] compressed vector (a layer-0 special row)"}}
    return d


def write_manifest(model, out_dir, files):
    cfg = model.cfg
    adaptive = isinstance(model, catlib.AdaptiveCAT)
    man = {"format": "catskim.cat/v1", "kind": "adaptive_cat" if adaptive else "dense",
           "vocab_size": cfg.vocab_size, "tokenizer": {"type": "bytes"},
           "dtype": "float32",
           "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
           "head_dim": cfg.head_dim, "ffn_hidden": cfg.ffn, "rope_base": cfg.rope_base,
           "max_context": cfg.max_context, "train_context": cfg.train_context}
    if adaptive:
        man.update({
            "chunk_sizes": list(cfg.chunk_sizes), "default_chunk_size": 16,
            "chunk_index_rows": cfg.index_rows,
            "specials": {"file": "specials.bin", "dtype": "float32", "endianness": "little",
                         "row_width": cfg.d_model,
                         "rows": ["sep"] + [f"dummy_c{C}" for C in cfg.chunk_sizes]},
            "compressor": {"d_model": cfg.dc, "n_layers": cfg.c_layers, "n_heads": cfg.c_heads,
                           "ffn_hidden": cfg.c_ffn,
                           "projection": "one weight D x (32*Dc), resized along the input axis "
                                         "(bilinear, align_corners=False) per C; baked per graph"},
            "compress_graphs": {str(C): f"compress_c{C}.onnx" for C in cfg.chunk_sizes},
            # recency: a slot's RoPE position is its index in [dummy_C, f_1..f_n, SEP, x..];
            # a manifest without the field means "sequential" (the paper's per-block restart)
            "positions": cfg.positions,
            "layout": {"block": "[f_prev, SEP, x_1..x_C]; f_prev of chunk 0 = dummy_C",
                       "positions": ("recency: slot index in [dummy_C, f_1..f_n, SEP, x..] = "
                                     "len(compressed) + len(local) when appended")
                       if cfg.positions == "recency" else "sequential: restart per block: f 0, SEP 1, tokens 2..C+1",
                       "mask": "key not in the future AND (same block OR key is a block's first slot)",
                       "prediction": "SEP predicts the chunk's first token; a token predicts the next"},
        })
    else:
        man["layout"] = {"positions": "0..N-1", "mask": "causal",
                         "note": "special_embeds/use_special are accepted (same contract) and unused by the engine"}
    man["files"] = {f: {"sha256": sha256(os.path.join(out_dir, f)),
                        "bytes": os.path.getsize(os.path.join(out_dir, f))} for f in files}
    man["io"] = io_description(cfg, adaptive)
    man["training"] = training_info(os.path.join(out_dir, "model.pt"))
    catlib.write_json(os.path.join(out_dir, "manifest.json"), man)
    return man


def export_kind(kind, fixtures, decode_graph_kind=DEFAULT_GRAPH):
    model, trained = catlib.load(kind, allow_random=False)
    out = catlib.model_dir(kind)
    cfg = model.cfg
    files = ["decode.onnx"]
    g = export_decode(model, os.path.join(out, "decode.onnx"), decode_graph_kind)
    cases = []
    for (B, T, P, seed) in [(2, 3, 5, 1), (2, 4, 0, 2), (3, 1, 7, 3), (1, 6, 2, 4)]:
        args = decode_inputs(cfg, B, T, P, seed)
        with torch.no_grad():
            res = g(*args)
        ins, outs = decode_names(cfg.n_layers)
        cases.append({"name": f"B{B}_T{T}_P{P}",
                      "inputs": {n: tensor_json(t) for n, t in zip(ins, args)},
                      "outputs": {n: tensor_json(t) for n, t in zip(outs, res)}})
    fixtures[f"{kind}/decode.onnx"] = cases
    if isinstance(model, catlib.AdaptiveCAT):
        for C in cfg.chunk_sizes:
            name = f"compress_c{C}.onnx"
            cg = export_compress(model, C, os.path.join(out, name))
            files.append(name)
            gen = torch.Generator().manual_seed(100 + C)
            cc = []
            for N in (1, 5):
                ids = torch.randint(0, 256, (N, C), generator=gen)
                idx = torch.randint(0, cfg.index_rows, (N,), generator=gen)
                with torch.no_grad():
                    f = cg(ids, idx)
                cc.append({"name": f"N{N}", "inputs": {"chunk_ids": tensor_json(ids), "chunk_index": tensor_json(idx)},
                           "outputs": {"f": tensor_json(f)}})
            fixtures[f"{kind}/{name}"] = cc
        sp = model.specials_table().detach().to(torch.float32).numpy().astype("<f4")
        sp.tofile(os.path.join(out, "specials.bin"))
        files.append("specials.bin")
    files.append("model.pt")
    import onnx
    for f in files:
        if f.endswith(".onnx"):
            onnx.checker.check_model(onnx.load(os.path.join(out, f)))
    man = write_manifest(model, out, files)
    print(f"exported {kind} ({'trained' if trained else 'random'}) -> {out}: "
          + ", ".join(f"{k} {v['bytes']}" for k, v in man["files"].items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="both", choices=["adaptive", "dense", "both"])
    ap.add_argument("--decode-graph", default=DEFAULT_GRAPH, choices=GRAPHS,
                    help="decode.onnx without the per-layer K/V concat (default; decode_export.py) or with it")
    a = ap.parse_args()
    torch.set_num_threads(1)
    fx_dir = os.path.join(catlib.HERE, "fixtures")
    os.makedirs(fx_dir, exist_ok=True)
    path = os.path.join(fx_dir, "graphs.json")
    fixtures = {}
    if os.path.exists(path):
        with open(path) as f:
            fixtures = json.load(f).get("graphs", {})
    kinds = ["adaptive", "dense"] if a.kind == "both" else [a.kind]
    for k in kinds:
        for key in [key for key in fixtures if key.startswith(k + "/")]:
            del fixtures[key]
        export_kind(k, fixtures, a.decode_graph)
    with open(path, "w") as f:
        json.dump({"format": "catskim.cat.graphs/v1",
                   "note": "random inputs per exported graph and the PyTorch outputs (float32 values "
                           "printed as float64 reprs); replay with node models/cat/check_onnx.mjs",
                   "tolerance": {"abs": 1e-4, "rel": 1e-4},
                   "graphs": fixtures}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
