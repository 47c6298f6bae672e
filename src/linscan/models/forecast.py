"""Multivariate forecasters: the 2-D SSM, its per-variate (1-D) ablation, and DLinear.

Every forecaster maps a window of already normalised values (the data's training
statistics, :func:`linscan.data.tasks.forecast.make_forecast_data`) to the next
``Hz`` steps:

    model = build_forecaster("ssm2d", lookback=48, horizon=12, n_variates=8)
    pred = model(x)                                   # x [B, 48, 8] -> pred [B, 12, 8]

- :class:`SSM2DForecaster`: instance normalisation, a value embedding, pre-norm
  residual blocks of :class:`linscan.nn.grid.SSM2D` (time x variate) + SwiGLU, a head
  on each variate's last time step.
- :class:`SSM1DForecaster`: the same network with every variate on its own (a 1-D SSM
  per variate, weights shared across variates): the ablation without cross-variate mixing.
- :class:`DLinear` (Zeng et al. 2023): moving-average trend + remainder, one linear map
  over time for each, shared across variates by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.grid import SSM2D
from ..nn.mlp import SwiGLU
from ..nn.norms import RMSNorm

HEADS = ("last", "flatten")


def _check_positive(owner: str, **values) -> None:
    """Every value is an int >= 1, else ValueError naming it."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1 for {owner}, got {value!r}")


def _check_input(x, lookback: int, n_variates: int) -> None:
    """``x`` is a floating ``[B, lookback, n_variates]`` tensor, else ValueError naming x."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
        got = f"{list(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a floating tensor [B, L, V], got {got}")
    if tuple(x.shape[1:]) != (lookback, n_variates):
        raise ValueError(f"x: expected [B, L={lookback}, V={n_variates}], got {list(x.shape)}")


# ---------------------------------------------------------------- SSM forecasters


@dataclass(frozen=True)
class SSMForecasterConfig:
    """Sizes of :class:`SSM2DForecaster` and :class:`SSM1DForecaster`.

    lookback L, horizon Hz, n_variates V: the window. d_model, n_layers: width and depth;
    n_heads, state_size, expand, form, bidirectional: the :class:`~linscan.nn.grid.SSM2D`
    mixer's. instance_norm: per-window normalisation (RevIN without affine), eps its
    floor on the std. head: ``"last"`` (Linear(d, Hz) on the last time step) or
    ``"flatten"`` (Linear(L d, Hz) on all steps).
    """

    lookback: int
    horizon: int
    n_variates: int
    d_model: int = 16
    n_layers: int = 2
    n_heads: int = 2
    state_size: int = 4
    expand: int = 2
    form: str = "cell"
    bidirectional: bool = True
    instance_norm: bool = True
    eps: float = 1e-5
    head: str = "last"

    def __post_init__(self):
        _check_positive("an SSM forecaster", lookback=self.lookback, horizon=self.horizon,
                        n_variates=self.n_variates, d_model=self.d_model, n_layers=self.n_layers,
                        n_heads=self.n_heads, state_size=self.state_size, expand=self.expand)
        if (self.expand * self.d_model) % self.n_heads:
            raise ValueError(f"n_heads: expected a divisor of expand * d_model = {self.expand * self.d_model}, "
                             f"got {self.n_heads}")
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {list(HEADS)}, got {self.head!r}")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 1):
            raise ValueError(f"eps: expected a number in (0, 1), got {self.eps!r}")


class InstanceNorm(nn.Module):
    """RevIN without its affine map (Kim et al. 2022): each window, each variate on its own.

    ``normalise``: ``z = (x - mu) / (sigma + eps)`` with mu, sigma the window's per-variate
    mean and (population) std; ``denormalise`` undoes it on the forecast. A forecaster
    wrapped in it is equivariant to a per-variate shift and positive scale of its input
    (up to eps). It removes the window's level: on non-stationary series that is the point;
    on a stationary one it hides the global mean (the forecast reverts to the window mean).
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x ``[B, L, V]`` -> (z ``[B, L, V]``, (mu, scale) each ``[B, 1, V]``)."""
        mu = x.mean(dim=1, keepdim=True)                               # (B, 1, V)
        scale = x.std(dim=1, keepdim=True, unbiased=False) + self.eps  # (B, 1, V)
        return (x - mu) / scale, (mu, scale)

    @staticmethod
    def denormalise(y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """y ``[B, Hz, V]`` in the window's normalised units -> the input's units."""
        mu, scale = stats
        return y * scale + mu


class ValueEmbedding(nn.Module):
    """Each scalar ``x[b, t, v]`` -> ``w x + b + e_v`` in R^d: a linear map of the value plus a
    learned embedding of its variate (so weights shared across variates can still tell them apart)."""

    def __init__(self, n_variates: int, d_model: int):
        super().__init__()
        self.value = nn.Linear(1, d_model)
        self.variate = nn.Parameter(0.02 * torch.randn(n_variates, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, V]`` -> ``[B, L, V, d]``."""
        return self.value(x[..., None]) + self.variate                 # (B, L, V, d)


