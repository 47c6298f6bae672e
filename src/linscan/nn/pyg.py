"""PyTorch Geometric adapter: :class:`linscan.nn.lcm.LCM` as a PyG ``Aggregation``.

    from torch_geometric.nn import SAGEConv
    from linscan.nn.pyg import LCMAggregation

    conv = SAGEConv(16, 32, aggr=LCMAggregation(16))   # neighbours folded by the LCM tree

PyTorch Geometric is optional (``pip install 'linscan[pyg]'``); only this module imports it.
A node's messages are folded in the order of its edges in ``edge_index`` (the LCM is
commutative, not associative, so the order can change the result in the last bits and beyond).
A node without messages gets zeros (with ``identity="learned"``: the learned identity ``e``).
"""

from __future__ import annotations

import torch

try:
    from torch_geometric.nn.aggr import Aggregation
except ImportError as e:                                         # pragma: no cover - depends on the environment
    raise ImportError("linscan.nn.pyg needs PyTorch Geometric (torch_geometric): "
                      "pip install 'linscan[pyg]'") from e

from .lcm import LCM


class LCMAggregation(Aggregation):
    """LCM aggregation for PyG message passing (``aggr=LCMAggregation(d)``).

    Args:
        d: message width.
        identity: ``"carry"`` or ``"learned"``, as in :class:`linscan.nn.lcm.LCM`.

    The wrapped :class:`~linscan.nn.lcm.LCM` is ``self.lcm`` (for its ``identity_loss`` and
    ``associativity_loss``).
    """

    def __init__(self, d: int, *, identity: str = "carry"):
        super().__init__()
        self.lcm = LCM(d, identity=identity)

    def reset_parameters(self) -> None:
        """Fresh GRU-cell weights (and a zero identity)."""
        self.lcm.combine.cell.reset_parameters()
        if self.lcm.e is not None:
            torch.nn.init.zeros_(self.lcm.e)

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None, ptr: torch.Tensor | None = None,
                dim_size: int | None = None, dim: int = -2, max_num_elements: int | None = None) -> torch.Tensor:
        """x ``[n_messages, d]``, index ``[n_messages]`` (or CSR ``ptr [n_sets + 1]``) -> ``[dim_size, d]``."""
        self.assert_two_dimensional_input(x, dim)
        if index is None:
            if ptr is None:
                raise ValueError("index: expected set ids (or ptr), got neither")
            # 1. CSR boundaries -> one set id per row
            index = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=x.device), ptr.diff())
        return self.lcm(x, index, dim_size)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(d={self.lcm.d}, identity={self.lcm.identity!r})"
