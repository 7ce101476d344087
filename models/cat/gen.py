"""Reference KV-cached, batched generator (the serving algorithm of cat.md), written against the
same Decoder.step() that decode.onnx exports, so it is also a model of what the TypeScript engine
does. Rows of one batch may use different chunk sizes (and dense rows use C=None).

Per request and layer the cache is two lists: compressed (dummy_C, f_1 .. f_n) and local
(SEP + the tokens of the current chunk fed so far).
  prefill:  [dummy_C, f_1..f_n, SEP, x_{nC+1}..x_P], plain causal mask among the new entries,
            P = 0 past; first n+1 new K/V -> compressed, rest -> local.
  token:    feed the last sampled token against compressed + local.
  boundary: (the C-th token of the chunk was just sampled) compress chunk n (index n), run
            [f, SEP] against compressed only; f's K/V -> compressed, local = [SEP]; SEP's
            logits give the next token.
Positions come from catlib.slot_position (recency: the slot's index in [compressed, local];
sequential: the paper's per-block restart), the model's cfg.positions.
"""
from __future__ import annotations

import torch

from catlib import NEG, AdaptiveCAT, slot_position


class Row:
    def __init__(self, prompt, C):
        self.ids = list(prompt)
        self.C = C
        self.n = 0  # compressed chunks
        self.comp = None  # per layer (k, v) [H, n+1, Dh]
        self.local = None  # per layer (k, v) [H, m, Dh]
        self.logits = []  # logits used for each generated token


def _cat_kv(a, b):
    if a is None:
        return b
    return [(torch.cat([ka, kb], 1), torch.cat([va, vb], 1)) for (ka, va), (kb, vb) in zip(a, b)]


def _len(kv):
    return 0 if kv is None else kv[0][0].shape[1]


def decode_batch(decoder, items):
    """items: dicts with ids [T_r], spec [T_r, D], use [T_r] bool, pos [T_r], past (per-layer
    (k, v) [H, P_r, Dh] or None). Pads to one [B, T] x [B, P] call; padded past slots get -1e9,
    new slots are causal (right padding is then invisible to real queries, and padded query
    rows still see at least themselves). Returns per item (logits [T_r, V], new kv per layer)."""
    cfg = decoder.cfg
    B = len(items)
    T = max(len(it["ids"]) for it in items)
    P = max(_len(it["past"]) for it in items)
    H, Dh, D, L = cfg.n_heads, cfg.head_dim, cfg.d_model, cfg.n_layers
    ids = torch.zeros(B, T, dtype=torch.long)
    spec = torch.zeros(B, T, D)
    use = torch.zeros(B, T, dtype=torch.bool)
    pos = torch.zeros(B, T, dtype=torch.long)
    bias = torch.full((B, 1, T, P + T), NEG)
    past = [(torch.zeros(B, H, P, Dh), torch.zeros(B, H, P, Dh)) for _ in range(L)]
    causal = torch.full((T, T), NEG).triu(1)
    for b, it in enumerate(items):
        t = len(it["ids"])
        ids[b, :t] = torch.as_tensor(it["ids"])
        spec[b, :t] = it["spec"]
        use[b, :t] = it["use"]
        pos[b, :t] = torch.as_tensor(it["pos"])
        p = _len(it["past"])
        bias[b, 0, :, :p] = 0.0
        bias[b, 0, :, P:] = causal
        for l in range(L):
            if p:
                past[l][0][b, :, :p] = it["past"][l][0]
                past[l][1][b, :, :p] = it["past"][l][1]
    logits, new = decoder.step(ids, spec, use, pos, bias, past)
    out = []
    for b, it in enumerate(items):
        t = len(it["ids"])
        out.append((logits[b, :t], [(k[b, :, :t], v[b, :, :t]) for k, v in new]))
    return out


