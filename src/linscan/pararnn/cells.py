"""Cells for Newton-parallel RNNs: ParaGRU, ParaLSTM-CIFG, AL-RNN.

Every cell maps (h [..., M], x [..., N]) -> h' [..., M] on any leading shape,
so one call applies it to all time steps [B, T, ...] at once, and gives the
Jacobian d h' / d h in the layout ``linear_scan`` takes. A cell splits f into

    project(x) -> u             the part independent of h (input matmuls, biases):
                                the solver computes it once, not once per iteration
    transition(h, u) -> h'      the rest, cheap and elementwise-ish
    linearize(h, u) -> (h', J)  both from one evaluation of the gates

and ``step(h, x)`` / ``jacobian(h, x)`` compose them. Jacobian layouts:

    structure   jacobian shape        cell
    diagonal    [..., M]              ParaGRU (A_* diagonal, so h' depends on h_i only via h_i)
    block       [..., M/2, 2, 2]      ParaLSTM-CIFG (state [c_0, h_0, c_1, h_1, ...])
    dense       [..., M, M]           AL-RNN
"""

import math

import torch
from torch import nn

__all__ = ["NewtonCell", "ParaGRU", "ParaLSTMCIFG", "ALRNN"]


class NewtonCell(nn.Module):
    """Base of the cells ``newton_rnn`` solves; subclasses set ``structure``, ``state_size``
    and define ``transition`` and ``linearize`` (``project`` defaults to the identity)."""

    structure = "dense"
    input_size = 0
    state_size = 0

    def project(self, x):
        return x

    def transition(self, h, u):
        raise NotImplementedError

    def linearize(self, h, u):
        raise NotImplementedError

    def step(self, h, x):
        return self.transition(h, self.project(x))

    def jacobian(self, h, x):
        return self.linearize(h, self.project(x))[1]


def _sizes(cell, input_size, **sizes):
    """Check that every size is a positive int (naming it), and record the input size."""
    for name, value in {"input_size": input_size, **sizes}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    cell.input_size = input_size


def _diag_param(size, bound):
    return nn.Parameter(torch.empty(size).uniform_(-bound, bound))


class ParaGRU(NewtonCell):
    """GRU with diagonal recurrence (MATH.md section 4):

        z = sigma(A_z*h + B_z x + b_z);  r = sigma(A_r*h + B_r x + b_r)
        h^ = tanh(A_h*(h*r) + B_h x + b_h);  h' = (1 - z) h + z h^
    """

    structure = "diagonal"

    def __init__(self, input_size, hidden_size):
        super().__init__()
        _sizes(self, input_size, hidden_size=hidden_size)
        self.state_size = hidden_size
        self.A_z, self.A_r, self.A_h = (_diag_param(hidden_size, 1.0) for _ in range(3))
        self.B = nn.Linear(input_size, 3 * hidden_size)          # B_z, B_r, B_h and b_z, b_r, b_h

    def project(self, x):
        return self.B(x)                                         # (..., 3D)

    def _gates(self, h, u):
        xz, xr, xh = u.chunk(3, dim=-1)
        z = torch.sigmoid(self.A_z * h + xz)
        r = torch.sigmoid(self.A_r * h + xr)
        h_hat = torch.tanh(self.A_h * (h * r) + xh)
        return z, r, h_hat

    def transition(self, h, u):
        z, _, h_hat = self._gates(h, u)
        return (1 - z) * h + z * h_hat

    def linearize(self, h, u):
        z, r, h_hat = self._gates(h, u)
        dz = z * (1 - z) * self.A_z
        dr = r * (1 - r) * self.A_r
        dh_hat = (1 - h_hat**2) * self.A_h * (r + h * dr)
        return (1 - z) * h + z * h_hat, (1 - z) + (h_hat - h) * dz + z * dh_hat


