"""How many heads make an SSM (MATH.md 10.4): the lag matrix, its best H-head fit, and a report.

A linear SSM h_i = A h_{i-1} + B x_i, y_i = C h_i (h_{-1} = 0) is the causal convolution

    y_i = sum_{j <= i} W_ij x_j,   W_ij = L_{i-j},   L_l = C A^l B   (p x d, l = 0 .. n-1)

An H-head positional mixer writes W_ij = sum_{h <= H} c_h(i - j) V_h: head h mixes the value
projections V_h x_j with position-only scores c_h(i - j) (signed, unlike softmax). It matches
the SSM exactly iff every lag lies in span{V_h}, so H = k heads are necessary and sufficient
when the lags span k dimensions (k <= min(N, p d, n); Cayley-Hamilton bounds it by N).

Best fit on white noise. For x_j i.i.d. standard normal over n positions, lag l serves n - l
pairs (i, j), so E ||y - y_fit||^2 = sum_l (n - l) ||L_l - F_l||_F^2: the best H-head fit is the
rank-H truncated SVD of the lag matrix [n, p d] with row l weighted by sqrt(n - l), and the
relative error reported here is the weighted Frobenius norm of the residual over that of the
lags (its square, the residual energy fraction, is what MATH.md's figures are: see ``energy``).

Systems (:func:`delay_line`, :func:`oscillator`, :func:`random_diagonal`):

    delay line       blocks of d state dims shifted one block per step; y reads every block:
                     L_l = [0 .. I_d .. 0]^T for l < taps, 0 after (orthonormal, span = taps)
    oscillator       two damped rotations r R(theta) (block diagonal, N = 4), random B, C:
                     r^l C R(l theta) B = r^l (cos(l theta) C B + sin(l theta) C J B) per
                     rotation, so span = 2 per rotation = 4
    random diagonal  A = diag(a), a ~ U(0, 1), B, C ~ N(0, 1): span = N, but the lags are
                     sums of geometric sequences a_s^l and nearly dependent, so the fit
                     error falls fast long before H = N

    python -m linscan.analysis.heads --out DIR [--n 32]     # table, DIR/heads.json, DIR/heads.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

F64 = torch.float64
PLOT_FLOOR = 1e-17   # log-scale plot: errors below (exact zeros) drawn here


def ssm_lags(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, n: int) -> torch.Tensor:
    """Lags ``L_l = C A^l B`` for l < n: A [N, N], B [N, d], C [p, N] -> [n, p, d] float64."""
    A, B, C = _check_ssm(A, B, C)
    n = _check_int(n, "n", low=1)
    lags, power_b = [], B                                   # power_b = A^l B, [N, d]
    for _ in range(n):
        lags.append(C @ power_b)
        power_b = A @ power_b
    return torch.stack(lags)


def ssm_run(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The recurrence itself: x [T, d] -> y [T, p] float64, h_i = A h_{i-1} + B x_i, y_i = C h_i."""
    A, B, C = _check_ssm(A, B, C)
    x = _check_input(x, B.shape[1])
    h, ys = torch.zeros(A.shape[0], dtype=F64), []
    for x_i in x:
        h = A @ h + B @ x_i
        ys.append(C @ h)
    return torch.stack(ys) if ys else x.new_zeros(0, C.shape[0])


