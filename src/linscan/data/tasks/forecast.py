"""Multivariate forecasting data: a synthetic coupled AR process, statsmodels'
macrodata, sliding windows, a chronological split and per-horizon errors.

Series are ``[T, V]`` (time, variate). The pipeline:

1. a series: ``coupled_ar`` (known cross-variate structure) or ``load_macrodata``
   (US quarterly macro data, 1959-2009, shipped with statsmodels);
2. ``make_forecast_data`` cuts the timeline into train / val / test segments
   (70 / 10 / 20 by default), normalises every variate with the mean and std of the
   train segment only, and slides windows inside each segment, so no window of one
   split shares a time step with a window of another;
3. a model maps ``inputs [N, L, V]`` to ``pred [N, Hz, V]``; ``forecast_errors`` gives
   the MSE and MAE per horizon step (on normalised values, as usual in the
   literature; ``ForecastData.denormalise`` returns to the original units).

    series, names = load_macrodata()                             # [202, 11], 11 names
    data = make_forecast_data(series, lookback=8, horizon=4, names=names)
    x, y = data.train.inputs, data.train.targets                 # [N, 8, 11], [N, 4, 11]
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch

from . import _is_int

# ---------------------------------------------------------------- synthetic coupled AR


def coupled_ar_transition(n_variates: int, *, ar: float = 0.5, coupling: float = 0.4) -> torch.Tensor:
    """Transition matrix ``A [V, V]`` float64 of ``coupled_ar``: ``ar`` on the diagonal,
    ``coupling`` at ``(v, v - 1 mod V)`` (each variate reads its ring neighbour).

    ``|ar| + |coupling| < 1`` bounds every eigenvalue ``ar + coupling * w`` (``w`` a
    V-th root of unity) inside the unit circle, so the process is stationary.
    """
    if not _is_int(n_variates) or n_variates < 1:
        raise ValueError(f"coupled_ar: n_variates must be an int >= 1, got {n_variates!r}")
    for name, value in (("ar", ar), ("coupling", coupling)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"coupled_ar: {name} must be a finite number, got {value!r}")
    if abs(ar) + abs(coupling) >= 1:
        raise ValueError(f"coupled_ar: |ar| + |coupling| must be < 1 for a stationary process, "
                         f"got ar={ar!r}, coupling={coupling!r}")
    v = operator.index(n_variates)
    neighbour = torch.roll(torch.eye(v, dtype=torch.float64), shifts=1, dims=0)   # row v has a 1 at v - 1
    return ar * torch.eye(v, dtype=torch.float64) + coupling * neighbour


def coupled_ar(n_steps: int, n_variates: int, *, ar: float = 0.5, coupling: float = 0.4,
               noise: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A stationary VAR(1) with ring coupling, float32 ``[n_steps, n_variates]``:

        x_{v,t} = ar * x_{v,t-1} + coupling * x_{v-1,t-1} + noise * e_{v,t},  e ~ N(0, 1)

    (``v - 1`` taken mod V; with V = 1 the neighbour is the variate itself).
    ``coupling=0`` gives V independent AR(1) series. The run starts at 0 and discards
    a burn-in long enough for the start to decay below 1e-6 of its size, so the
    returned steps are (to that precision) stationary. Deterministic per ``seed``.
    """
    a = coupled_ar_transition(n_variates, ar=ar, coupling=coupling)               # (V, V)
    if not _is_int(n_steps) or n_steps < 1:
        raise ValueError(f"coupled_ar: n_steps must be an int >= 1, got {n_steps!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 < noise < math.inf:
        raise ValueError(f"coupled_ar: noise must be a finite number > 0, got {noise!r}")
    if not _is_int(seed):
        raise ValueError(f"coupled_ar: seed must be an int, got {seed!r}")
    rho = abs(ar) + abs(coupling)                                                 # bound on ||A^t|| decay
    burn_in = 1 if rho == 0 else max(1, math.ceil(math.log(1e-6) / math.log(rho)))
    gen = torch.Generator().manual_seed(operator.index(seed) % 2**63)
    eps = noise * torch.randn(burn_in + n_steps, a.shape[0], generator=gen, dtype=torch.float64)   # (T', V)
    x = torch.zeros(a.shape[0], dtype=torch.float64)
    out = torch.empty_like(eps)
    for t in range(eps.shape[0]):
        x = a @ x + eps[t]
        out[t] = x
    return out[burn_in:].float()                                                  # (T, V)


# ---------------------------------------------------------------- macrodata

# Trending levels become 100 * log-differences (quarterly growth in percent);
# rates (already percent, roughly stationary) stay as they are. cpi is left out:
# its growth duplicates infl (infl = 400 * dlog cpi, to the data's rounding).
MACRO_LOG_DIFF = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "m1", "pop")
MACRO_LEVEL = ("tbilrate", "unemp", "infl", "realint")
MACRO_COLUMNS = MACRO_LOG_DIFF + MACRO_LEVEL


