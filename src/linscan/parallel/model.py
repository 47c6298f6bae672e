"""Run a whole linscan model sequence-parallel, applied from outside the model (torchtitan style)."""

from __future__ import annotations

from torch import nn

from . import comm


def sequence_parallel(model: nn.Module, group=None) -> nn.Module:
    """Make ``model`` (a ``LinscanForCausalLM``, a block or a mixer) run sequence-parallel over
    ``group`` (None: the world); returns the model, changed in place.

    Afterwards rank r passes its contiguous slice of every sequence, ``input_ids[:, r T/W:(r+1) T/W]``
    (and ``labels`` alike), and gets the logits and the loss of its slice. Inside, every mixer calls
    its ``linscan.parallel`` op, rotary positions start at the rank's first token and short
    convolutions read the previous rank's last inputs. Under sequence parallelism the model takes
    no ``state`` and no ``cu_seqlens`` and returns ``state=None`` (train and prefill whole
    sequences; decode on one device).

    Gradients: a rank's parameter gradients are its share; sum them over the group (average for
    a mean loss over equal slices, as ``DistributedDataParallel`` over the group does) to get the
    gradient of the whole sequence's loss.
    """
    from ..nn.mixers.pararnn import _NewtonMixer

    ranks = comm.resolve(group)
    nonlinear = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _NewtonMixer)})
    if nonlinear:
        raise ValueError(f"model: sequence parallelism needs linear recurrences; {nonlinear} are nonlinear "
                         f"(Newton-parallel RNNs have no per-rank state summary)")
    for module in model.modules():
        module.sequence_group = ranks
    return model
