"""Prompt-level parity fixtures for the TypeScript engine, computed with the FULL masked forward
(no cache): models/cat/fixtures/adaptive.json and models/cat/fixtures/dense.json.

  /usr/bin/python3 models/cat/fixtures.py
"""
import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import catlib  # noqa: E402
from gen import greedy_full  # noqa: E402

MAX_NEW = 64
_RUTH = ("Now it came to pass in the days when the judges ruled, that there was a famine in the "
         "land. And a certain man of Bethlehemjudah went to sojourn in the country of Moab, he, "
         "and his wife, and his two sons.")
PROMPTS = [
    ("short5", "And G"),
    ("mid37", "In the beginning God created the heaven and the earth."[:37]),
    ("long160", _RUTH[:160]),  # a multiple of 4, 8, 16 and 32
]
SCORE_PROMPT, SCORE_C = "mid37", 16


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def f32(t):
    return t.detach().to(torch.float32).reshape(-1).tolist()


def make(kind):
    model, trained = catlib.load(kind, allow_random=False)
    adaptive = isinstance(model, catlib.AdaptiveCAT)
    sizes = list(model.cfg.chunk_sizes) if adaptive else [None]
    cases = []
    for name, text in PROMPTS:
        ids = list(text.encode("utf-8"))
        for C in sizes:
            toks, logits = greedy_full(model, ids, C, MAX_NEW)
            cases.append({"prompt": name, "prompt_text": text, "prompt_ids": ids,
                          "chunk_size": C, "next_logits": f32(logits[0]), "next_token": toks[0],
                          "greedy_ids": toks,
                          "greedy_text": bytes(toks).decode("utf-8", errors="replace")})
    d = catlib.model_dir(kind)
    out = {"format": "catskim.cat.fixtures/v1", "kind": model.kind, "trained": trained,
           "model_pt_sha256": sha256(os.path.join(d, "model.pt")),
           "decode_onnx_sha256": sha256(os.path.join(d, "decode.onnx")),
           "max_new": MAX_NEW,
           "method": "full masked forward (no KV cache) for every token; greedy = argmax "
                     "(first maximal index); next_logits = logits for the first generated token",
           "tolerance_hint": {"logits_abs": 1e-4},
           "cases": cases}
    if adaptive:
        out["positions"] = model.cfg.positions  # decoder slot positions the engine must use
        text = dict(PROMPTS)[SCORE_PROMPT]
        ids = torch.tensor([list(text.encode("utf-8"))])
        with torch.no_grad():
            full = model.full_logits(ids, SCORE_C)[0]
        P = ids.shape[1]
        rows = [f32(full[catlib.pred_position(i, SCORE_C)]) for i in range(P + 1)]
        out["score_example"] = {
            "prompt": SCORE_PROMPT, "prompt_ids": ids[0].tolist(), "chunk_size": SCORE_C,
            "rows": "row i = full-forward logits predicting token i (i = 0..P; row 0 is predicted "
                    "from dummy_C + SEP alone, row P is the next token after the prompt); decoder "
                    "slot of row i = (i // C) * (C + 2) + 1 + i % C",
            "logits": rows}
    else:
        text = dict(PROMPTS)[SCORE_PROMPT]
        ids = torch.tensor([list(text.encode("utf-8"))])
        with torch.no_grad():
            full = model.full_logits(ids)[0]
        out["score_example"] = {
            "prompt": SCORE_PROMPT, "prompt_ids": ids[0].tolist(),
            "rows": "row i = logits predicting token i + 1 (i = 0..P-1; token 0 has no prediction)",
            "logits": [f32(full[i]) for i in range(ids.shape[1])]}
    path = os.path.join(catlib.HERE, "fixtures", f"{'adaptive' if adaptive else 'dense'}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {path} ({len(cases)} cases)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for k in sys.argv[1:] or ["adaptive", "dense"]:
        make(k)
