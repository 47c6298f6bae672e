"""Nonlinear RNNs solved in parallel over time by Newton iterations (ParaRNN).

    from linscan.pararnn import newton_rnn, sequential_rnn, ParaGRU, ParaLSTMCIFG, ALRNN

    cell = ParaGRU(input_size=32, hidden_size=64)
    h = newton_rnn(cell, x, h0, max_iters=3)        # x [B, T, 32] -> h [B, T, 64]

See :mod:`linscan.pararnn.newton` for the algorithm and shared/MATH.md section 4.
"""

from .cells import ALRNN, ParaGRU, ParaLSTMCIFG
from .newton import fuse, newton_rnn, sequential_rnn

__all__ = ["fuse", "newton_rnn", "sequential_rnn", "ParaGRU", "ParaLSTMCIFG", "ALRNN"]
