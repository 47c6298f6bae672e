"""A LinscanForCausalLM trained sequence-parallel over 2 gloo ranks leaves the same weights as
the single-process run (3 AdamW steps, float64)."""

import pytest
import torch
import torch.distributed as dist

from linscan.models import LinscanConfig, LinscanForCausalLM

from .ranks import run_ranks

T, STEPS = 32, 3


def _model(pattern):
    torch.manual_seed(0)
    config = LinscanConfig(vocab_size=64, d_model=32, n_layers=len(pattern), n_heads=2, pattern=pattern)
    return LinscanForCausalLM(config).double()


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (2, T), generator=gen), torch.randint(0, 64, (2, T), generator=gen)


def _train(model, ids, labels, reduce=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(STEPS):
        loss = model(ids, labels=labels).loss
        loss.backward()
        if reduce is not None:
            reduce(model)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return {name: p.detach().clone() for name, p in model.named_parameters()}, losses


def sp_worker(rank, world, pattern):
    from linscan.parallel import sequence_parallel

    model = sequence_parallel(_model(pattern))
    ids, labels = _data()
    L = T // world
    part = slice(rank * L, (rank + 1) * L)

    def average(m):               # each rank's mean loss over an equal slice: average the shares
        for p in m.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    return _train(model, ids[:, part], labels[:, part], average)


@pytest.mark.parametrize("pattern, world", [("DDDA", 2), ("GMRE", 2), ("GREHLNP", 2), ("DDDA", 4)])
def test_sequence_parallel_training_equals_one_process(pattern, world):
    want, want_losses = _train(_model(pattern), *_data())
    results = run_ranks(sp_worker, world, pattern)
    for rank, (weights, losses) in enumerate(results):
        for name, w in want.items():
            err = (weights[name] - w).abs().max().item()
            assert err < 1e-5, f"rank {rank}: {name} differs by {err:.2e}"
    # the mean of the ranks' losses is the whole sequence's loss
    mean = [sum(r[1][s] for r in results) / world for s in range(STEPS)]
    assert mean == pytest.approx(want_losses, rel=1e-6)           # the loss itself is float32


def refusal_worker(rank, world):
    from linscan.parallel import sequence_parallel

    messages = []
    for make in (lambda: sequence_parallel(_model("DU")),
                 lambda: sequence_parallel(_model("D"))(torch.zeros(1, 8, dtype=torch.long), state=[None])):
        try:
            make()
        except ValueError as e:
            messages.append(str(e))
    return messages


def test_nonlinear_mixers_and_decode_state_are_refused():
    messages = run_ranks(refusal_worker, 2)[0]
    assert "ParaGRUMixer" in messages[0] and "nonlinear" in messages[0]
    assert messages[1].startswith("state: expected None under sequence parallelism")
