"""linscan.parallel decay_scan / delta_scan on 2 and 4 gloo ranks == the single-process op on the
whole sequence: outputs, final states and the gradient of every input (float64: 1e-10)."""

import pytest
import torch

from linscan import ops, parallel

from . import cases
from .ranks import run_ranks

OPS = {"decay": (ops.decay_scan, parallel.decay_scan), "delta": (ops.delta_scan, parallel.delta_scan)}
ARGS = {"decay": ("q", "k", "v", "g"), "delta": ("q", "k", "v", "beta", "g")}


def _call(fn, x, case, **kw):
    args = [x.get(n) for n in ARGS[case["family"]]]
    return fn(*args, initial_state=x.get("h0"), output_final_state=case.get("final", True),
              cu_seqlens=case.get("cu_tensor"), **kw)


def _run(x, case, fn, w_o, w_f, **kw):
    params = cases.leaves(x)
    o, final = _call(fn, {**x, **params}, case, **kw)
    cases.loss(o, final, w_o, w_f).backward()
    return {"o": o.detach(), "final": None if final is None else final.detach(),
            **{f"d_{n}": p.grad for n, p in params.items()}}


def sp_worker(rank, world, case_list):
    out = []
    for case in case_list:
        x = cases.make(case)
        case = {**case, "cu_tensor": x["cu"]}
        L = case["T"] // world
        local = {n: (t[:, rank * L:(rank + 1) * L] if cases.time_sliced(n, t) else t) for n, t in x.items()}
        w_o = x["w_o"][:, rank * L:(rank + 1) * L]
        w_f = x["w_f"] if rank == 0 else 0 * x["w_f"]       # the final states' loss counted once (on rank 0)
        out.append(_run(local, case, OPS[case["family"]][1], w_o, w_f, backend=case.get("backend", "chunk")))
    return out


def reference(case):
    x = cases.make(case)
    return _run(x, {**case, "cu_tensor": x["cu"]}, OPS[case["family"]][0], x["w_o"], x["w_f"], backend="naive")


def check(case_list, world):
    results = run_ranks(sp_worker, world, case_list)
    for i, case in enumerate(case_list):
        ref = reference(case)
        got = [r[i] for r in results]
        for name, want in ref.items():
            if want is None:
                assert got[0][name] is None, (case, name)
                continue
            if name == "o" or (name.startswith("d_") and cases.time_sliced(name[2:], want) and want.dim() > 1):
                have = torch.cat([g[name] for g in got], dim=1)
            elif name in ("d_h0", "d_g"):          # summed over the ranks (g [H]: every rank's share)
                have = sum(g[name] for g in got)
            else:
                have = got[0][name]
                for g in got[1:]:
                    torch.testing.assert_close(g[name], have, rtol=0, atol=0, msg=f"{case} {name} differs by rank")
            if case.get("dtype", torch.float64) == torch.float64:
                err = (have - want).abs().max().item()
                assert err < 1e-10, f"{case}: {name} max error {err:.2e}"
            else:           # float32 against the float64 reference: the single-process chunk's bound
                err = ((have.double() - want).abs().max() / want.abs().max()).item()
                assert err < 1e-5, f"{case}: {name} relative error {err:.2e}"


DECAY = [{"family": "decay", "T": 24, "g": form, "h0": h0} for form in (None, "H", "BTH", "BTHK") for h0 in (False, True)]
DELTA = [{"family": "delta", "T": 24, "g": form, "h0": h0, "R": R}
         for form, R in ((None, 1), ("BTH", 1), ("BTH", 2)) for h0 in (False, True)]
# packed sequences straddling the ranks (T = 24: 2 ranks of 12, 4 of 6): one spans three ranks of 4
VARLEN = [{"family": fam, "T": 24, "g": form, "h0": h0, "cu": [0, 5, 19, 21, 24]}
          for fam, form in (("decay", "BTHK"), ("decay", "H"), ("delta", "BTH")) for h0 in (False, True)]


@pytest.mark.parametrize("world", [2, 4])
def test_decay_scan_matches_the_single_process_op(world):
    check(DECAY, world)


@pytest.mark.parametrize("world", [2, 4])
def test_delta_scan_matches_the_single_process_op(world):
    check(DELTA, world)


FLOAT32 = [{"family": "decay", "T": 48, "g": "BTHK", "h0": True, "dtype": torch.float32},
           {"family": "delta", "T": 48, "g": "BTH", "h0": True, "R": 2, "dtype": torch.float32},
           {"family": "delta", "T": 48, "g": "BTH", "h0": True, "cu": [0, 7, 30, 48], "dtype": torch.float32}]


@pytest.mark.parametrize("world", [2, 4])
def test_straddling_packed_sequences(world):
    check(VARLEN + [{**c, "final": False} for c in VARLEN[:2]], world)


def test_float32_within_the_single_process_bound():
    check(FLOAT32, 2)


def bad_input_worker(rank, world):
    """Each misuse on one rank: every rank must raise (no hang); returns the messages per case."""
    import torch.distributed as dist

    x = cases.make({"family": "delta", "T": 24, "g": "BTH", "h0": False})
    L = 24 // world
    own = {n: x[n][:, rank * L:(rank + 1) * L] for n in ("q", "k", "v", "beta", "g")}
    ragged = {n: x[n][:, :L + 1] if rank == 1 else t for n, t in own.items()}          # T not split evenly
    single = {n: t.float() if rank == 0 else t for n, t in own.items()}                 # dtypes differ
    positive = {**own, "g": own["g"].abs() + 1 if rank == 1 else own["g"]}               # g > 0 on rank 1
    messages = []
    packed = cases.make({"family": "delta", "T": 24, "g": "BTH", "cu": [0, 10, 24]})
    packed = {n: packed[n][:, rank * L:(rank + 1) * L] for n in own}
    for inputs, kw in ((ragged, {}), (single, {}), (positive, {}),
                       (packed, {"cu_seqlens": torch.tensor([0, 10, 23], dtype=torch.int32)})):
        try:
            parallel.delta_scan(inputs["q"], inputs["k"], inputs["v"], inputs["beta"], inputs["g"], **kw)
            messages.append(None)
        except ValueError as e:
            messages.append(str(e))
    alone = dist.new_group([0])                                       # a group without rank 1
    try:
        parallel.decay_scan(own["q"], own["k"], own["v"], group=alone)
        messages.append(None)
    except ValueError as e:
        messages.append(str(e))
    return messages


def test_bad_inputs_raise_on_every_rank():
    results = run_ranks(bad_input_worker, 2, timeout=60)
    for rank, messages in enumerate(results):
        ragged, single, positive, short_cu, alone = messages
        assert "q: expected the same on every rank" in ragged and "(2, 13, 2, 8)" in ragged
        assert "q: expected the same on every rank" in single and "torch.float32" in single
        assert ("g: expected log-decay values <= 0" in positive) if rank == 1 else ("rank(s) [1]" in positive)
        assert "cu_seqlens: expected cu_seqlens[-1] == T = 24" in short_cu
        assert (alone is None) if rank == 0 else ("not a member" in alone)
