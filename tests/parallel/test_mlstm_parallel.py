"""linscan.parallel mlstm_scan on 2 and 4 gloo ranks == the single-process op (naive, float64) on the
whole sequence: h, the final state (C, n, m) and the gradients of q, k, v, i, f and of the initial
state (C, n, m; summed over the ranks). Float64, error at most 1e-10 relative to the largest
entry (at least 1): with i up to +8 and normalize=False, h = e^m C^T q reaches a few thousand.

The stabilised state is compared as it is (C, n and m, not C e^m): the merge reproduces m itself,
so the representation is the same as the single-process op's and a loss on m is meaningful."""

import pytest
import torch

from linscan import ops
from linscan.parallel.mlstm import mlstm_scan as sp_mlstm_scan

from .ranks import run_ranks

B, H, K, V, T = 2, 2, 4, 3, 24
INPUTS = ("q", "k", "v", "i", "f")
STATE = ("C0", "n0", "m0")


def make(case: dict) -> dict:
    """The global problem (fixed seed): inputs, initial state and the loss weights."""
    gen = torch.Generator().manual_seed(case.get("seed", 0))
    batch = 1 if case.get("cu") else B
    N = len(case["cu"]) - 1 if case.get("cu") else batch

    def rand(*shape, scale=1.0, shift=0.0):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64) + shift

    x = {"q": rand(batch, T, H, K), "k": rand(batch, T, H, K), "v": rand(batch, T, H, V)}
    if case.get("large"):        # input gates up to +8, forgets down to logsigmoid ~ -10
        x["i"] = 10 * torch.rand(batch, T, H, generator=gen, dtype=torch.float64) - 2
        x["f"] = rand(batch, T, H, scale=3.0, shift=-3.0)
    elif case.get("carry"):      # one early large write whose m wins the max on every later rank
        x["i"], x["f"] = rand(batch, T, H, shift=-3.0), rand(batch, T, H, shift=5.0)
        x["i"][:, 1] = 6.0
    else:
        x["i"], x["f"] = rand(batch, T, H), rand(batch, T, H, shift=2.0)
    if case.get("h0"):
        x["C0"], x["n0"], x["m0"] = rand(N, H, K, V), rand(N, H, K), rand(N, H, scale=2.0)
    x["w"] = {"h": rand(batch, T, H, V), "C": rand(N, H, K, V), "n": rand(N, H, K), "m": rand(N, H)}
    x["cu"] = torch.tensor(case["cu"], dtype=torch.int32) if case.get("cu") else None
    return x


def _run(fn, x, case, w, **kw):
    """fn on x's inputs; the loss sum(h w_h) + sum over the final state (C, n, m) weighed; its gradients."""
    leaves = {n: x[n].detach().clone().requires_grad_() for n in INPUTS + STATE if n in x}
    state = tuple(leaves[n] for n in STATE) if "C0" in leaves else None
    final_wanted = case.get("final", True)
    h, final = fn(*(leaves[n] for n in INPUTS), input_gate=case["gate"], normalize=case.get("normalize", True),
                  initial_state=state, output_final_state=final_wanted, cu_seqlens=x["cu"], **kw)
    loss = (h * w["h"]).sum()
    if final_wanted:
        loss = loss + sum((s * w[n]).sum() for s, n in zip(final, "Cnm"))
    loss.backward()
    out = {"h": h.detach(), **{f"d_{n}": p.grad for n, p in leaves.items()}}
    if final_wanted:
        out.update(zip(("C", "n", "m"), (s.detach() for s in final)))
    return out


def sp_worker(rank, world, case_list):
    out = []
    for index, case in enumerate(case_list):
        x = make(case)
        L = T // world
        local = {n: (t[:, rank * L:(rank + 1) * L] if n in INPUTS else t) for n, t in x.items()}
        w = dict(x["w"], h=x["w"]["h"][:, rank * L:(rank + 1) * L])
        if rank != index % world:                    # the final state's loss counted once, on one rank
            w.update({n: 0 * w[n] for n in "Cnm"})
        options = dict(backend=case.get("backend", "chunk"), chunk_size=case.get("chunk_size", 4))
        out.append(_run(sp_mlstm_scan, local, case, w, **options))
    return out