def load_macrodata() -> tuple[torch.Tensor, list[str]]:
    """statsmodels' US macro data (quarterly, 1959Q1-2009Q3) as a stationary-ish panel.

    Returns ``series`` float32 ``[202, 11]`` and the column names ``MACRO_COLUMNS``:
    ``MACRO_LOG_DIFF`` as ``100 * (log x_t - log x_{t-1})``, ``MACRO_LEVEL`` unchanged.
    The first quarter is dropped: it has no difference, and its infl / realint are
    placeholders (0). Needs statsmodels (``pip install 'linscan[forecast]'``).
    """
    try:
        from statsmodels.datasets import macrodata
    except ImportError as err:
        raise ImportError("load_macrodata needs statsmodels: pip install 'linscan[forecast]' "
                          "(or pip install statsmodels)") from err
    frame = macrodata.load_pandas().data
    raw = torch.tensor(frame[list(MACRO_COLUMNS)].to_numpy(), dtype=torch.float64)   # (203, 11)
    n_log = len(MACRO_LOG_DIFF)
    growth = 100 * torch.diff(torch.log(raw[:, :n_log]), dim=0)                       # (202, 7)
    series = torch.cat([growth, raw[1:, n_log:]], dim=1)                              # (202, 11)
    return series.float(), list(MACRO_COLUMNS)


# ---------------------------------------------------------------- windows and splits


