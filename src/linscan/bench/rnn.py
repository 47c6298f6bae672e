"""Newton-parallel nonlinear RNNs against their sequential loop (issue: ParaRNN benchmark).

    linscan bench rnn [--cells gru,lstm] [--lengths 1024,16384] [--batch 4] [--dim 256]
                      [--compile] [--train-steps 150] [--device cpu|cuda] [--out rnn.json]

For every cell and length: seconds of the forward and of forward+backward, for
the sequential loop (``sequential_rnn``: ``cell.step`` per token, autograd
through the loop) and for ``newton_rnn`` (3 Newton steps, adjoint backward), and
the speed-up loop / Newton. ``--compile`` also times Newton with the cell's
``transition`` / ``linearize`` compiled by ``torch.compile`` (fused elementwise
loops; the first call pays the compilation).

Convergence: max|F| per Newton iterate on random weights, and on trained
weights: a one-layer ParaGRU language model (pattern "U") trained for
``--train-steps`` steps on the embedded corpus, its cell solved on the inputs
it sees on validation text.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from ..pararnn import ParaGRU, ParaLSTMCIFG, fuse, newton_rnn, sequential_rnn
from .timing import clock, time_round_robin

CELLS = {"gru": ParaGRU, "lstm": ParaLSTMCIFG}
LENGTHS = (1024, 16384)


def _calls(cell, x, iters: int) -> dict:
    def backward(fn):
        def run():
            xg = x.detach().requires_grad_()
            fn(xg).square().mean().backward()
        return run

    loop = lambda x_: sequential_rnn(cell, x_)                          # noqa: E731
    newton = lambda x_: newton_rnn(cell, x_, max_iters=iters)            # noqa: E731
    return {
        "loop fwd": lambda: torch.no_grad()(loop)(x),
        "newton fwd": lambda: torch.no_grad()(newton)(x),
        "loop fwd+bwd": backward(loop),
        "newton fwd+bwd": backward(newton),
    }


def _synchronized(fn) -> float:
    torch.cuda.synchronize()
    seconds = clock(lambda: (fn(), torch.cuda.synchronize()))
    return seconds


def time_cell(name: str, T: int, B: int, D: int, *, iters: int = 3, compiled: bool = False,
              repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds (median) of loop and Newton, forward and forward+backward, for one cell at one length."""
    torch.manual_seed(0)
    cell = CELLS[name](D, D).to(device)
    x = torch.randn(B, T, D, device=device)
    calls = _calls(cell, x, iters)
    if compiled:
        fast = CELLS[name](D, D).to(device)
        fast.load_state_dict(cell.state_dict())
        fuse(fast)
        extra = _calls(fast, x, iters)
        calls |= {"newton(compiled) fwd": extra["newton fwd"], "newton(compiled) fwd+bwd": extra["newton fwd+bwd"]}
    timer = _synchronized if device == "cuda" else clock
    warm = {n: timer(fn) for n, fn in calls.items()}
    times = time_round_robin(calls, repeats=repeats, warm=warm, slow_s=2.0, timer=timer)
    result = {n: sorted(ts)[len(ts) // 2] for n, ts in times.items()}
    with torch.no_grad():
        h, info = newton_rnn(cell, x, max_iters=iters, return_info=True)
        err = (h - sequential_rnn(cell, x)).abs().max().item()
    result |= {"residuals": info["residuals"], "max_abs_error_vs_loop": err}
    return result


def trained_convergence(steps: int, *, iters: int = 8, d_model: int = 128, T: int = 256) -> dict:
    """Residual per Newton iterate of a ParaGRU layer after ``steps`` training steps of a 1-layer LM."""
    from ..data.corpus import batch_at, load_corpus
    from ..models import LinscanConfig, LinscanForCausalLM

    torch.manual_seed(0)
    model = LinscanForCausalLM(LinscanConfig(d_model=d_model, n_layers=1, pattern="U", n_heads=1))
    data = load_corpus()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        x, y = batch_at(data.train, step, 8, T, seed=0)
        loss = model(x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    mixer = next(m for m in model.modules() if hasattr(m, "cell"))
    seen = {}
    hook = mixer.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    with torch.no_grad():
        model(batch_at(data.val, 0, 8, T, seed=1)[0])
        hook.remove()
        _, info = newton_rnn(mixer.cell, seen["x"], max_iters=iters, return_info=True)
        _, random_info = newton_rnn(ParaGRU(d_model, d_model), seen["x"], max_iters=iters, return_info=True)
    return {"steps": steps, "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "residuals_trained": info["residuals"], "residuals_untrained": random_info["residuals"]}


def run(cells=("gru", "lstm"), lengths=LENGTHS, batch: int = 4, dim: int = 256, *, compiled: bool = False,
        train_steps: int = 150, threads: int = 2, device: str = "cpu", out: str | None = None, log=print) -> dict:
    """The whole benchmark; prints a table, returns (and optionally writes) the JSON dict."""
    torch.set_num_threads(threads)
    results = {"setup": dict(batch=batch, dim=dim, threads=threads, newton_iters=3, dtype="float32", device=device,
                             torch=torch.__version__), "timings": {}}
    for name in cells:
        for T in lengths:
            log(f"timing {name} T={T} ...", file=sys.stderr)
            results["timings"][f"{name} T={T}"] = time_cell(name, T, batch, dim, compiled=compiled, device=device)
    if train_steps:
        log(f"training a 1-layer ParaGRU LM for {train_steps} steps ...", file=sys.stderr)
        results["trained"] = trained_convergence(train_steps)
    log(report(results))
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
    return results


def report(results: dict) -> str:
    s = results["setup"]
    lines = [f"linscan bench rnn: {s.get('device', 'cpu')} float32, B={s['batch']} D={s['dim']}, {s['threads']} threads, "
             f"Newton {s['newton_iters']} steps; seconds (median), speed-up = loop / Newton", ""]
    head = f"{'cell':<14}{'variant':<26}{'fwd s':>10}{'fwd+bwd s':>12}{'x fwd':>8}{'x f+b':>8}"
    lines.append(head)
    for key, r in results["timings"].items():
        for variant in ("loop", "newton", "newton(compiled)"):
            if f"{variant} fwd" not in r:
                continue
            f, fb = r[f"{variant} fwd"], r[f"{variant} fwd+bwd"]
            up = "" if variant == "loop" else f"{r['loop fwd'] / f:>8.2f}{r['loop fwd+bwd'] / fb:>8.2f}"
            lines.append(f"{key if variant == 'loop' else '':<14}{variant:<26}{f:>10.4g}{fb:>12.4g}{up}")
        res = " ".join(f"{v:.1e}" for v in r["residuals"])
        lines.append(f"{'':<14}max|F| per iterate: {res}; max|h - loop| {r['max_abs_error_vs_loop']:.1e}")
    if "trained" in results:
        t = results["trained"]
        lines += ["", f"convergence after {t['steps']} training steps (1-layer ParaGRU LM, loss "
                      f"{t['loss_first']:.2f} -> {t['loss_last']:.2f}), max|F| per iterate:",
                  "  trained:   " + " ".join(f"{v:.1e}" for v in t["residuals_trained"]),
                  "  untrained: " + " ".join(f"{v:.1e}" for v in t["residuals_untrained"])]
    return "\n".join(lines)
