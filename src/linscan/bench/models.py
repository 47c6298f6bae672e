"""Model benchmarks: per-token generation time against context length, training throughput.

    linscan bench model [--pattern DDDD,DDDA] [--contexts 1024,16384] [--threads 2]

Generation: prefill a context of L random bytes with one chunked forward, then
time single-token steps that carry the state. A recurrent layer's step reads a
constant-size state, so its time must not grow with L (bar: time at 16384
<= 1.2x time at 1024 for a pattern without attention); attention layers read a
KV cache that grows with L. Training: tokens per second of forward, backward
and AdamW step for the tiny preset, with and without attention layers.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from ..models import LinscanForCausalLM, preset
from ..train.optim import make_optimizer


@torch.no_grad()
def decode_seconds_per_token(model, context: int, *, steps: int = 32, chunk: int = 4096) -> float:
    """Median seconds of one decode step after a context of ``context`` tokens."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, context), generator=gen)
    state = None
    for start in range(0, context, chunk):               # prefill in pieces to bound memory
        state = model(ids[:, start:start + chunk], state=state).state
    token = ids[:, -1:]
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = model(token, state=state)
        times.append(time.perf_counter() - t)
        state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    return statistics.median(times[steps // 4:])


def train_tokens_per_second(model, *, batch_size: int = 16, seq_len: int = 128, steps: int = 6) -> float:
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (batch_size, seq_len + 1), generator=gen)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = model(x[:, :-1], labels=x[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return batch_size * seq_len / statistics.median(times[1:])


def run(patterns: list[str], contexts: list[int], *, preset_name: str = "tiny", threads: int = 2,
        out: str | None = None) -> dict:
    torch.set_num_threads(threads)
    results = {"preset": preset_name, "threads": threads, "rows": []}
    print(f"{'pattern':<10}{'train tok/s':>14}" + "".join(f"{'ms/token @' + str(c):>18}" for c in contexts)
          + f"{'ratio':>8}")
    for pattern in patterns:
        torch.manual_seed(0)
        model = LinscanForCausalLM(preset(preset_name, pattern=pattern)).eval()
        print(f"  {pattern}: decoding...", file=sys.stderr, flush=True)
        per_token = {c: decode_seconds_per_token(model, c) for c in contexts}
        model.train()
        print(f"  {pattern}: training...", file=sys.stderr, flush=True)
        tps = train_tokens_per_second(model)
        ratio = per_token[contexts[-1]] / per_token[contexts[0]]
        results["rows"].append({"pattern": pattern, "train_tokens_per_s": tps,
                                "decode_s_per_token": {str(c): s for c, s in per_token.items()},
                                "decode_ratio_last_over_first": ratio,
                                "has_attention": "A" in pattern})
        print(f"{pattern:<10}{tps:>14,.0f}" + "".join(f"{per_token[c] * 1e3:>18.2f}" for c in contexts)
              + f"{ratio:>8.2f}")
    for row in results["rows"]:
        if not row["has_attention"]:
            verdict = "PASS" if row["decode_ratio_last_over_first"] <= 1.2 else "FAIL"
            print(f"bar: decode time ratio {contexts[-1]}/{contexts[0]} <= 1.2 for {row['pattern']}: "
                  f"{row['decode_ratio_last_over_first']:.2f} {verdict}")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {out}")
    return results