def make_windows(series: torch.Tensor, lookback: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows of ``series [T, V]`` with stride 1.

    Returns ``inputs [N, lookback, V]`` and ``targets [N, horizon, V]``,
    ``N = T - lookback - horizon + 1``; window ``i`` reads steps ``i .. i+L-1`` and
    predicts ``i+L .. i+L+Hz-1``. Contiguous copies, same dtype as ``series``.
    """
    if not isinstance(series, torch.Tensor) or series.dim() != 2:
        got = tuple(series.shape) if isinstance(series, torch.Tensor) else type(series).__name__
        raise ValueError(f"make_windows: series must be a 2-D tensor [T, V], got {got}")
    _check_window("make_windows", lookback, horizon)
    span = lookback + horizon
    if series.shape[0] < span:
        raise ValueError(f"make_windows: series has T = {series.shape[0]} steps, fewer than "
                         f"lookback + horizon = {span}")
    win = series.unfold(0, span, 1).transpose(1, 2)                               # (N, L + Hz, V)
    return win[:, :lookback].contiguous(), win[:, lookback:].contiguous()


@dataclass(frozen=True)
class Windows:
    """One split: ``inputs [N, L, V]``, ``targets [N, Hz, V]`` (normalised) and
    ``start [N]``, the time index in the full series of each window's first input step."""

    inputs: torch.Tensor
    targets: torch.Tensor
    start: torch.Tensor


@dataclass(frozen=True)
class ForecastData:
    """Train / val / test windows of one series, normalised with train statistics.

    ``mean``, ``std`` ``[V]`` (float32) come from the train segment only;
    ``bounds = (t1, t2)``: train is steps ``[0, t1)``, val ``[t1, t2)``, test ``[t2, T)``.
    """

    train: Windows
    val: Windows
    test: Windows
    mean: torch.Tensor
    std: torch.Tensor
    bounds: tuple[int, int]
    lookback: int
    horizon: int
    names: list[str] = field(default_factory=list)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Original units -> normalised; ``x [..., V]``."""
        return (x - self.mean.to(x)) / self.std.to(x)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (e.g. a prediction ``[N, Hz, V]``) -> original units; ``x [..., V]``."""
        return x * self.std.to(x) + self.mean.to(x)


def make_forecast_data(series: torch.Tensor, *, lookback: int, horizon: int,
                       fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                       names: list[str] | None = None) -> ForecastData:
    """Chronological split of ``series [T, V]`` into train / val / test windows.

    1. Segment boundaries ``t1 = round(f_train T)``, ``t2 = round((f_train + f_val) T)``.
    2. Per-variate mean and (population) std of the train segment ``[0, t1)``; a
       constant variate gets std 1.
    3. Normalise the whole series with them, then slide ``make_windows`` inside each
       segment separately: every window (inputs and targets) lies in its own segment,
       so test windows start at or after ``t2`` and train targets end before ``t1``.
    Each segment must hold at least ``lookback + horizon`` steps.
    """
    _check_series(series, names)
    _check_window("make_forecast_data", lookback, horizon)
    if (not isinstance(fractions, (tuple, list)) or len(fractions) != 3
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in fractions)
            or abs(sum(fractions) - 1) > 1e-6):
        raise ValueError(f"make_forecast_data: fractions must be three numbers > 0 summing to 1 "
                         f"(train, val, test), got {fractions!r}")
    n_steps = series.shape[0]
    t1 = round(fractions[0] * n_steps)
    t2 = round((fractions[0] + fractions[1]) * n_steps)
    # 2. statistics of the train segment only (float64 so long series do not lose precision)
    train = series[:t1].double()
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False)              # (V,), (V,)
    std = torch.where(std > 0, std, torch.ones_like(std))
    scaled = ((series.double() - mean) / std).to(series.dtype)                     # (T, V)
    # 3. windows inside each segment
    splits = {}
    for split, (lo, hi) in {"train": (0, t1), "val": (t1, t2), "test": (t2, n_steps)}.items():
        if hi - lo < lookback + horizon:
            raise ValueError(f"make_forecast_data: the {split} segment has {hi - lo} steps (T = {n_steps}, "
                             f"fractions={tuple(fractions)}), fewer than lookback + horizon = {lookback + horizon}")
        inputs, targets = make_windows(scaled[lo:hi], lookback, horizon)
        splits[split] = Windows(inputs, targets, lo + torch.arange(inputs.shape[0]))
    return ForecastData(**splits, mean=mean.float(), std=std.float(), bounds=(t1, t2),
                        lookback=operator.index(lookback), horizon=operator.index(horizon),
                        names=list(names) if names is not None else [])


def _check_window(caller: str, lookback, horizon) -> None:
    for name, value in (("lookback", lookback), ("horizon", horizon)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{caller}: {name} must be an int >= 1, got {value!r}")


def _check_series(series, names) -> None:
    if not isinstance(series, torch.Tensor) or series.dim() != 2 or not series.is_floating_point():
        got = (f"{tuple(series.shape)} {series.dtype}" if isinstance(series, torch.Tensor)
               else type(series).__name__)
        raise ValueError(f"make_forecast_data: series must be a 2-D floating tensor [T, V], got {got}")
    if not torch.isfinite(series).all():
        raise ValueError("make_forecast_data: series must be finite (found NaN or inf)")
    if names is not None and len(names) != series.shape[1]:
        raise ValueError(f"make_forecast_data: names must have one entry per variate (V = {series.shape[1]}), "
                         f"got {len(names)}")


# ---------------------------------------------------------------- metrics


def forecast_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Errors per horizon step of ``pred``, ``target [N, Hz, V]`` (same shape).

    Returns ``{"mse": [Hz], "mae": [Hz]}`` float64, each averaged over windows and
    variates; ``.mean()`` of either is the usual whole-horizon number.
    """
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"forecast_errors: {name} must be a 3-D tensor [N, Hz, V], got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"forecast_errors: pred and target must have the same shape [N, Hz, V], "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    diff = pred.double() - target.double()                                        # (N, Hz, V)
    return {"mse": diff.square().mean(dim=(0, 2)), "mae": diff.abs().mean(dim=(0, 2))}


__all__ = ["MACRO_COLUMNS", "MACRO_LEVEL", "MACRO_LOG_DIFF", "ForecastData", "Windows", "coupled_ar",
           "coupled_ar_transition", "forecast_errors", "load_macrodata", "make_forecast_data", "make_windows"]