def reference(case):
    x = make(case)
    return _run(ops.mlstm_scan, x, case, x["w"], backend="naive")


def check(case_list, world):
    results = run_ranks(sp_worker, world, case_list)
    worst = {}
    for index, case in enumerate(case_list):
        got = [r[index] for r in results]
        for name, want in reference(case).items():
            if name == "h" or name[2:] in INPUTS:
                have = torch.cat([g[name] for g in got], dim=1)
            elif name[2:] in STATE:                       # summed over the ranks
                have = sum(g[name] for g in got)
            else:                                         # the final state: the same on every rank
                have = got[0][name]
                for g in got[1:]:
                    assert torch.equal(g[name], have), f"{case}: {name} differs by rank"
            if want is None:                              # unused (n without normalize): zeros here
                want = torch.zeros_like(have)
            err = ((have - want).abs().max() / want.abs().max().clamp(min=1)).item()
            worst[name] = max(worst.get(name, 0.0), err)
            assert err < 1e-10, f"{case}: {name} relative error {err:.2e}"
    assert set(worst) >= {"h", "C", "n", "m", "d_q", "d_k", "d_v", "d_i", "d_f", "d_C0", "d_n0", "d_m0"}
    return worst


BASIC = [{"gate": gate, "h0": h0, "normalize": norm}
         for gate in ("exp", "sigmoid") for h0 in (False, True) for norm in (True, False)]
LARGE = [{"gate": "exp", "h0": h0, "normalize": norm, "large": True, "seed": 1}
         for h0, norm in ((False, True), (True, False))] + [{"gate": "sigmoid", "h0": True, "large": True}]
OTHER = [{"gate": "exp", "h0": h0, "carry": True} for h0 in (False, True)]
OTHER += [{"gate": "exp", "h0": True, "backend": "naive"}, {"gate": "exp", "h0": True, "final": False},
         {"gate": "exp", "h0": True, "large": True, "chunk_size": 64, "seed": 2}]
# packed sequences straddling the ranks (2 ranks of 12, 4 of 6): [5, 19) spans three ranks of 4
VARLEN = [{"gate": gate, "h0": h0, "cu": [0, 5, 19, 21, 24], "large": large}
          for gate, large in (("exp", False), ("exp", True), ("sigmoid", False)) for h0 in (False, True)]
VARLEN += [{"gate": "exp", "h0": False, "cu": [0, 5, 19, 21, 24], "carry": True}]
VARLEN += [{"gate": "exp", "h0": True, "cu": [0, 5, 19, 21, 24], "final": False, "normalize": False}]


@pytest.mark.parametrize("world", [2, 4])
def test_mlstm_scan_matches_the_single_process_op(world):
    check(BASIC + LARGE + OTHER + VARLEN, world)


def errors_worker(rank, world):
    """Bad or mismatched arguments: the same error on every rank, no hang."""
    x = make({"gate": "exp", "cu": [0, T]})              # B = 1, so that cu_seqlens is allowed
    L = T // world
    inputs = [x[n][:, rank * L:(rank + 1) * L] for n in INPUTS]
    bad = {"gate": dict(input_gate="exp" if rank == 0 else "sigmoid"),
           "cu": dict(cu_seqlens=torch.tensor([0, L], dtype=torch.int32)),       # ends at T/W, not T
           "state": dict(initial_state=(torch.zeros(1, H, K, V), torch.zeros(1, H, K),
                                        torch.zeros(1, H + rank)))}                 # m: [1, H] only on rank 0
    seen = {}
    for name, kw in bad.items():
        with pytest.raises(ValueError) as error:
            sp_mlstm_scan(*inputs, **kw)
        seen[name] = str(error.value)
    return seen


def test_bad_arguments_fail_on_every_rank():
    seen = run_ranks(errors_worker, 2)
    assert "input_gate" in seen[0]["gate"] and "input_gate" in seen[1]["gate"]
    assert all("cu_seqlens" in s["cu"] for s in seen)
    assert "initial_state" in seen[1]["state"] and "rank(s) [1]" in seen[0]["state"]
