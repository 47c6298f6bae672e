"""linscan.parallel.attention (LASP-2H) on 2 and 4 gloo ranks == plain causal softmax attention
on the whole sequence: outputs and the gradients of q, k, v (float64: 1e-10; float32: at most
twice the error of the float32 reference), windows, packed sequences straddling the ranks, and
bad inputs raising on every rank."""

import pytest
import torch

from linscan.parallel import comm
from linscan.parallel.attention import attention

from .ranks import run_ranks

B, H, D, DV = 2, 2, 8, 6
CU = [0, 5, 19, 21, 24]              # T = 24: 2 ranks of 12, 4 of 6; sequence 1 spans three ranks of 4


def make(case: dict) -> dict:
    """The global problem from a fixed seed (the same on every rank and in the reference)."""
    gen = torch.Generator().manual_seed(case.get("seed", 0))
    batch, T = (1 if case.get("cu") else B), case["T"]

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {"q": rand(batch, T, H, D), "k": rand(batch, T, H, D), "v": rand(batch, T, H, DV),
         "w": rand(batch, T, H, DV)}                     # every output weighed by a random weight
    x["cu"] = None if not case.get("cu") else torch.tensor(case["cu"], dtype=torch.int32)
    return x


def reference(q, k, v, *, window=None, scale=None, cu_seqlens=None):
    """Masked matmul + softmax on the whole sequence, in the inputs' dtype."""
    T = q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pos = torch.arange(T)
    mask = pos[None, :] <= pos[:, None]                  # (T query, T key)
    if window is not None:
        mask &= pos[:, None] - pos[None, :] < window
    if cu_seqlens is not None:
        seq = torch.searchsorted(cu_seqlens[1:].long(), pos, right=True)
        mask &= seq[:, None] == seq[None, :]
    s = torch.einsum("bthd,bshd->bhts", q, k) * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshv->bthv", p, v)         # (B, T, H, Dv)


def _run(fn, x, case, dtype, sl=slice(None)):
    """o and the gradients of sum(o * w) (only the inputs case["grad"] names get one)."""
    leaves = {n: x[n][:, sl].to(dtype, copy=True).requires_grad_(n in case.get("grad", "qkv")) for n in "qkv"}
    o = fn(leaves["q"], leaves["k"], leaves["v"], window=case.get("window"), scale=case.get("scale"),
           cu_seqlens=x["cu"])
    (o.double() * x["w"][:, sl]).sum().backward()
    return {"o": o.detach(), **{f"d{n}": t.grad for n, t in leaves.items() if t.requires_grad}}


def sp_worker(rank, world, case_list):
    out = []
    for case in case_list:
        x = make(case)
        L = case["T"] // world
        comm.traffic.clear()
        if case.get("fallback"):             # a gloo without reduce_scatter: the all-reduce stand-in
            real = torch.distributed.reduce_scatter
            torch.distributed.reduce_scatter = _unsupported
        try:
            result = _run(attention, x, case, case.get("dtype", torch.float64), slice(rank * L, (rank + 1) * L))
        finally:
            if case.get("fallback"):
                torch.distributed.reduce_scatter = real
        out.append({**result, "traffic": dict(comm.traffic)})
    return out


def _unsupported(*args, **kwargs):
    raise RuntimeError("Backend gloo does not support reduce_scatter")


def check(case_list, world):
    results = run_ranks(sp_worker, world, case_list)
    for i, case in enumerate(case_list):
        x = make(case)
        want = _run(reference, x, case, torch.float64)
        dtype = case.get("dtype", torch.float64)
        if dtype == torch.float64:
            tolerance = {name: 1e-10 for name in want}
        else:                                # the STYLE rule: about twice the low-precision reference's error
            low = _run(reference, x, case, dtype)
            tolerance = {name: 2 * (low[name].double() - want[name]).abs().max().item() + 1e-6 for name in want}
        got = [r[i] for r in results]
        assert set(got[0]) - {"traffic"} == set(want), case
        for name in want:
            have = torch.cat([g[name].double() for g in got], dim=1)
            err = (have - want[name]).abs().max().item()
            assert err <= tolerance[name], f"{case} ({world} ranks): {name} max error {err:.2e} > {tolerance[name]:.2e}"
        piece = x["q"].shape[0] * (case["T"] // world) * H * (D + DV) * dtype.itemsize
        traffic = got[0]["traffic"]
        assert traffic["all_gather"] == (world - 1) * piece, case
        if "k" in case.get("grad", "qkv") or "v" in case.get("grad", "qkv"):
            assert traffic["reduce_scatter"] == (2 if case.get("fallback") else 1) * (world - 1) * piece, case
        else:                                # no key gradient wanted: no backward collective
            assert "reduce_scatter" not in traffic, case


CASES = [{"T": 24}, {"T": 24, "window": 3}, {"T": 24, "window": 15, "scale": 0.3},
         {"T": 24, "window": 9, "grad": "kv"}, {"T": 24, "grad": "q"},
         {"T": 24, "cu": CU}, {"T": 24, "cu": CU, "window": 4}, {"T": 24, "cu": CU, "window": 15},
         {"T": 24, "cu": CU, "fallback": True},
         {"T": 48, "window": 20, "dtype": torch.float32, "seed": 1}]


@pytest.mark.parametrize("world", [2, 4])
def test_attention_matches_whole_sequence_reference(world):
    check(CASES, world)


def bad_worker(rank, world):
    """Each bad call: the error message on this rank (None if it did not raise)."""
    x = make({"T": 24, "cu": CU})
    L = 24 // world
    q, k, v = (x[n][:, rank * L:(rank + 1) * L] for n in "qkv")
    calls = {
        "T differs": lambda: attention(q[:, :L - 1 if rank == 1 else L], k[:, :L - 1 if rank == 1 else L],
                                       v[:, :L - 1 if rank == 1 else L]),
        "dtype differs": lambda: attention(*(t.float() if rank == 1 else t for t in (q, k, v))),
        "Dv differs": lambda: attention(q, k, v[..., :DV - rank]),
        "window 0": lambda: attention(q, k, v, window=0 if rank == 1 else 3),
        "window differs": lambda: attention(q, k, v, window=3 + rank),
        "cu_seqlens end": lambda: attention(q, k, v, cu_seqlens=torch.tensor([0, 5, 23])),
        "cu_seqlens differ": lambda: attention(q, k, v, cu_seqlens=torch.tensor([0, 5 + rank, 24])),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    out["good after bad"] = tuple(attention(q, k, v, cu_seqlens=x["cu"]).shape)   # the group is still in step
    return out


def test_bad_inputs_raise_on_every_rank():
    results = run_ranks(bad_worker, 2)
    first_words = {"T differs": "q:", "dtype differs": "q:", "Dv differs": "v:", "window differs": "window:",
                   "cu_seqlens end": "cu_seqlens:", "cu_seqlens differ": "cu_seqlens_values:"}
    for name, start in first_words.items():
        for rank, messages in enumerate(results):
            assert messages[name] is not None and messages[name].startswith(start), (name, rank, messages[name])
    assert results[1]["window 0"].startswith("window: expected None or an int >= 1")
    assert "refused" in results[0]["window 0"]
    assert "cu_seqlens[-1] == T = 24" in results[0]["cu_seqlens end"]
    assert [r["good after bad"] for r in results] == [(1, 12, H, DV)] * 2
