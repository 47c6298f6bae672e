"""AL-RNN reconstruction of the Lorenz-63 attractor, trained through ``newton_rnn``.

    python -m linscan.pararnn.lorenz [--out runs/lorenz] [--steps 1200]   # ~2-3 min on one CPU core

1. data       Lorenz-63 from our own float64 RK4 integrator (dt = 0.01), standardised
2. model      ALRNN (M latent units, the last P with ReLU); observation = first 3 units
3. training   sparse identity teacher forcing (generalised teacher forcing with alpha = 1
              every tau steps): windows of tau steps start from the data-inferred state
              z_0 = [x_t0, E x_t0] (E a learned linear map for the unobserved units) and run
              freely for tau steps, solved for all steps at once by ``newton_rnn``; MSE on
              the observed units; Adam
4. evaluation a long free run of the trained model vs a long ground-truth trajectory:
              state-space divergence D_stsp (histogram KL, see ``state_space_divergence``)
              and the maximal Lyapunov exponent (QR method on the model Jacobians), next
              to the same figures for the untrained model and D_stsp between two
              ground-truth trajectories (the noise floor), as yardsticks
5. output     lorenz.png (attractors side by side, x-z projection) and lorenz.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cells import ALRNN
from .newton import newton_rnn, sequential_rnn

__all__ = ["lorenz_field", "rk4_step", "rk4", "lorenz63", "state_space_divergence",
           "lyapunov_spectrum", "max_lyapunov", "lorenz_step_jacobians", "LorenzALRNN", "train",
           "evaluate", "main"]

DT = 0.01


# ---------------------------------------------------------------- 1. data: RK4 integrator

def lorenz_field(x, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    """Lorenz-63 vector field dx/dt for states x [..., 3]."""
    u, v, w = x.unbind(-1)
    return torch.stack([sigma * (v - u), u * (rho - w) - v, u * v - beta * w], dim=-1)


def rk4_step(f, x, dt):
    """One classical 4th-order Runge-Kutta step of dx/dt = f(x)."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def rk4(f, x0, n_steps, dt):
    """Integrate dx/dt = f(x) from x0 [..., D]: x(dt), ..., x(n_steps dt) as [n_steps, ..., D]."""
    out, x = [], x0
    for _ in range(n_steps):
        x = rk4_step(f, x, dt)
        out.append(x)
    return torch.stack(out)


def lorenz63(n_steps, dt=DT, x0=None, sigma=10.0, rho=28.0, beta=8.0 / 3.0, burn_in=1000):
    """Lorenz-63 trajectory [n_steps, 3] in float64 (RK4), after ``burn_in`` discarded steps
    so that it lies on the attractor. x0 defaults to (1, 1, 1)."""
    x0 = torch.as_tensor((1.0, 1.0, 1.0) if x0 is None else x0, dtype=torch.float64)
    f = lambda x: lorenz_field(x, sigma, rho, beta)                # noqa: E731
    return rk4(f, x0, burn_in + n_steps, dt)[burn_in:]


# ---------------------------------------------------------------- evaluation statistics

def state_space_divergence(x_true, x_gen, *, bins=20, smoothing=1e-4, margin=0.1):
    """D_stsp = KL(p_true || p_gen) between occupancy histograms of two point clouds [N, D].

    Binning: ``bins`` equal bins per dimension over the bounding box of ``x_true``
    widened by ``margin`` of its extent on each side (bins**D cells, 8000 for 3-D).
    Both histograms are normalised by their *total* number of points, so generated
    points outside the box (or not finite) count as lost mass (a divergent model
    scores badly), then smoothed: p = (counts / N + smoothing) / (1 + smoothing * bins**D).
    Identical samples give 0.
    """
    lo, hi = x_true.min(0).values, x_true.max(0).values
    lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)

    def histogram(x):
        scaled = torch.nan_to_num((x - lo) / (hi - lo) * bins, nan=-1.0, posinf=-1.0, neginf=-1.0)
        idx = torch.floor(scaled.clamp(-1, bins)).long()              # (N, D) bin indices
        inside = ((idx >= 0) & (idx < bins)).all(-1) & torch.isfinite(x).all(-1)
        flat = (idx[inside] * bins ** torch.arange(x.shape[-1])).sum(-1)
        counts = torch.bincount(flat, minlength=bins ** x.shape[-1]).double()
        return (counts / x.shape[0] + smoothing) / (1 + smoothing * bins ** x.shape[-1])

    p, q = histogram(x_true.double()), histogram(x_gen.double())
    return float((p * (p / q).log()).sum())