def lag_apply(lags: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The causal lag convolution ``y_i = sum_{j <= i} L_{i-j} x_j``: lags [n, p, d], x [T, d]
    (T <= n) -> y [T, p] float64."""
    lags = _check_lags(lags)
    x = _check_input(x, lags.shape[2])
    if x.shape[0] > lags.shape[0]:
        raise ValueError(f"lag_apply: x has T = {x.shape[0]} steps, more than the n = {lags.shape[0]} lags")
    T = x.shape[0]
    y = x.new_zeros(T, lags.shape[1])
    for l in range(T):
        y[l:] += x[: T - l] @ lags[l].T
    return y


def lag_weights(n: int) -> torch.Tensor:
    """Row weights ``sqrt(n - l)`` [n] float64: lag l meets n - l (i, j) pairs in n positions."""
    return torch.arange(n, 0, -1, dtype=F64).sqrt()


def head_factors(lags: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k-head fit as factors: lags [n, p, d] -> (coeffs c [n, k], values V [k, p, d]) with
    fitted lag F_l = sum_h c[l, h] V_h (the weighted rank-k truncated SVD; V_h orthonormal)."""
    # 1. the weighted lag matrix [n, p d] and its SVD
    lags = _check_lags(lags)
    n, p, d = lags.shape
    k = _check_int(k, "k", low=0, high=min(n, p * d))
    w = lag_weights(n)
    U, S, Vh = torch.linalg.svd(w[:, None] * lags.reshape(n, p * d), full_matrices=False)
    # 2. keep k singular triples; unweight the coefficients
    coeffs = U[:, :k] * S[:k] / w[:, None]
    return coeffs, Vh[:k].reshape(k, p, d)


def fit_heads(lags: torch.Tensor, k: int) -> tuple[float, torch.Tensor]:
    """Best k-head positional fit of lags [n, p, d] -> (relative error, fitted lags [n, p, d]).

    The error is ``||w (L - F)||_F / ||w L||_F`` with row weights w = sqrt(n - l) (0 for zero
    lags): the relative output error of the fit on white-noise input.
    """
    coeffs, values = head_factors(lags, k)
    fitted = torch.einsum("lh,hpd->lpd", coeffs, values)
    w = lag_weights(lags.shape[0])[:, None, None]
    total = (w * lags).norm().item()
    return ((w * (lags - fitted)).norm().item() / total if total else 0.0), fitted


def head_curve(lags: torch.Tensor, ks) -> list[float]:
    """Relative fit errors of :func:`fit_heads` for every k in ``ks`` (list of floats)."""
    return [fit_heads(lags, k)[0] for k in ks]


def heads_apply(coeffs: torch.Tensor, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The heads as a mixer: coeffs [n, k], values [k, p, d], x [T, d] (T <= n) -> y [T, p],
    ``y_i = sum_h sum_{j <= i} c_h(i - j) V_h x_j`` (position-only scores per head)."""
    x = _check_input(x, values.shape[2])
    T = x.shape[0]
    if T > coeffs.shape[0]:
        raise ValueError(f"heads_apply: x has T = {T} steps, more than the n = {coeffs.shape[0]} coefficients")
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    scores = torch.where(j <= i, coeffs[(i - j).clamp(min=0)].permute(2, 0, 1), 0.0)   # (k, T, T)
    projected = torch.einsum("hpd,jd->hjp", values, x)                                   # (k, T, p)
    return torch.einsum("hij,hjp->ip", scores, projected)


def span_dimension(lags: torch.Tensor, *, rtol: float = 1e-12) -> int:
    """Numerical rank of the weighted lag matrix: singular values above ``rtol`` times the largest."""
    lags = _check_lags(lags)
    n = lags.shape[0]
    s = torch.linalg.svdvals(lag_weights(n)[:, None] * lags.reshape(n, -1))
    return int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0


# ---------------------------------------------------------------------------------------------
# Example systems: each returns (A [N, N], B [N, d], C [p, N]) float64


def delay_line(taps: int = 6, d: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block shift register with ``taps`` blocks of d dims; y = the whole state (p = N = taps d).
    Lags l < taps are orthonormal (one identity block each), later ones zero: span = taps."""
    taps, d = _check_int(taps, "taps", low=1), _check_int(d, "d", low=1)
    N = taps * d
    A = torch.zeros(N, N, dtype=F64)
    A[d:, : N - d] = torch.eye(N - d, dtype=F64)            # block b -> block b + 1
    B = torch.zeros(N, d, dtype=F64)
    B[:d] = torch.eye(d, dtype=F64)
    return A, B, torch.eye(N, dtype=F64)


def oscillator(d: int = 3, p: int = 3, *, radii=(0.95, 0.9), angles=(0.3, 1.1),
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Damped rotations r R(theta) side by side (N = 2 per rotation), B, C ~ N(0, 1):
    span = 2 per rotation (4 by default; needs p d >= 4 and sin(theta) != 0)."""
    if len(radii) != len(angles) or not radii:
        raise ValueError("oscillator: radii and angles need one entry per rotation, "
                         f"got {len(radii)} and {len(angles)}")
    blocks = [r * torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=F64)
              for r, t in zip(radii, angles)]
    g = torch.Generator().manual_seed(seed)
    N = 2 * len(blocks)
    B = torch.randn(N, d, generator=g, dtype=F64)
    return torch.block_diag(*blocks), B, torch.randn(p, N, generator=g, dtype=F64)


def random_diagonal(N: int = 6, d: int = 3, p: int = 3, *,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A = diag(a), a ~ U(0, 1); B, C ~ N(0, 1): span = min(N, p d) (distinct a, generic B, C)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(N, generator=g, dtype=F64)
    return torch.diag(a), torch.randn(N, d, generator=g, dtype=F64), torch.randn(p, N, generator=g, dtype=F64)


SYSTEM_SIZES = {
    "delay line": "taps = 6, d = 2 (N = p = 12)",
    "oscillator": "2 damped rotations (r, theta) = (0.95, 0.3), (0.9, 1.1); N = 4, d = p = 3",
    "random diagonal": "N = 6, d = p = 3, a ~ U(0, 1)",
}


def example_systems(seed: int = 0) -> dict[str, tuple[tuple[torch.Tensor, ...], int]]:
    """{name: ((A, B, C), span)} for the three documented systems, sizes in SYSTEM_SIZES."""
    return {
        "delay line": (delay_line(6, 2), 6),
        "oscillator": (oscillator(3, 3, seed=seed), 4),
        "random diagonal": (random_diagonal(6, 3, 3, seed=seed), 6),
    }


# ---------------------------------------------------------------------------------------------
# Report: table, theorem check, JSON and PNG


def check_heads_theorem(A, B, C, n: int, k: int, *, seed: int = 0) -> float:
    """Run the SSM and the best k-head mixer on one random input x [n, d]; return
    max |y_heads - y_ssm| / max |y_ssm| (float64 round-off when k >= span)."""
    coeffs, values = head_factors(ssm_lags(A, B, C, n), k)
    x = torch.randn(n, B.shape[1], generator=torch.Generator().manual_seed(seed), dtype=F64)
    y_ssm = ssm_run(A, B, C, x)
    return ((heads_apply(coeffs, values, x) - y_ssm).abs().max() / y_ssm.abs().max()).item()


def heads_report(n: int = 32, ks=range(1, 9), *, seed: int = 0) -> dict:
    """Error curves of the example systems: {name: {span, numerical_span, ks, errors, energy,
    theorem_check}} (energy = errors squared; theorem_check = :func:`check_heads_theorem` at span)."""
    report = {}
    for name, ((A, B, C), span) in example_systems(seed).items():
        lags = ssm_lags(A, B, C, n)
        errors = head_curve(lags, list(ks))
        report[name] = {
            "system": SYSTEM_SIZES[name], "span": span, "numerical_span": span_dimension(lags), "n": n, "ks": list(ks),
            "errors": errors, "energy": [e * e for e in errors],
            "theorem_check": check_heads_theorem(A, B, C, n, span, seed=seed),
        }
    return report


def format_report(report: dict) -> str:
    """Text table: error vs k, one column per system; then the span and theorem check lines."""
    names = list(report)
    ks = report[names[0]]["ks"]
    lines = ["k".rjust(3) + "".join(f"{name:>18}" for name in names)]
    for row, k in enumerate(ks):
        lines.append(f"{k:3d}" + "".join(f"{report[name]['errors'][row]:18.2e}" for name in names))
    for name in names:
        r = report[name]
        lines.append(f"{name} ({r['system']}): span {r['span']} (numerical {r['numerical_span']}), "
                     f"heads at k = span vs recurrence: max rel diff {r['theorem_check']:.1e}")
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    """Log-scale error vs k, one line per system, a ring at k = span (zeros drawn at PLOT_FLOOR)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, r in report.items():
        errors = [max(e, PLOT_FLOOR) for e in r["errors"]]
        line, = ax.semilogy(r["ks"], errors, "o-", ms=4, label=name)
        if r["span"] in r["ks"]:
            ax.semilogy([r["span"]], [errors[r["ks"].index(r["span"])]], "o", ms=12, mfc="none", color=line.get_color())
    ax.set_xlabel("heads k")
    ax.set_ylabel("relative fit error (white noise)")
    ax.set_title(f"best k-head fit of SSM lags, n = {next(iter(report.values()))['n']} (ring: k = span)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    """``python -m linscan.analysis.heads --out DIR [--n 32]``: print, write heads.json and heads.png."""
    parser = argparse.ArgumentParser(prog="python -m linscan.analysis.heads", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=32, help="number of lags (sequence length)")
    args = parser.parse_args(argv)
    report = heads_report(args.n)
    print(format_report(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heads.json").write_text(json.dumps(report, indent=2))
    plot_report(report, args.out / "heads.png")
    print(f"wrote {args.out / 'heads.json'} and {args.out / 'heads.png'}")
    return report


# ---------------------------------------------------------------------------------------------
# Argument checks


def _check_int(value, name: str, *, low: int, high: int | None = None) -> int:
    """An int in [low, high] (high None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_ssm(A, B, C):
    """(A [N, N], B [N, d], C [p, N]) as float64, shapes checked."""
    A, B, C = (torch.as_tensor(t, dtype=F64) for t in (A, B, C))
    N = A.shape[0] if A.dim() == 2 else -1
    if A.shape != (N, N) or B.dim() != 2 or B.shape[0] != N or C.dim() != 2 or C.shape[1] != N:
        raise ValueError("A, B, C must be [N, N], [N, d], [p, N], "
                         f"got {tuple(A.shape)}, {tuple(B.shape)}, {tuple(C.shape)}")
    return A, B, C


def _check_lags(lags) -> torch.Tensor:
    lags = torch.as_tensor(lags, dtype=F64)
    if lags.dim() != 3 or lags.shape[0] < 1:
        raise ValueError(f"lags must be [n, p, d] with n >= 1, got {tuple(lags.shape)}")
    return lags


def _check_input(x, d: int) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=F64)
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x must be [T, d] with d = {d}, got {tuple(x.shape)}")
    return x


if __name__ == "__main__":
    main()