@torch.no_grad()
def generate(model, prompts, chunk_sizes, max_new: int):
    """Greedy generation. model: AdaptiveCAT (chunk_sizes[i] in its sizes) or DenseLM
    (chunk_sizes[i] None). Returns the Row objects (ids, and logits of every generated token)."""
    dec = model.decoder
    D = model.cfg.d_model
    rows = [Row(p, C) for p, C in zip(prompts, chunk_sizes)]
    adaptive = isinstance(model, AdaptiveCAT)
    for r in rows:
        assert len(r.ids) >= 1, "prompt needs at least one token"
        if adaptive:
            assert r.C in model.cfg.chunk_sizes, f"untrained chunk size {r.C}"

    # ---- prefill: one compress call per distinct C, then one decode call
    items = []
    fs = {}
    if adaptive:
        for C in sorted(set(r.C for r in rows)):
            grp = [r for r in rows if r.C == C]
            chunks, index = [], []
            for r in grp:
                n = len(r.ids) // C
                assert n < model.cfg.index_rows
                chunks += [r.ids[j * C:(j + 1) * C] for j in range(n)]
                index += list(range(n))
            f = model.compressor(torch.tensor(chunks).view(-1, C), torch.tensor(index), C) \
                if chunks else torch.zeros(0, D)
            o = 0
            for r in grp:
                n = len(r.ids) // C
                fs[id(r)] = f[o:o + n]
                o += n
    rule = model.cfg.positions
    for r in rows:
        if adaptive:
            C = r.C
            n = len(r.ids) // C
            rest = r.ids[n * C:]
            spec = torch.cat([model.dummy_for(C).view(1, D), fs[id(r)], model.sep.view(1, D),
                              torch.zeros(len(rest), D)], 0)
            use = torch.tensor([True] * (n + 2) + [False] * len(rest))
            pos = [slot_position(j, 0, True, rule) for j in range(n + 1)]
            pos += [slot_position(n + 1, j, False, rule) for j in range(len(rest) + 1)]
            items.append({"ids": [0] * (n + 2) + rest, "spec": spec, "use": use,
                          "pos": pos, "past": None})
            r.n = n
        else:
            P = len(r.ids)
            items.append({"ids": r.ids, "spec": torch.zeros(P, D), "use": torch.zeros(P, dtype=torch.bool),
                          "pos": list(range(P)), "past": None})
    outs = decode_batch(dec, items)
    for r, (lg, kv) in zip(rows, outs):
        if adaptive:
            r.comp = [(k[:, :r.n + 1], v[:, :r.n + 1]) for k, v in kv]
            r.local = [(k[:, r.n + 1:], v[:, r.n + 1:]) for k, v in kv]
        else:
            r.local = kv
        r.logits.append(lg[-1])
        r.ids.append(int(lg[-1].argmax()))

    # ---- decode ticks
    for _ in range(max_new - 1):
        boundary = [adaptive and len(r.ids) - r.n * r.C == r.C for r in rows]
        fnew = {}
        if adaptive:
            for C in sorted(set(r.C for r, bd in zip(rows, boundary) if bd)):
                grp = [r for r, bd in zip(rows, boundary) if bd and r.C == C]
                for r in grp:
                    assert r.n < model.cfg.index_rows, "context past the chunk-index table"
                f = model.compressor(torch.tensor([r.ids[r.n * C:(r.n + 1) * C] for r in grp]),
                                     torch.tensor([r.n for r in grp]), C)
                for j, r in enumerate(grp):
                    fnew[id(r)] = f[j]
        items = []
        for r, bd in zip(rows, boundary):
            if bd:
                spec = torch.stack([fnew[id(r)], model.sep])
                nc = r.n + 1  # compressed slots held (dummy + n chunks); local is dropped
                items.append({"ids": [0, 0], "spec": spec, "use": torch.tensor([True, True]),
                              "pos": [slot_position(nc, 0, True, rule),
                                      slot_position(nc + 1, 0, False, rule)], "past": r.comp})
            else:
                past = _cat_kv(r.comp, r.local) if adaptive else r.local
                p = slot_position(r.n + 1, _len(r.local), False, rule) if adaptive else len(r.ids) - 1
                items.append({"ids": [r.ids[-1]], "spec": torch.zeros(1, D),
                              "use": torch.tensor([False]), "pos": [p], "past": past})
        outs = decode_batch(dec, items)
        for r, bd, (lg, kv) in zip(rows, boundary, outs):
            if bd:
                r.comp = _cat_kv(r.comp, [(k[:, :1], v[:, :1]) for k, v in kv])
                r.local = [(k[:, 1:], v[:, 1:]) for k, v in kv]
                r.n += 1
            else:
                r.local = _cat_kv(r.local, kv)
            r.logits.append(lg[-1])
            r.ids.append(int(lg[-1].argmax()))
    return rows


@torch.no_grad()
def greedy_full(model, prompt, C, max_new: int):
    """Greedy continuation where every token comes from the full (uncached) forward."""
    ids = list(prompt)
    logits = []
    for _ in range(max_new):
        lg = model.next_logits(torch.tensor([ids]), C)[0]
        logits.append(lg)
        ids.append(int(lg.argmax()))
    return ids[len(prompt):], logits