def lyapunov_spectrum(jacobians, dt=1.0):
    """Lyapunov exponents from the Jacobians [T, D, D] of a map along a trajectory.

    QR method: Q_t R_t = J_t Q_{t-1}; lambda_i = mean_t log|R_t[i, i]| / dt, sorted
    descending (per unit time when dt is the time step, per step when dt = 1).
    """
    # numpy: thousands of tiny sequential QRs, where torch's per-call overhead dominates
    jacs = jacobians.detach().double().cpu().numpy()
    q = np.eye(jacs.shape[-1])
    logs = np.zeros(jacs.shape[-1])
    for jac in jacs:
        q, r = np.linalg.qr(jac @ q)
        logs += np.log(np.maximum(np.abs(np.diag(r)), 1e-300))
    return torch.from_numpy(logs / (jacs.shape[0] * dt)).sort(descending=True).values


def max_lyapunov(jacobians, dt=1.0):
    return float(lyapunov_spectrum(jacobians, dt)[0])


def lorenz_step_jacobians(x, dt=DT):
    """Jacobians [T, 3, 3] of the RK4 step map at the states x [T, 3] (true-system reference)."""
    step = lambda s: rk4_step(lorenz_field, s, dt)                 # noqa: E731
    return torch.func.vmap(torch.func.jacrev(step))(x.double())


# ---------------------------------------------------------------- 2. model

class LorenzALRNN(nn.Module):
    """ALRNN with no external input; observation = first ``obs`` latent units.

    ``infer`` gives the data-inferred latent state [x, E x] used at forcing times and
    as the initial state of free runs.
    """

    def __init__(self, obs=3, latent=30, relu_units=15):
        super().__init__()
        self.obs = obs
        self.cell = ALRNN(1, latent, relu_units)
        self.encode = nn.Linear(obs, latent - obs)
        with torch.no_grad():     # start near the identity map: at dt = 0.01 x_{t+1} ~ x_t
            self.cell.A.uniform_(0.9, 1.0)

    def infer(self, x):
        return torch.cat([x, self.encode(x)], dim=-1)

    def forced_windows(self, x0, tau, *, max_iters=10, tol=1e-5):
        """Run tau steps from the data-inferred state of x0 [B, obs] with newton_rnn:
        returns the observed predictions [B, tau, obs] and the Newton info."""
        inputs = x0.new_zeros(x0.shape[0], tau, 1)
        z, info = newton_rnn(self.cell, inputs, self.infer(x0), max_iters=max_iters, tol=tol,
                             return_info=True)
        return z[..., :self.obs], info

    @torch.no_grad()
    def generate(self, x0, n_steps):
        """Free run from the data-inferred state of x0 [obs]: latent states [n_steps, M]."""
        inputs = x0.new_zeros(1, n_steps, 1)
        return sequential_rnn(self.cell, inputs, self.infer(x0)[None])[0]


# ---------------------------------------------------------------- 3. training

