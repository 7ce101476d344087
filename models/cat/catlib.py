"""Reference PyTorch implementation of the adaptive Compress & Attend Transformer (CAT,
arXiv 2511.05313) and of a dense baseline with the same decoder, for catskim.

Written for Debian's torch 1.13 (no scaled_dot_product_attention: attention is written out).
The design followed is /work/shared/design/cat.md:

* Compressor: own byte embedding, pre-norm blocks (RMSNorm, RoPE attention, SwiGLU), run
  bidirectionally over [size_token(C), chunk_index_token(k), x_1 .. x_C] at RoPE positions
  0..C+1; final norm, drop the two special slots, flatten C x Dc, one linear map to D.
  The projection is ONE weight D x (Cmax*Dc); for C < Cmax it is resized along the input axis
  (F.interpolate bilinear, align_corners=False, output axis unchanged).
* Decoder: causal pre-norm transformer of width D. Layer-0 inputs are token embeddings or
  special vectors (dummy_C, SEP, compressed f). Chunk k becomes the block
  [f_{k-1}, SEP, x_k1 .. x_kC] (f_{-1} = dummy_C). A query sees a key iff the key is not in the
  future and (same block or the key is a block's first slot).
* Positions ("recency", our departure from the paper): a slot's RoPE position is its index in
  the decoder's own short sequence [dummy_C, f_0 .. f_{k-1}, SEP, x_k1 ..], so block k sits at
  k, k+1, .., k+C+1 and the previous chunk's vector is the nearest compressed slot. The paper's
  layout ("sequential" in manifests: every block restarts at 0) puts all compressed vectors at
  position 0, and a decoder trained on little data then cannot tell the most recent chunk from
  the dummy (swap test, models/cat/README.md).
* Prediction: SEP predicts a chunk's first token; a token predicts the next one.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = -1e9  # masked attention bias (never -inf)
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Config:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn: int = 352
    dc: int = 64
    c_layers: int = 2
    c_heads: int = 4
    c_ffn: int = 192
    chunk_sizes: tuple = (4, 8, 16, 32)
    max_context: int = 4096
    train_context: int = 1024
    rope_base: float = 10000.0
    positions: str = "recency"  # or "sequential" (the paper's: every block restarts at 0)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def cmax(self) -> int:
        return max(self.chunk_sizes)

    @property
    def index_rows(self) -> int:
        return self.max_context // min(self.chunk_sizes)

    def to_dict(self):
        d = asdict(self)
        d["chunk_sizes"] = list(self.chunk_sizes)
        return d

    @staticmethod
    def from_dict(d):
        d = dict(d)
        d["chunk_sizes"] = tuple(d["chunk_sizes"])
        d.setdefault("positions", "sequential")  # checkpoints from before the field
        return Config(**d)


# ----------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rope(nn.Module):
    """cos/sin computed from integer positions (no table to slice)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        self.register_buffer("inv_freq", inv.to(torch.float32), persistent=False)

    def forward(self, pos):  # pos int64 [B, T] -> cos, sin [B, 1, T, Dh/2]
        ang = pos.to(torch.float32).unsqueeze(-1) * self.inv_freq
        return ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)