class SSMBlock(nn.Module):
    """Pre-norm residual block: ``x + SSM2D(norm(x))``, then ``x + SwiGLU(norm(x))``; ``[B, T, V, d]``."""

    def __init__(self, config: SSMForecasterConfig):
        super().__init__()
        c = config
        self.mixer_norm = RMSNorm(c.d_model)
        self.mixer = SSM2D(c.d_model, c.n_heads, state_size=c.state_size, expand=c.expand, form=c.form,
                           bidirectional=c.bidirectional)
        self.mlp_norm = RMSNorm(c.d_model)
        self.mlp = SwiGLU(c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, V, d]`` -> same shape."""
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class SSM2DForecaster(nn.Module):
    """The 2-D SSM forecaster: ``x [B, L, V] -> [B, Hz, V]`` (inputs normalised by the data).

    1. Instance normalisation of the window (:class:`InstanceNorm`; off with
       ``instance_norm=False``).
    2. Value embedding ``[B, L, V] -> [B, L, V, d]`` (:class:`ValueEmbedding`).
    3. ``n_layers`` blocks of SSM2D over (time, variate) + SwiGLU (:class:`SSMBlock`), a final RMSNorm.
    4. Head: ``head="last"`` maps each variate's features at the last time step, ``[B, V, d]``,
       to Hz values by one Linear(d, Hz) shared across variates. The last step suffices: the
       SSM is causal in time, so the last step's output is the only one whose state has read
       the whole window (and, through the variate pass, every variate's window). ``"flatten"``
       reads all L steps (Linear(L d, Hz)), PatchTST's head.
    5. Undo step 1.
    """

    def __init__(self, config: SSMForecasterConfig):
        super().__init__()
        self.config = c = config
        self.revin = InstanceNorm(c.eps) if c.instance_norm else None
        self.embed = ValueEmbedding(c.n_variates, c.d_model)
        self.blocks = nn.ModuleList(SSMBlock(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model * (c.lookback if c.head == "flatten" else 1), c.horizon)

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """The blocks and final norm: ``[B, L, V, d]`` -> same shape."""
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, V]`` -> forecast ``[B, Hz, V]`` in x's units."""
        c = self.config
        _check_input(x, c.lookback, c.n_variates)
        z, stats = self.revin.normalise(x) if self.revin is not None else (x, None)   # 1.
        h = self.mix(self.embed(z))                                    # 2-3. (B, L, V, d)
        B, L, V, d = h.shape
        if c.head == "last":                                           # 4.
            features = h[:, -1]                                        # (B, V, d)
        else:
            features = h.permute(0, 2, 1, 3).reshape(B, V, L * d)      # (B, V, L d)
        y = self.head(features).transpose(1, 2)                        # (B, Hz, V)
        return self.revin.denormalise(y, stats) if self.revin is not None else y     # 5.


class SSM1DForecaster(SSM2DForecaster):
    """:class:`SSM2DForecaster` with every variate on its own: a per-variate 1-D SSM.

    The blocks run on ``[B V, L, 1, d]``: SSM2D over a single variate is a 1-D selective SSM
    (h2 holds only the cell's own input, and the two variate directions become two 1-D SSMs,
    summed), and norms, MLP and head act per cell, so nothing mixes
    variates; all weights are shared across variates except the variate embedding (an
    additive tag, not a mixer). Same parameters as the 2-D model, same config.
    """

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """The blocks and final norm, each variate alone: ``[B, L, V, d]`` -> same shape."""
        B, L, V, d = h.shape
        h = h.permute(0, 2, 1, 3).reshape(B * V, L, 1, d)              # (B V, L, 1, d)
        h = super().mix(h)
        return h.reshape(B, V, L, d).permute(0, 2, 1, 3)               # (B, L, V, d)


# ---------------------------------------------------------------- DLinear


@dataclass(frozen=True)
class DLinearConfig:
    """Sizes of :class:`DLinear`: the window (lookback L, horizon Hz, n_variates V), the
    moving-average kernel (``min(kernel_size, L)``, made odd), and ``individual``: one pair of
    linear maps per variate instead of one shared pair."""

    lookback: int
    horizon: int
    n_variates: int
    kernel_size: int = 25
    individual: bool = False

    def __post_init__(self):
        _check_positive("DLinear", lookback=self.lookback, horizon=self.horizon, n_variates=self.n_variates,
                        kernel_size=self.kernel_size)
        if not isinstance(self.individual, bool):
            raise ValueError(f"individual: expected a bool, got {self.individual!r}")

    @property
    def kernel(self) -> int:
        """The kernel actually used: ``min(kernel_size, L)``, minus 1 if even."""
        k = min(self.kernel_size, self.lookback)
        return k if k % 2 else k - 1


def moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Centred moving average along time, edges padded by repeating the end values.

    x ``[B, L, V]`` -> ``[B, L, V]``; ``kernel`` odd. A constant series stays constant.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel: expected an odd int >= 1, got {kernel!r}")
    pad = (kernel - 1) // 2
    xt = x.transpose(1, 2)                                             # (B, V, L)
    xt = F.pad(xt, (pad, pad), mode="replicate")                       # (B, V, L + 2 pad)
    return F.avg_pool1d(xt, kernel, stride=1).transpose(1, 2)          # (B, L, V)


class TimeLinear(nn.Module):
    """A linear map over time, ``[B, L, V] -> [B, Hz, V]``: one ``(W [Hz, L], b [Hz])`` shared by
    all variates, or one per variate (``individual``). Initialised as DLinear's: ``W = 1/L``."""

    def __init__(self, lookback: int, horizon: int, n_variates: int, *, individual: bool):
        super().__init__()
        groups = n_variates if individual else 1
        self.weight = nn.Parameter(torch.full((groups, horizon, lookback), 1.0 / lookback))
        self.bias = nn.Parameter(torch.zeros(groups, horizon))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, V]`` -> ``[B, Hz, V]`` (a shared map broadcasts over V)."""
        w = self.weight.expand(x.shape[2], -1, -1)                     # (V, Hz, L)
        return torch.einsum("blv,vhl->bhv", x, w) + self.bias.expand(x.shape[2], -1).T


class DLinear(nn.Module):
    """DLinear (Zeng et al. 2023, "Are Transformers Effective for Time Series Forecasting?").

    1. trend = moving average of the window (:func:`moving_average`), remainder = x - trend;
    2. forecast = Linear_trend(trend) + Linear_remainder(remainder), each over time
       (:class:`TimeLinear`), per variate. No instance normalisation (as the paper's DLinear).
    """

    def __init__(self, config: DLinearConfig):
        super().__init__()
        self.config = c = config
        self.trend = TimeLinear(c.lookback, c.horizon, c.n_variates, individual=c.individual)
        self.remainder = TimeLinear(c.lookback, c.horizon, c.n_variates, individual=c.individual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, V]`` -> forecast ``[B, Hz, V]``."""
        c = self.config
        _check_input(x, c.lookback, c.n_variates)
        trend = moving_average(x, c.kernel)                            # (B, L, V)
        return self.trend(trend) + self.remainder(x - trend)


# ---------------------------------------------------------------- registry

FORECASTERS = {
    "ssm2d": (SSM2DForecaster, SSMForecasterConfig),
    "ssm1d": (SSM1DForecaster, SSMForecasterConfig),
    "dlinear": (DLinear, DLinearConfig),
}


def build_forecaster(name: str, *, lookback: int, horizon: int, n_variates: int, **options) -> nn.Module:
    """The forecaster ``name`` (a key of :data:`FORECASTERS`) for windows ``[B, lookback, n_variates]``.

    options: other fields of its config (:class:`SSMForecasterConfig` or :class:`DLinearConfig`);
    an unknown name or field raises ValueError naming it.
    """
    if name not in FORECASTERS:
        raise ValueError(f"name: expected one of {list(FORECASTERS)}, got {name!r}")
    model_class, config_class = FORECASTERS[name]
    fields = {f.name for f in dataclasses.fields(config_class)} - {"lookback", "horizon", "n_variates"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"options: expected fields of {config_class.__name__} ({', '.join(sorted(fields))}), "
                         f"got {', '.join(unknown)} for {name!r}")
    return model_class(config_class(lookback=lookback, horizon=horizon, n_variates=n_variates, **options))


__all__ = ["FORECASTERS", "HEADS", "DLinear", "DLinearConfig", "InstanceNorm", "SSM1DForecaster",
           "SSM2DForecaster", "SSMBlock", "SSMForecasterConfig", "TimeLinear", "ValueEmbedding",
           "build_forecaster", "moving_average"]