def train(model, data, *, steps, tau=30, batch=64, lr=5e-3, max_iters=10, seed=0, log=print):
    """Sparse identity teacher forcing on data [N, obs]: each step draws ``batch`` windows,
    forces the latent state to the data-inferred one at the window start and runs tau steps."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    offsets = torch.arange(1, tau + 1)
    history = []
    for step in range(steps):
        t0 = torch.randint(0, data.shape[0] - tau - 1, (batch,), generator=gen)
        target = data[t0[:, None] + offsets]                          # (B, tau, obs)
        pred, info = model.forced_windows(data[t0], tau, max_iters=max_iters)
        loss = (pred - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item(), "newton_iters": info["iters"],
                        "newton_residual": info["residuals"][-1]})
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.5f}  newton iters {info['iters']} "
                f"residual {info['residuals'][-1]:.2e}")
    return history


# ---------------------------------------------------------------- 4. evaluation

def evaluate(model, truth, *, burn_in=500, lyap_steps=3000):
    """Free run as long as ``truth`` [N, 3] (after ``burn_in`` discarded steps): D_stsp and
    the maximal Lyapunov exponent per time unit; returns (stats, generated [N, 3])."""
    z = model.generate(truth[0].float(), burn_in + truth.shape[0])[burn_in:]   # (N, M)
    gen = z[:, :model.obs].double()
    finite = bool(torch.isfinite(gen).all())
    stats = {"d_stsp": state_space_divergence(truth, gen), "diverged": not finite}
    if finite:
        with torch.no_grad():
            states = z[:lyap_steps]
            jac = model.cell.jacobian(states, states.new_zeros(states.shape[0], 1))   # (L, M, M)
        stats["max_lyapunov"] = max_lyapunov(jac, DT)
    else:
        stats["max_lyapunov"] = None                                 # undefined: the run blew up
    return stats, gen


def plot(truth, gen, baseline, path, titles=("ground truth (RK4)", "trained AL-RNN, free run",
                                             "untrained AL-RNN (baseline)")):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharex=True, sharey=True)
    for ax, name, x in zip(axes, titles, (truth, gen, baseline)):
        x = x.numpy()
        ax.plot(x[:, 0], x[:, 2], lw=0.3)
        ax.set_title(name)
        ax.set_xlabel("x (standardised)")
    axes[0].set_ylabel("z (standardised)")
    lo, hi = truth.min(0).values.numpy(), truth.max(0).values.numpy()
    pad = 0.3 * (hi - lo)
    axes[0].set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    axes[0].set_ylim(lo[2] - pad[2], hi[2] + pad[2])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- 5. command line

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/lorenz")
    p.add_argument("--steps", type=int, default=1200, help="Adam steps")
    p.add_argument("--latent", type=int, default=30)
    p.add_argument("--relu-units", type=int, default=15)
    p.add_argument("--tau", type=int, default=30, help="teacher-forcing interval (steps)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-len", type=int, default=20000)
    p.add_argument("--eval-len", type=int, default=10000)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    raw = lorenz63(args.train_len)
    truth_raw = lorenz63(args.eval_len, x0=(-5.0, 3.0, 20.0))          # a separate trajectory
    mean, std = raw.mean(0), raw.std(0)
    data, truth = ((raw - mean) / std).float(), (truth_raw - mean) / std
    other = (lorenz63(args.eval_len, x0=(3.0, -7.0, 30.0)) - mean) / std  # D_stsp noise floor
    true_lyap = max_lyapunov(lorenz_step_jacobians(truth_raw[:3000]), DT)

    model = LorenzALRNN(3, args.latent, args.relu_units)
    baseline, baseline_gen = evaluate(model, truth)                   # untrained yardstick
    history = train(model, data, steps=args.steps, tau=args.tau, batch=args.batch, lr=args.lr,
                    seed=args.seed)
    trained, gen = evaluate(model, truth)

    plot(truth, gen, baseline_gen, out / "lorenz.png", titles=(
        "ground truth (RK4)", f"trained AL-RNN, free run: D_stsp {trained['d_stsp']:.2f}",
        f"untrained AL-RNN: D_stsp {baseline['d_stsp']:.2f}"
        + (" (diverged)" if baseline["diverged"] else "")))
    stats = {"trained": trained, "untrained_baseline": baseline,
             "ground_truth_max_lyapunov": true_lyap,
             "d_stsp_truth_vs_truth": state_space_divergence(truth, other),
             "final_loss": history[-1]["loss"],
             "newton_iters_last": history[-1]["newton_iters"],
             "newton_residual_max": max(h["newton_residual"] for h in history),
             "newton_residual_last": history[-1]["newton_residual"],
             "config": vars(args), "dt": DT, "wall_s": time.time() - start}
    (out / "lorenz.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps({k: v for k, v in stats.items() if k != "config"}, indent=2))
    return stats


if __name__ == "__main__":
    torch.set_num_threads(1)      # tiny matmuls: extra threads only add contention on a busy CPU
    main()
