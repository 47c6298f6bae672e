"""``linscan bench lmul``: L-Mul against float8 products, on random operands and inside a trained model.

1. relative error of L-Mul (4 and 3 mantissa bits, the carry form the bit add computes) and of
   float8 e4m3 / e5m2 products on continuous random operands and on every pair of
   representable mantissas (MATH.md 10.3, ``linscan.numerics.relative_error_table``);
2. the same on a trained model's operands: the attention layers' score products q_d k_d and
   value products p v_d, sampled from validation windows (q, k after RoPE, p the softmax);
3. validation bits per byte of the model with exact attention and with L-Mul attention
   (``Attention(lmul=True, lmul_bits=m)``: QK^T and PV by L-Mul, sums and softmax in float32).

The paper's claims to check: 4-bit L-Mul is as precise as e4m3, 3-bit L-Mul beats e5m2, and
L-Mul attention is "almost lossless".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BITS = (None, 4, 3)                     # L-Mul mantissa bits of the attention runs; None: all 23


def _operands(model, x, pairs: int, seed: int):
    """Score and value product operands of every attention layer on ``x [B, T]``: two pairs of
    1-D float32 tensors, ``pairs`` elements each (sampled uniformly over layers, heads, positions)."""
    import torch

    from ..nn.mixers import Attention

    captured = []
    hooks = [m.rotary.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for m in model.modules() if isinstance(m, Attention)]
    values = []
    hooks += [m.v_proj.register_forward_hook(lambda _m, _i, out, m=m: values.append((m, out)))
              for m in model.modules() if isinstance(m, Attention)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(seed)
    score_q, score_k, prob, value = [], [], [], []
    for (layer, v), q, k in zip(values, captured[0::2], captured[1::2]):
        B, T, H, D = q.shape
        k, v = layer._repeat_kv(k, v.view(B, T, layer.n_kv_heads, D))
        scores = torch.einsum("bthd,bshd->bhts", q, k) * D ** -0.5
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        p = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)   # (B, H, T, S)
        # score products q[b, t, h, d] k[b, s, h, d] (s <= t), value products p[b, h, t, s] v[b, s, h, d]
        b, h, d = (torch.randint(n, (pairs,), generator=gen) for n in (B, H, D))
        t = torch.randint(T, (pairs,), generator=gen)
        s = (torch.rand(pairs, generator=gen) * (t + 1)).long()
        score_q.append(q[b, t, h, d])
        score_k.append(k[b, s, h, d])
        prob.append(p[b, h, t, s])
        value.append(v[b, s, h, d])
    pick = torch.randperm(pairs * len(values), generator=gen)[:pairs]
    return ((torch.cat(score_q)[pick], torch.cat(score_k)[pick]), (torch.cat(prob)[pick], torch.cat(value)[pick]))


def run(ckpt: str, *, data: str | None = None, bits=BITS, batch_size: int = 4, seq_len: int = 128,
        eval_batches: int = 4, pairs: int = 1 << 16, threads: int = 2, out: str | None = None, log=None) -> dict:
    """The three measurements of the module docstring for the model in ``ckpt`` (a linscan run,
    checkpoint or model folder with attention layers). Returns the report; JSON to ``out``."""
    import torch

    from ..convert.recipe import validation_bpb
    from ..data import load_corpus
    from ..data.corpus import batch_at
    from ..nn.mixers import Attention
    from ..numerics.lmul import relative_error_table
    from ..train import checkpoint
    from ..train.loop import TrainArgs

    log = sys.stderr if log is None else log
    torch.set_num_threads(threads)
    model = checkpoint.load_model(ckpt)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError(f"ckpt: expected a model with attention layers, {ckpt} has none "
                         f"(pattern {model.config.pattern!r})")
    corpus = load_corpus(data)
    args = TrainArgs(data=data, batch_size=batch_size, seq_len=seq_len, eval_batches=eval_batches, device="cpu")
    report = {"ckpt": str(ckpt), "pattern": model.config.pattern, "attention_layers": len(layers),
              "batch_size": batch_size, "seq_len": seq_len, "eval_batches": eval_batches, "pairs": pairs}
    # 1-2. relative errors: random operands, then the model's score and value products
    t0 = time.perf_counter()
    x, _ = batch_at(corpus.val, 0, batch_size, seq_len, seed=10_007)
    (sq, sk), (p, v) = _operands(model, x, pairs, seed=0)
    report["errors"] = relative_error_table(sq, sk)
    report["errors_values"] = {name: row["given"] for name, row in relative_error_table(p, v).items()}
    for name, row in report["errors"].items():
        row["model scores"] = row.pop("given")
        row["model values"] = report["errors_values"][name]
    del report["errors_values"]
    print(f"bench lmul: relative errors done ({time.perf_counter() - t0:.0f} s)", file=log, flush=True)
    # 3. validation bits per byte, exact and with L-Mul attention
    report["bpb"] = {"exact": validation_bpb(model, corpus, args)}
    for m in bits:
        for layer in layers:
            layer.lmul, layer.lmul_bits = True, m
        report["bpb"][f"lmul {m or 23} bits"] = validation_bpb(model, corpus, args)
        print(f"bench lmul: L-Mul attention with {m or 23} mantissa bits done "
              f"({time.perf_counter() - t0:.0f} s)", file=log, flush=True)
    for layer in layers:
        layer.lmul, layer.lmul_bits = False, None
    report["seconds"] = time.perf_counter() - t0
    print(format_report(report))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "lmul.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    """The error table (percent) and the bits-per-byte lines."""
    from ..numerics.lmul import format_table

    exact = report["bpb"]["exact"]
    lines = ["mean relative error of one product, % (model: its attention's score and value products)",
             format_table(report["errors"]), "",
             f"validation bits per byte ({report['eval_batches']} x {report['batch_size']} x "
             f"{report['seq_len']} bytes), {report['attention_layers']} attention layer(s) of {report['pattern']!r}:"]
    lines += [f"  {name:<18} {bpb:.4f}" + ("" if name == "exact" else f"  ({bpb - exact:+.4f})")
              for name, bpb in report["bpb"].items()]
    return "\n".join(lines)
