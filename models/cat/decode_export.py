"""Copy-free decode.onnx: the same maths and the same catskim.cat/v1 contract as the concat graph,
without concatenating past and new K/V in every layer.

The concat graph (catlib Block.forward) builds kk = cat([past_k, k]) and vv = cat([past_v, v]) in
every layer, so ONNX Runtime copies each layer's whole cache on every step. Here each decoder layer
computes the scores against the past and against the new entries separately, concatenates only the
*scores* ([B,H,T,P+T], small for T = 1), takes one softmax over both, and sums
p[..., :P] @ past_v + p[..., P:] @ v. Inputs, outputs, names and dynamic axes are unchanged, so the
engine loads either graph; the attention bias keeps its [past..., new...] key order.

Used by export.py (`--decode-graph concat-free`) and by the benchmark export
(loadtest/concat_free_export.py). Parity with the concat graph is tested in onnxruntime-node by
models/cat/test_decode_export.py (abs 1e-5 + rel 1e-5, several B/T/P including P = 0).

Default: the concat graph (DEFAULT_GRAPH), although the copy-free one is faster. Measured side by
side in one process (decode call, T = 1, 4k context, medians of 7 rounds, loadtest/decode-ab.ts,
2026-12-06, BENCHMARKS.md "Copy-free decode"): dense 1.07x at batch 1, 1.60x at batch 8, 2.05x at
batch 32; CAT-16 (P = 258) 1.01x, 1.02x, 1.08x. But its output depends (in the last float bits,
~2e-7 in a log-probability) on where a sequence is split between past and new, because
p[..., :P] @ past_v + p[..., P:] @ v sums in another order than one product over [past, new]. The
engine promises bit-identical tokens and log-probabilities with and without the prefix cache and
for n samples sharing one prefill (test/engine/prefix-cache.test.ts, rollouts tests); with the
copy-free graph those tests fail. Export with `--decode-graph concat-free` where that speed matters
more than the exactness guarantee.
"""
import contextlib
import types

import torch

GRAPHS = ("concat-free", "concat")
DEFAULT_GRAPH = "concat"


def concat_free_forward(self, x, cos, sin, bias=None, past_k=None, past_v=None):
    """catlib.Block.forward without the K/V concatenation (one joint softmax over both score sets)."""
    q, k, v = self._qkv(x, cos, sin)
    q = q * self.scale
    s_new = torch.matmul(q, k.transpose(-1, -2))
    if past_k is None:
        s = s_new if bias is None else s_new + bias
        return self._finish(x, torch.matmul(torch.softmax(s, dim=-1), v)), k, v
    P = past_k.shape[2]
    s = torch.cat([torch.matmul(q, past_k.transpose(-1, -2)), s_new], dim=-1)
    if bias is not None:
        s = s + bias
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p[..., :P], past_v) + torch.matmul(p[..., P:], v)
    return self._finish(x, o), k, v


@contextlib.contextmanager
def decode_graph(decoder, graph: str):
    """Within the block, the decoder's layers run as `graph` ("concat" = as trained, or
    "concat-free"). Only this decoder's layers change (instance attributes), not catlib.Block."""
    if graph not in GRAPHS:
        raise ValueError(f"decode graph must be one of {GRAPHS}, got {graph!r}")
    if graph == "concat":
        yield decoder
        return
    for layer in decoder.layers:
        layer.forward = types.MethodType(concat_free_forward, layer)
    try:
        yield decoder
    finally:
        for layer in decoder.layers:
            del layer.forward
