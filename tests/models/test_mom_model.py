"""Mixture of memories inside the LM: the loss adds the balance loss, decoding continues the
forward, and training logs the balance loss."""

import json

import torch
import torch.nn.functional as F

from linscan.models import LinscanConfig, LinscanForCausalLM
from linscan.models.config import PRESETS
from linscan.train import TrainArgs, train

from ..train.corpus import write_corpus


def _model(**kw):
    torch.manual_seed(0)
    config = LinscanConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, pattern="OD", **kw)
    return LinscanForCausalLM(config).double()


def test_loss_is_cross_entropy_plus_the_weighted_balance_loss():
    model = _model(aux_loss_coef=0.25)
    ids, labels = torch.randint(0, 32, (2, 12)), torch.randint(0, 32, (2, 12))
    out = model(ids, labels=labels)
    ce = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten())
    assert out.aux_loss is not None and 1.0 <= out.aux_loss.item() <= 4.0      # top-2 of 4: 2 when balanced
    torch.testing.assert_close(out.loss, ce.double() + 0.25 * out.aux_loss)
    assert torch.equal(model.balance_loss(), out.aux_loss)     # what losses computed outside forward add
    out.loss.backward()
    assert model.blocks[0].mixer.router.weight.grad.abs().sum() > 0
    assert _model().forward(ids).aux_loss is not None and LinscanForCausalLM(
        LinscanConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, pattern="D"))(ids).aux_loss is None


def test_decoding_token_by_token_equals_one_forward():
    model = _model().eval()
    ids = torch.randint(0, 32, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :4])
        steps = [out.logits]
        state = out.state
        for t in range(4, 10):
            out = model(ids[:, t:t + 1], state=state)
            steps.append(out.logits)
            state = out.state
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)


def test_training_logs_the_balance_loss(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "micro_mom", dict(d_model=32, n_layers=2, n_heads=2, pattern="OA", mlp_ratio=2.0))
    args = TrainArgs(preset="micro_mom", data=str(write_corpus(tmp_path / "c.txt")), steps=3, batch_size=2, seq_len=16,
                     eval_every=3, eval_batches=1, ckpt_every=3, warmup=1, out=str(tmp_path / "run"), progress=False)
    summary = train(args)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(1.0 <= r["aux_loss"] <= 4.0 for r in rows) and "val_bpb" in rows[-1]
    assert summary["model"].config.pattern == "OA"


def test_eval_training_adds_the_balance_loss(monkeypatch):
    """`linscan eval` computes its own loss (scored positions only): the balance loss joins it."""
    from linscan.data.tasks import make_task
    from linscan.eval import runner
    from linscan.eval.mixers import parse_mixer
    from linscan.eval.presets import get_preset

    seen = []
    real = torch.nn.functional.cross_entropy

    def spy(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(runner.F, "cross_entropy", spy)
    preset = get_preset("parity", d_model=16, n_heads=2, steps=2, batch_size=4, n_layers=1)
    _, summary = runner.train_one(make_task("parity"), parse_mixer("mom"), preset, (3, 8), seed=0)
    assert len(seen) == 2 and all(l > c.item() for l, c in zip(summary["losses"], seen))