class ParaLSTMCIFG(NewtonCell):
    """LSTM with coupled input/forget gate and diagonal recurrence (MATH.md section 4):

        f = sigma(A_f h + B_f x + C_f c + b_f);  c' = f c + (1 - f) tanh(A_c h + B_c x + b_c)
        o = sigma(A_o h + B_o x + C_o c + b_o);  h' = o tanh(c')

    The state [..., 2D] interleaves (c_i, h_i) per channel so that each
    channel's 2 x 2 Jacobian block sits on two consecutive entries.
    """

    structure = "block"

    def __init__(self, input_size, hidden_size):
        super().__init__()
        _sizes(self, input_size, hidden_size=hidden_size)
        self.hidden_size = hidden_size
        self.state_size = 2 * hidden_size
        self.A_f, self.A_c, self.A_o, self.C_f, self.C_o = (_diag_param(hidden_size, 1.0) for _ in range(5))
        self.B = nn.Linear(input_size, 3 * hidden_size)          # B_f, B_c, B_o and biases

    def project(self, x):
        return self.B(x)                                         # (..., 3D)

    def _gates(self, s, u):
        c, h = s.unflatten(-1, (-1, 2)).unbind(-1)               # (..., D) each
        xf, xc, xo = u.chunk(3, dim=-1)
        f = torch.sigmoid(self.A_f * h + xf + self.C_f * c)
        g = torch.tanh(self.A_c * h + xc)
        o = torch.sigmoid(self.A_o * h + xo + self.C_o * c)
        c_new = f * c + (1 - f) * g
        return c, f, g, o, c_new

    def transition(self, s, u):
        _, _, _, o, c_new = self._gates(s, u)
        return torch.stack([c_new, o * torch.tanh(c_new)], dim=-1).flatten(-2)

    def linearize(self, s, u):
        c, f, g, o, c_new = self._gates(s, u)
        df = f * (1 - f)
        dc_dc = f + (c - g) * df * self.C_f
        dc_dh = (c - g) * df * self.A_f + (1 - f) * (1 - g**2) * self.A_c
        do = o * (1 - o)
        tc = torch.tanh(c_new)
        dtc = o * (1 - tc**2)
        dh_dc = do * self.C_o * tc + dtc * dc_dc
        dh_dh = do * self.A_o * tc + dtc * dc_dh
        rows = (torch.stack([dc_dc, dc_dh], dim=-1), torch.stack([dh_dc, dh_dh], dim=-1))
        s_new = torch.stack([c_new, o * tc], dim=-1).flatten(-2)
        return s_new, torch.stack(rows, dim=-2)                  # (..., D, 2 out, 2 in)


class ALRNN(NewtonCell):
    """Almost-linear RNN: z' = A z + W relu*(z) + h + C s, ReLU on the last P of M units.

    A diagonal (M,), W [M, M], h bias (M,), C [M, N]; the first M - P units
    pass through W linearly. Piecewise linear, so Newton is exact in finitely
    many steps: once the ReLU pattern of the iterate matches the solution's,
    the linearisation is the map itself.
    """

    structure = "dense"

    def __init__(self, input_size, state_size, relu_units):
        super().__init__()
        _sizes(self, input_size, state_size=state_size)
        if isinstance(relu_units, bool) or not isinstance(relu_units, int) or not 0 <= relu_units <= state_size:
            raise ValueError(f"relu_units: expected 0 <= P <= {state_size}, got {relu_units}")
        self.state_size = state_size
        self.relu_units = relu_units
        self.A = nn.Parameter(torch.empty(state_size).uniform_(0.0, 0.9))
        self.W = nn.Parameter(torch.randn(state_size, state_size) * (0.1 / math.sqrt(state_size)))
        self.h = nn.Parameter(torch.zeros(state_size))
        self.C = nn.Parameter(torch.randn(state_size, input_size) / math.sqrt(input_size))

    def _relu_star(self, z):
        linear = self.state_size - self.relu_units
        return torch.cat([z[..., :linear], torch.relu(z[..., linear:])], dim=-1)

    def project(self, s):
        return s @ self.C.T + self.h                             # (..., M)

    def transition(self, z, u):
        return self.A * z + self._relu_star(z) @ self.W.T + u

    def linearize(self, z, u):
        linear = self.state_size - self.relu_units
        slope = torch.cat([torch.ones_like(z[..., :linear]), (z[..., linear:] > 0).to(z.dtype)], dim=-1)
        jac = self.W * slope.unsqueeze(-2) + torch.diag_embed(self.A.expand_as(z))
        return self.transition(z, u), jac