def apply_rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.dh = d // heads
        self.scale = 1.0 / math.sqrt(self.dh)
        self.norm1 = RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.norm2 = RMSNorm(d)
        self.mlp = SwiGLU(d, hidden)

    def _qkv(self, x, cos, sin):
        B, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _finish(self, x, o):
        B, H, T, dh = o.shape
        x = x + self.out(o.transpose(1, 2).reshape(B, T, H * dh))
        return x + self.mlp(self.norm2(x))

    def forward(self, x, cos, sin, bias=None, past_k=None, past_v=None):
        """Generic path: keys are [past..., new...]; bias [B|1, 1, T, P+T] or None (full)."""
        q, k, v = self._qkv(x, cos, sin)
        kk = k if past_k is None else torch.cat([past_k, k], dim=2)
        vv = v if past_v is None else torch.cat([past_v, v], dim=2)
        s = torch.matmul(q * self.scale, kk.transpose(-1, -2))
        if bias is not None:
            s = s + bias
        o = torch.matmul(torch.softmax(s, dim=-1), vv)
        return self._finish(x, o), k, v

    def forward_blocks(self, x, cos, sin, L: int, local_bias, cmp_bias):
        """Training path for the CAT block mask, O(S*(L+K)) instead of O(S^2).
        x is K blocks of L = C+2 slots. Each query attends to its own block (causal) plus the
        first slot of every EARLIER block; one joint softmax. Equal to forward() with the
        full block-mask bias (checked in test_cat.py)."""
        q, k, v = self._qkv(x, cos, sin)
        B, H, S, dh = q.shape
        K = S // L
        q = q * self.scale
        qb, kb, vb = (t.reshape(B, H, K, L, dh) for t in (q, k, v))
        s_loc = torch.matmul(qb, kb.transpose(-1, -2)) + local_bias  # [B,H,K,L,L]
        kc, vc = kb[:, :, :, 0], vb[:, :, :, 0]  # [B,H,K,dh]
        s_cmp = torch.matmul(q, kc.transpose(-1, -2)).view(B, H, K, L, K) + cmp_bias
        p = torch.softmax(torch.cat([s_loc, s_cmp], dim=-1), dim=-1)
        o = torch.matmul(p[..., :L], vb).reshape(B, H, S, dh)
        o = o + torch.matmul(p[..., L:].reshape(B, H, S, K), vc)
        return self._finish(x, o)


# ----------------------------------------------------------------------------- decoder

class Decoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = Rope(cfg.head_dim, cfg.rope_base)
        self.layers = nn.ModuleList(
            [Block(cfg.d_model, cfg.n_heads, cfg.ffn) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def layer0(self, input_ids, special_embeds, use_special):
        return torch.where(use_special.unsqueeze(-1), special_embeds, self.embed(input_ids))

    def step(self, input_ids, special_embeds, use_special, position_ids, attn_bias, past=None):
        """The decode.onnx computation. past: list of (k, v) [B,H,P,Dh] per layer or None.
        Returns logits [B,T,V] and the new (k, v) [B,H,T,Dh] per layer (keys after RoPE)."""
        x = self.layer0(input_ids, special_embeds, use_special)
        return self.run(x, position_ids, attn_bias, past)

    def run(self, x, position_ids, attn_bias, past=None):
        cos, sin = self.rope(position_ids)
        new = []
        for i, layer in enumerate(self.layers):
            pk, pv = (None, None) if past is None else past[i]
            x, k, v = layer(x, cos, sin, attn_bias, pk, pv)
            new.append((k, v))
        return self.head(self.norm(x)), new

    def run_blocks(self, x, position_ids, L: int):
        S = x.shape[1]
        K = S // L
        cos, sin = self.rope(position_ids)
        dev = x.device
        local = torch.full((L, L), NEG, device=dev).triu(1)  # causal inside a block
        ar = torch.arange(K, device=dev)
        cmp = torch.where(ar.view(1, K) < ar.view(K, 1), torch.tensor(0.0, device=dev),
                          torch.tensor(NEG, device=dev)).view(K, 1, K)
        for layer in self.layers:
            x = layer.forward_blocks(x, cos, sin, L, local, cmp)
        return self.head(self.norm(x))


# ----------------------------------------------------------------------------- compressor

class Compressor(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        dc = cfg.dc
        self.embed = nn.Embedding(cfg.vocab_size, dc)
        self.size_embed = nn.Embedding(len(cfg.chunk_sizes), dc)
        self.index_embed = nn.Embedding(cfg.index_rows, dc)
        self.rope = Rope(dc // cfg.c_heads, cfg.rope_base)
        self.layers = nn.ModuleList([Block(dc, cfg.c_heads, cfg.c_ffn) for _ in range(cfg.c_layers)])
        self.norm = RMSNorm(dc)
        self.proj = nn.Parameter(torch.randn(cfg.d_model, cfg.cmax * dc) / math.sqrt(cfg.cmax * dc))

    def proj_weight(self, C: int):
        """D x (C*Dc): the Cmax weight resized along its input axis (bilinear, align_corners=False)."""
        if C == self.cfg.cmax:
            return self.proj
        w = F.interpolate(self.proj[None, None], size=(self.cfg.d_model, C * self.cfg.dc),
                          mode="bilinear", align_corners=False)
        return w[0, 0]

    def hidden(self, chunk_ids, chunk_index, C: int):
        """chunk_ids [N, C], chunk_index [N] -> [N, C*Dc]"""
        N = chunk_ids.shape[0]
        code = self.cfg.chunk_sizes.index(C)
        size_tok = self.size_embed.weight[code].view(1, 1, -1).expand(N, 1, self.cfg.dc)
        x = torch.cat([size_tok, self.index_embed(chunk_index).unsqueeze(1), self.embed(chunk_ids)], 1)
        pos = torch.arange(C + 2, device=chunk_ids.device).unsqueeze(0).expand(N, C + 2)
        cos, sin = self.rope(pos)
        for layer in self.layers:
            x, _, _ = layer(x, cos, sin)  # bidirectional inside the chunk: no mask
        x = self.norm(x)[:, 2:]
        return x.reshape(N, C * self.cfg.dc)

    def forward(self, chunk_ids, chunk_index, C: int, weight=None):
        w = self.proj_weight(C) if weight is None else weight
        return torch.matmul(self.hidden(chunk_ids, chunk_index, C), w.t())


# ----------------------------------------------------------------------------- models

def block_layout(T: int, C: int, positions: str = "recency"):
    """Decoder layout for T tokens at chunk size C: n full blocks [f, SEP, C tokens] then the
    block [f_n, SEP, r tokens]. Returns (n, r, S, slot-position list, block-id list).
    recency: block k at positions k .. k+C+1 (its index in the decoder's own sequence
    [dummy, f_0..f_{k-1}, SEP, x..]); sequential: every block at 0 .. C+1."""
    n, r = divmod(T, C)
    blk = [b for b in range(n) for _ in range(C + 2)] + [n] * (r + 2)
    inner = list(range(C + 2)) * n + list(range(r + 2))
    if positions == "recency":
        pos = [i + b for i, b in zip(inner, blk)]
    elif positions == "sequential":
        pos = inner
    else:
        raise ValueError(f"unknown positions rule {positions!r}")
    return n, r, len(pos), pos, blk


def slot_position(n_compressed: int, n_local: int, compressed: bool, positions: str = "recency") -> int:
    """RoPE position of the next slot of a request that holds n_compressed compressed slots
    (dummy included) and n_local local slots (SEP included), counted before the slot is added
    (at a chunk boundary the local list is already emptied). compressed: the slot is a chunk's
    vector f. The serving rule, in one place (the engine's slotPosition mirrors it)."""
    if positions == "recency":
        return n_compressed + n_local
    if positions == "sequential":  # the paper's: f at 0, SEP at 1, tokens after it
        return 0 if compressed else n_local + 1
    raise ValueError(f"unknown positions rule {positions!r}")


def pred_position(i: int, C: int) -> int:
    """Decoder slot whose output predicts token i (0-based) in the adaptive layout."""
    return (i // C) * (C + 2) + 1 + (i % C)


def block_mask_bias(blk):
    """Block mask from the block id of every slot: a key is visible iff it is not in the future
    and (same block, or it is a block's first slot). First slots are found by index."""
    b = torch.tensor(blk)
    S = len(blk)
    idx = torch.arange(S)
    first = torch.ones(S, dtype=torch.bool)
    first[1:] = b[1:] != b[:-1]
    allowed = (idx.view(1, S) <= idx.view(S, 1)) & ((b.view(1, S) == b.view(S, 1)) | first.view(1, S))
    return torch.where(allowed, torch.tensor(0.0), torch.tensor(NEG)).view(1, 1, S, S)


def causal_bias(T: int):
    return torch.full((T, T), NEG).triu(1).view(1, 1, T, T)


class AdaptiveCAT(nn.Module):
    kind = "adaptive_cat"

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.compressor = Compressor(cfg)
        self.decoder = Decoder(cfg)
        self.sep = nn.Parameter(torch.randn(cfg.d_model) * 0.02)
        self.dummy = nn.Parameter(torch.randn(len(cfg.chunk_sizes), cfg.d_model) * 0.02)
        self.apply(_init)

    def specials_table(self):
        """Rows: sep, dummy_c4, dummy_c8, ... (the specials.bin order)."""
        return torch.cat([self.sep.view(1, -1), self.dummy], 0)

    def dummy_for(self, C: int):
        return self.dummy[self.cfg.chunk_sizes.index(C)]

    def compress_full(self, ids, C: int, n: int, index_offset: int = 0):
        B = ids.shape[0]
        if n == 0:
            return torch.zeros(B, 0, self.cfg.d_model, device=ids.device)
        chunks = ids[:, :n * C].reshape(B * n, C)
        index = (torch.arange(n, device=ids.device) + index_offset).repeat(B)
        return self.compressor(chunks, index, C).view(B, n, self.cfg.d_model)

    def layer0_sequence(self, ids, C: int, index_offset: int = 0, drop_last_block: bool = False, f=None):
        """Layer-0 inputs and positions of the full masked forward over ids [B, T].
        f: the compressed vectors [B, n, D] to use instead of compressing ids (the swap test)."""
        B, T = ids.shape
        D = self.cfg.d_model
        n, r, S, pos, blk = block_layout(T, C, self.cfg.positions)
        if f is None:
            f = self.compress_full(ids, C, n, index_offset)
        firsts = torch.cat([self.dummy_for(C).view(1, 1, D).expand(B, 1, D), f], 1)  # [B, n+1, D]
        tok = self.decoder.embed(ids)
        sep = self.sep.view(1, 1, 1, D)
        full = torch.cat([firsts[:, :n].unsqueeze(2), sep.expand(B, n, 1, D),
                          tok[:, :n * C].reshape(B, n, C, D)], 2).reshape(B, n * (C + 2), D)
        if drop_last_block:
            assert r == 0
            x0 = full
            pos, blk = pos[:n * (C + 2)], blk[:n * (C + 2)]
        else:
            last = torch.cat([firsts[:, n:n + 1], sep.view(1, 1, D).expand(B, 1, D), tok[:, n * C:]], 1)
            x0 = torch.cat([full, last], 1)
        return x0, pos, blk

    def full_logits(self, ids, C: int):
        """Reference full masked forward (generic attention with the block-mask bias).
        Returns decoder logits at every slot [B, S, V] (use pred_position to index)."""
        x0, pos, blk = self.layer0_sequence(ids, C)
        position_ids = torch.tensor(pos).unsqueeze(0).expand(ids.shape[0], -1)
        logits, _ = self.decoder.run(x0, position_ids, block_mask_bias(blk))
        return logits

    def token_logits(self, ids, C: int, structured: bool = True, index_offset: int = 0, f=None):
        """Logits predicting token i for i = 0..T-1 (T a multiple of C when structured).
        f: compressed vectors to use instead of compressing ids (structured path only)."""
        B, T = ids.shape
        sel = torch.tensor([pred_position(i, C) for i in range(T)], device=ids.device)
        if structured:
            x0, pos, _ = self.layer0_sequence(ids, C, index_offset, drop_last_block=True, f=f)
            position_ids = torch.tensor(pos, device=ids.device).unsqueeze(0).expand(B, -1)
            logits = self.decoder.run_blocks(x0, position_ids, C + 2)
        else:
            logits = self.full_logits(ids, C)
        return logits[:, sel]

    def next_logits(self, ids, C: int):
        """Full-forward logits for the token after ids [B, P] -> [B, V]."""
        logits = self.full_logits(ids, C)
        return logits[:, pred_position(ids.shape[1], C)]


class DenseLM(nn.Module):
    kind = "dense"

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder(cfg)
        self.apply(_init)

    def full_logits(self, ids):
        B, T = ids.shape
        x0 = self.decoder.embed(ids)
        position_ids = torch.arange(T, device=ids.device).unsqueeze(0).expand(B, T)
        logits, _ = self.decoder.run(x0, position_ids, causal_bias(T).to(ids.device))
        return logits  # position t predicts token t+1

    def next_logits(self, ids, C=None):
        return self.full_logits(ids)[:, -1]


def _init(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


def build(kind: str, cfg: Config | None = None):
    cfg = cfg or Config()
    return AdaptiveCAT(cfg) if kind in ("adaptive", "adaptive_cat") else DenseLM(cfg)


def model_dir(kind: str) -> str:
    return os.path.join(HERE, "adaptive" if kind in ("adaptive", "adaptive_cat") else "dense")


def load_checkpoint(path: str, kind: str):
    """A model.pt (or training checkpoint) as an eval-mode model, plus the whole checkpoint."""
    ck = torch.load(path, map_location="cpu")
    m = build(kind, Config.from_dict(ck["config"]))
    m.load_state_dict(ck["state_dict"])
    m.eval()
    return m, ck


def load(kind: str, allow_random: bool = True, seed: int = 0):
    """The committed model.pt if present, else a random-init model (for tests)."""
    path = os.path.join(model_dir(kind), "model.pt")
    if os.path.exists(path):
        return load_checkpoint(path, kind)[0], True
    if not allow_random:
        raise FileNotFoundError(path)
    torch.manual_seed(seed)
    m = build(kind)
    m.eval()
    return m, False


def save(model, path: str, extra=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"config": model.cfg.to_dict(), "kind": model.kind,
                "state_dict": model.state_dict(), "extra": extra or {}}, path)


# ----------------------------------------------------------------------------- data

HELD_OUT_BOOKS = ("Ruth", "Eccl", "Mark", "1Pet")  # abbreviations as printed by `bible`
BIBLE_CMD = ["bible", "-f", "Gen1:1-Rev22:21"]
_REF = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def kjv_split(work_dir: str):
    """Train / held-out byte strings. Verse references are stripped, one verse per line;
    held-out = the whole books in HELD_OUT_BOOKS."""
    os.makedirs(work_dir, exist_ok=True)
    tr, ho = os.path.join(work_dir, "kjv_train.txt"), os.path.join(work_dir, "kjv_heldout.txt")
    if not (os.path.exists(tr) and os.path.exists(ho)):
        raw = subprocess.run(BIBLE_CMD, check=True, capture_output=True).stdout.decode("ascii")
        train, held = [], []
        for line in raw.splitlines():
            m = _REF.match(line)
            if not m:
                continue
            (held if m.group(1) in HELD_OUT_BOOKS else train).append(m.group(4).strip())
        with open(tr, "w") as f:
            f.write("\n".join(train) + "\n")
        with open(ho, "w") as f:
            f.write("\n".join(held) + "\n")
    with open(tr, "rb") as f:
        a = f.read()
    with open(ho, "rb") as f:
        b = f.read()
    return torch.frombuffer(bytearray(a), dtype=torch.uint8).long(), \
        torch.frombuffer(bytearray(b), dtype=torch.uint8).long()


def recall_sequence(text, T: int, rng: random.Random, n_pairs: int):
    """Associative recall: n_pairs 'abc=123;' early, filler text, then every key queried again
    (shuffled) at the end. Returns (ids [T], list of value-byte positions (each 3 positions))."""
    keys = set()
    while len(keys) < n_pairs:
        keys.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)))
    keys = sorted(keys)
    rng.shuffle(keys)
    vals = {k: "%03d" % rng.randrange(1000) for k in keys}
    head = "".join(f"{k}={vals[k]};" for k in keys) + "\n"
    order = keys[:]
    rng.shuffle(order)
    tail = "\n" + "".join(f"{k}={vals[k]};" for k in order)
    fill = T - len(head) - len(tail)
    start = rng.randrange(0, len(text) - fill - 1)
    filler = bytes(text[start:start + fill].tolist()).decode("ascii")
    s = head + filler + tail
    assert len(s) == T
    q0 = len(head) + len(filler) + 1
    targets = [[q0 + 8 * j + 4 + t for t in range(3)] for j in range(n_pairs)]
    return torch.tensor(list(s.encode("ascii"))), targets


def batch(text, B: int, T: int, rng: random.Random, recall_frac: float):
    rows = []
    for _ in range(B):
        if rng.random() < recall_frac:
            rows.append(recall_sequence(text, T, rng, rng.randint(4, 16))[0])
        else:
            s = rng.randrange(0, len(text) - T - 1)
            rows.append(text[s:s + T])
    return torch.stack(rows)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
