"""AL-RNN reconstruction of the Lorenz-63 attractor, trained through ``newton_rnn``.

    python -m linscan.pararnn.lorenz [--out runs/lorenz] [--steps 1200]
        [--pwl-units 0,1,2,3,4] [--sweep-steps N]          # ~3 min on an idle CPU core, see 5.

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
5. PWL sweep  the point of the AL-RNN: a parsimonious piecewise-linear model. One model per
              number of PWL (ReLU) units P in ``--pwl-units`` (same latent size M, same
              training recipe and budget for every P), each scored by D_stsp, the maximal
              Lyapunov exponent and the number of linear subregions (sign patterns of the P
              units, ``symbolic.subregion_ids``) its free run visits out of 2^P; table
              printed and stored in lorenz.json ("pwl_sweep"). Budget: each sweep model
              gets ``--sweep-steps`` Adam steps, by default a quarter of ``--steps`` (300
              for the default 1200) so that five models cost about as much as the main
              model; ``--sweep-steps 1200`` (or more) gives each the full budget,
              ``--pwl-units ""`` skips the sweep.
6. output     lorenz.png (attractors side by side, x-z projection), lorenz_pwl.png (per P
              of the sweep: the attractor coloured by subregion next to the symbolic
              transition graph) and lorenz.json

What the paper reports (Brenner, Hemmer, Monfared, Durstewitz, "Almost-Linear RNNs Yield
Highly Interpretable Symbolic Codes in Dynamical Systems Reconstruction", NeurIPS 2024,
arXiv 2410.14240). Its abstract: "for the Lorenz and Rössler systems, AL-RNNs discover, in a
purely data-driven way, the known topologically minimal PWL representations". The counts
(``PAPER_MINIMAL``): Lorenz-63 P = 2 PWL units, of whose 4 subregions the minimal model
uses 3; Rössler P = 1 PWL unit, 2 subregions. Provenance: of the paper itself only the
opening (abstract, start of the introduction) of arxiv.org/html/2410.14240v1 could be read
here, and it gives no counts. The counts come from (a) the authors' code,
github.com/DurstewitzLab/ALRNN-DSR, settings/lorenz63.json ("pwl_units": 2, "latent_dim":
20) and settings/rossler.json ("pwl_units": 1, "latent_dim": 20), and (b) third-party
summaries of the paper's figures: Fig. 3, DSR quality jumps at P = 1 for Rössler and at
P = 2 for Lorenz-63 (an appendix figure: P = 1 insufficient, P = 2 sufficient for
Lorenz-63); Fig. 5, the topologically minimal models use 2 (Rössler) and 3 (Lorenz-63)
subregions. Check them against the paper's text before quoting them further.
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
from .symbolic import (plot_attractor_by_region, plot_transition_graph, subregion_ids,
                       transition_graph)

__all__ = ["lorenz_field", "rk4_step", "rk4", "lorenz63", "state_space_divergence",
           "lyapunov_spectrum", "max_lyapunov", "lorenz_step_jacobians", "LorenzALRNN", "train",
           "free_run", "run_statistics", "evaluate", "pwl_sweep", "format_sweep_table", "main"]

DT = 0.01

# topologically minimal PWL representations reported for the AL-RNN paper; provenance in the
# module docstring (authors' configs + secondary summaries, not the paper's body text)
PAPER_MINIMAL = {
    "lorenz63": {"pwl_units": 2, "subregions_visited": 3},
    "roessler": {"pwl_units": 1, "subregions_visited": 2},
    "source": "Brenner et al., NeurIPS 2024, arXiv 2410.14240 (Figs. 3 and 5 as summarised by "
              "third parties; P also in github.com/DurstewitzLab/ALRNN-DSR settings/"
              "lorenz63.json and rossler.json); the body text was not checked",
}


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

def free_run(model, truth, *, burn_in=500):
    """Latent free run [N, M] from the inferred state of truth[0], as long as ``truth`` [N, 3],
    after ``burn_in`` discarded steps (so that it lies on the model's attractor)."""
    return model.generate(truth[0].float(), burn_in + truth.shape[0])[burn_in:]


def run_statistics(model, truth, z, *, lyap_steps=3000):
    """D_stsp of the free run z [N, M] against ``truth``, the maximal Lyapunov exponent per
    time unit (first ``lyap_steps`` states) and the linear subregions the run visits (its
    finite states only: a diverged run counts what it visited before blowing up)."""
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
    relu_units = model.cell.relu_units          # NaN states would read as "all units off"
    ids = subregion_ids(z[torch.isfinite(z).all(-1)], relu_units)
    stats["subregions_visited"] = int(ids.unique().numel())
    stats["subregions_possible"] = 2 ** relu_units
    return stats


def evaluate(model, truth, *, burn_in=500, lyap_steps=3000):
    """Free run as long as ``truth`` [N, 3] (after ``burn_in`` discarded steps): D_stsp,
    the maximal Lyapunov exponent per time unit and the visited subregions (see
    ``run_statistics``); returns (stats, generated [N, 3])."""
    z = free_run(model, truth, burn_in=burn_in)                       # (N, M)
    return run_statistics(model, truth, z, lyap_steps=lyap_steps), z[:, :model.obs].double()


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


# ---------------------------------------------------------------- 5. PWL sweep

def pwl_sweep(data, truth, pwl_units, *, latent, steps, tau=30, batch=64, lr=5e-3, seed=0,
              log=print):
    """Train one ``LorenzALRNN(3, latent, P)`` per P in ``pwl_units`` with the same recipe
    and budget (``steps`` Adam steps, same seed) and score its free run.

    Returns (rows, runs): per P a JSON-ready dict (``run_statistics`` + final loss + the
    transition graph) and (generated [N, 3], subregion ids [N'], TransitionGraph) to plot,
    ids and graph over the finite states (N' = N unless the run diverged).
    """
    rows, runs = [], []
    for p in pwl_units:
        torch.manual_seed(seed)
        model = LorenzALRNN(3, latent, p)
        history = train(model, data, steps=steps, tau=tau, batch=batch, lr=lr, seed=seed,
                        log=lambda msg, p=p: log(f"[P={p}] {msg}"))
        z = free_run(model, truth)                                     # (N, M)
        ids = subregion_ids(z[torch.isfinite(z).all(-1)], p)
        graph = transition_graph(ids, p)
        rows.append({"pwl_units": p, **run_statistics(model, truth, z),
                     "final_loss": history[-1]["loss"], "transitions": graph.to_dict()})
        runs.append((z[:, :3].double(), ids, graph))
    return rows, runs


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_sweep_table(rows, *, truth_lyapunov=None, floor=None):
    """The sweep as a text table, with the yardsticks and the paper's minimal counts below."""
    lines = [f"{'P':>2}  {'subregions':>10}  {'D_stsp':>7}  {'lambda_max':>10}  {'loss':>8}",
             "-" * 45]
    for r in rows:
        visited = f"{r['subregions_visited']}/{r['subregions_possible']}"
        lines.append(f"{r['pwl_units']:>2}  {visited:>10}  {r['d_stsp']:>7.3f}  "
                     f"{_fmt(r['max_lyapunov'], '.3f'):>10}  {r['final_loss']:>8.5f}"
                     + ("  (diverged)" if r["diverged"] else ""))
    lines.append(f"ground truth: lambda_max {_fmt(truth_lyapunov, '.3f')} per time unit, "
                 f"D_stsp floor (truth vs truth) {_fmt(floor, '.3f')}")
    lorenz, roessler = PAPER_MINIMAL["lorenz63"], PAPER_MINIMAL["roessler"]
    lines.append(f"paper (topologically minimal AL-RNNs): Lorenz-63 P = {lorenz['pwl_units']} "
                 f"({lorenz['subregions_visited']} of {2 ** lorenz['pwl_units']} subregions "
                 f"used), Roessler P = {roessler['pwl_units']} "
                 f"({roessler['subregions_visited']} subregions)")
    lines.append(f"  source: {PAPER_MINIMAL['source']}")
    return "\n".join(lines)


def plot_sweep(rows, runs, truth, path):
    """lorenz_pwl.png: one row per P, the x-z projection coloured by subregion (axes fixed to
    the ground truth's box, so a run that wanders off shows as such) and the transition
    graph of the symbolic sequence."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = truth.min(0).values.numpy(), truth.max(0).values.numpy()
    pad = 0.3 * (hi - lo)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 4.4 * len(rows)), squeeze=False)
    for (ax_x, ax_g), row, (gen, ids, graph) in zip(axes, rows, runs):
        p, ok = row["pwl_units"], not row["diverged"]
        head = (f"P = {p}: {row['subregions_visited']}/{2 ** p} subregions, "
                f"D_stsp {row['d_stsp']:.2f}" + ("" if ok else " (diverged)"))
        if ok:
            plot_attractor_by_region(gen, ids, p, ax=ax_x, title=head,
                                     axis_names=("x (standardised)", "", "z (standardised)"))
            plot_transition_graph(graph, ax=ax_g, title=f"P = {p}: transitions between subregions")
        else:
            ax_x.set_title(head)
            ax_g.axis("off")
        ax_x.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax_x.set_ylim(lo[2] - pad[2], hi[2] + pad[2])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- 6. command line and output

def _pwl_units(text):
    """"0,1,2" -> [0, 1, 2]; "" or "none" -> [] (no sweep)."""
    text = text.strip().lower()
    return [] if text in ("", "none") else [int(p) for p in text.split(",")]


def _parser():
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
    p.add_argument("--pwl-units", type=_pwl_units, default="0,1,2,3,4",
                   help='PWL-unit counts P of the sweep, comma-separated ("" skips it)')
    p.add_argument("--sweep-steps", type=int, default=None,
                   help="Adam steps per sweep model (default: --steps // 4)")
    return p


def _sweep(args, data, truth, yardsticks, out):
    """Section 5: train, tabulate and plot the PWL sweep; returns its JSON entry."""
    steps = args.sweep_steps if args.sweep_steps is not None else max(1, args.steps // 4)
    rows, runs = pwl_sweep(data, truth, args.pwl_units, latent=args.latent, steps=steps,
                           tau=args.tau, batch=args.batch, lr=args.lr, seed=args.seed)
    plot_sweep(rows, runs, truth, out / "lorenz_pwl.png")
    print(f"PWL sweep: latent M = {args.latent}, {steps} Adam steps per model"
          + (f" (reduced from --steps {args.steps}; --sweep-steps for more)"
             if steps < args.steps else ""))
    print(format_sweep_table(rows, **yardsticks))
    return {"latent": args.latent, "steps_per_model": steps, "rows": rows,
            "paper_minimal": PAPER_MINIMAL}


def main(argv=None):
    args = _parser().parse_args(argv)
    torch.manual_seed(args.seed)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    raw = lorenz63(args.train_len)
    truth_raw = lorenz63(args.eval_len, x0=(-5.0, 3.0, 20.0))          # a separate trajectory
    mean, std = raw.mean(0), raw.std(0)
    data, truth = ((raw - mean) / std).float(), (truth_raw - mean) / std
    other = (lorenz63(args.eval_len, x0=(3.0, -7.0, 30.0)) - mean) / std  # D_stsp noise floor
    yardsticks = {"truth_lyapunov": max_lyapunov(lorenz_step_jacobians(truth_raw[:3000]), DT),
                  "floor": state_space_divergence(truth, other)}

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
             "ground_truth_max_lyapunov": yardsticks["truth_lyapunov"],
             "d_stsp_truth_vs_truth": yardsticks["floor"],
             "final_loss": history[-1]["loss"],
             "newton_iters_last": history[-1]["newton_iters"],
             "newton_residual_max": max(h["newton_residual"] for h in history),
             "newton_residual_last": history[-1]["newton_residual"]}
    print(json.dumps(stats, indent=2))
    if args.pwl_units:
        stats["pwl_sweep"] = _sweep(args, data, truth, yardsticks, out)
    stats.update(config=vars(args), dt=DT, wall_s=time.time() - start)
    (out / "lorenz.json").write_text(json.dumps(stats, indent=2))
    print(f"wall time {stats['wall_s']:.0f} s; wrote {out / 'lorenz.json'}")
    return stats


if __name__ == "__main__":
    torch.set_num_threads(1)      # tiny matmuls: extra threads only add contention on a busy CPU
    main()
