"""``linscan eval forecast``: the 2-D SSM against a per-variate SSM and DLinear on multivariate series.

    from linscan.eval.forecast import run_forecast
    results = run_forecast("synthetic", ("ssm2d", "ssm1d", "dlinear"), steps=300, out="runs/forecast")

    linscan eval forecast --data macro --seeds 2 --out runs/macro

Data (:mod:`linscan.data.tasks.forecast`): ``synthetic`` is a coupled AR(1) over a ring of
variates (each reads its neighbour: structure only a cross-variate model can use; ``coupling=0``
makes the variates independent), ``macro`` is statsmodels' US macro data (quarterly, 202 rows,
11 variates). Both are split 70 / 10 / 20 in time and normalised with the train segment's
statistics.

Per model and seed: AdamW, MSE on normalised values, a fixed number of steps of random train
windows (a short linear warmup, then cosine decay), validation MSE every ~10% of the steps; the
weights with the best validation MSE are kept and scored on the test windows. Errors (MSE and
MAE per horizon step) are on the normalised scale, as in the forecasting literature. Two
references need no training: ``zero`` (the train mean) and, on synthetic data, ``oracle``
(the true VAR(1) forecast ``A^h x_L``, the best any model can do in MSE).

Outputs: a printed table, and with ``out``: results.json (config, per-model per-seed
per-horizon errors), forecast.png (test MSE per horizon step) and example.png (one test
window of two variates: history, truth, each model's forecast).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ..data.tasks.forecast import (ForecastData, coupled_ar, coupled_ar_transition, forecast_errors,
                                   load_macrodata, make_forecast_data)
from ..models.forecast import FORECASTERS, build_forecaster
from ..train.optim import make_optimizer, make_scheduler
from .runner import _check_out

DATASETS = {"synthetic": {"lookback": 48, "horizon": 12}, "macro": {"lookback": 8, "horizon": 4}}
SYNTHETIC = {"variates": 8, "length": 4000, "coupling": 0.4, "ar": 0.5}   # coupled_ar options (data_options)
MODELS = ("ssm2d", "ssm1d", "dlinear")
FRACTIONS = (0.7, 0.1, 0.2)
SSM_OPTIONS = {"n_heads": 2, "state_size": 4}   # with d_model and n_layers: the SSM forecasters' sizes
WEIGHT_DECAY = 0.01
CLIP = 1.0
EVALS = 10              # validations per training run
EVAL_BATCH = 256        # windows per forward when scoring
DATA_SEED = 0           # the synthetic series is the same for every model seed

# run_forecast's argument names -> the command's options
OPTIONS = {"data": "--data", "models": "--models", "lookback": "--lookback", "horizon": "--horizon",
           "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "d_model": "--d-model",
           "n_layers": "--layers", "seeds": "--seeds", "threads": "--threads", "out": "--out",
           "variates": "--variates", "length": "--length", "coupling": "--coupling"}


# ---------------------------------------------------------------- checks and data


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _parse_models(models) -> list[str]:
    """``"ssm2d,dlinear"`` or a sequence of names -> a list of known, distinct names."""
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    unknown = [m for m in names if m not in FORECASTERS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"models: expected distinct names from {', '.join(FORECASTERS)}, got {models!r}")
    return names


def _data_options(data: str, options: dict) -> dict:
    """The synthetic series' options completed with defaults and checked; macro takes none."""
    if data == "macro":
        if options:
            name = sorted(options)[0]
            raise ValueError(f"{name}: expected only with synthetic data, got {name}={options[name]!r} "
                             f"with macro data")
        return {}
    unknown = sorted(set(options) - set(SYNTHETIC))
    if unknown:
        raise ValueError(f"{unknown[0]}: expected a synthetic data option ({', '.join(SYNTHETIC)}), "
                         f"got {unknown[0]}={options[unknown[0]]!r}")
    opts = {**SYNTHETIC, **options}
    _positive_int("variates", opts["variates"])
    _positive_int("length", opts["length"])
    coupling, ar = _finite("coupling", opts["coupling"]), _finite("ar", opts["ar"])
    if abs(ar) + abs(coupling) >= 1:
        raise ValueError(f"coupling: expected |ar| + |coupling| < 1 (ar = {ar}) for a stationary series, "
                         f"got {coupling}")
    return opts


def _series(data: str, opts: dict) -> tuple[torch.Tensor, list[str]]:
    """The raw series ``[T, V]`` and variate names."""
    if data == "synthetic":
        series = coupled_ar(opts["length"], opts["variates"], ar=opts["ar"], coupling=opts["coupling"],
                            seed=DATA_SEED)
        return series, [f"x{v}" for v in range(opts["variates"])]
    try:
        return load_macrodata()
    except ImportError as e:
        raise ValueError(f"data: 'macro' needs statsmodels (pip install statsmodels): {e}") from e


def load_data(data: str, *, lookback: int, horizon: int, opts: dict) -> ForecastData:
    """Split and normalised windows of ``data``; a window longer than a segment is a ValueError
    naming lookback."""
    series, names = _series(data, opts)
    n = series.shape[0]
    t1, t2 = round(FRACTIONS[0] * n), round((FRACTIONS[0] + FRACTIONS[1]) * n)
    shortest = min(t1, t2 - t1, n - t2)
    if lookback + horizon > shortest:
        more = "; a longer length gives longer segments" if data == "synthetic" else ""
        raise ValueError(f"lookback: expected lookback + horizon <= {shortest} (the shortest split segment of "
                         f"the {n}-step {data} series{more}), got {lookback} + {horizon}")
    return make_forecast_data(series, lookback=lookback, horizon=horizon, fractions=FRACTIONS, names=names)


# ---------------------------------------------------------------- training and scoring


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``inputs [N, L, V]`` -> forecasts ``[N, Hz, V]``, in eval mode, EVAL_BATCH windows at a time."""
    was_training = model.training
    model.eval()
    pred = torch.cat([model(inputs[i:i + EVAL_BATCH]) for i in range(0, inputs.shape[0], EVAL_BATCH)])
    model.train(was_training)
    return pred


def _mse(model, windows) -> float:
    return forecast_errors(predict(model, windows.inputs), windows.targets)["mse"].mean().item()


def train_one(name: str, data: ForecastData, *, seed: int, steps: int, batch_size: int, lr: float,
              model_options: dict, log=None) -> tuple[torch.nn.Module, dict]:
    """Train forecaster ``name`` on ``data.train``; returns the best-validation model and a record.

    1. weights from ``seed``; AdamW (decay on matrices), warmup over 5% of the steps, cosine decay;
    2. every step: ``batch_size`` train windows drawn at random (generator ``seed``), MSE, clipped step;
    3. every ``steps // EVALS`` steps and at the end: validation MSE; the best weights are kept.
    Record: seed, best_step, best_val_mse, final_train_loss (mean since the last validation),
    train_seconds (the loop, validations included).
    """
    torch.manual_seed(seed)
    model = build_forecaster(name, lookback=data.lookback, horizon=data.horizon,
                             n_variates=data.train.inputs.shape[2], **model_options)
    optimizer = make_optimizer(model, lr=lr, weight_decay=WEIGHT_DECAY)
    scheduler = make_scheduler(optimizer, warmup=steps // 20, total=steps)
    gen = torch.Generator().manual_seed(seed)
    every, n_train = max(1, steps // EVALS), data.train.inputs.shape[0]
    best = {"val": math.inf, "step": 0, "state": None}
    losses, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(n_train, (batch_size,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(data.train.inputs[idx]), data.train.targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            _validate(model, data, best, step)
            final_loss, losses = sum(losses) / len(losses), []
            if log is not None:                              # "*": a new best validation MSE
                print(f"  {name} seed {seed}: step {step}/{steps} train loss {final_loss:.4f} val mse "
                      f"{best['last']:.4f}{' *' if best['step'] == step else ''} {time.perf_counter() - t0:.0f}s",
                      file=log, flush=True)
    seconds = time.perf_counter() - t0
    model.load_state_dict(best["state"])
    return model.eval(), {"seed": seed, "best_step": best["step"], "best_val_mse": best["val"],
                          "final_train_loss": final_loss, "train_seconds": seconds}


def _validate(model, data: ForecastData, best: dict, step: int) -> None:
    """Validation MSE into ``best["last"]``; a new best (or a non-finite first value) keeps the weights."""
    best["last"] = val = _mse(model, data.val)
    if val < best["val"] or best["state"] is None:
        best.update(val=val, step=step, state={k: v.detach().clone() for k, v in model.state_dict().items()})


def references(data: ForecastData, kind: str, opts: dict) -> dict:
    """Test errors of the untrained references: ``zero`` (the train mean) and, on synthetic data,
    ``oracle`` (the true VAR(1) forecast, ``A^h x_L`` in original units, then normalised)."""
    test = data.test
    refs = {"zero": forecast_errors(torch.zeros_like(test.targets), test.targets)}
    if kind == "synthetic":
        a = coupled_ar_transition(opts["variates"], ar=opts["ar"], coupling=opts["coupling"])   # (V, V)
        x = data.denormalise(test.inputs[:, -1]).double()                                     # (N, V)
        steps = []
        for _ in range(data.horizon):
            x = x @ a.T
            steps.append(x)
        refs["oracle"] = forecast_errors(data.normalise(torch.stack(steps, 1).float()), test.targets)
    return {k: {"mse": v["mse"].tolist(), "mae": v["mae"].tolist()} for k, v in refs.items()}


def _summary(runs: list[dict]) -> dict:
    """Means over seeds of the per-horizon errors, their averages, the avg-MSE range and seconds."""
    mse = torch.tensor([r["mse"] for r in runs]).mean(0)                 # (Hz,)
    mae = torch.tensor([r["mae"] for r in runs]).mean(0)
    avg = [sum(r["mse"]) / len(r["mse"]) for r in runs]
    return {"mse": mse.tolist(), "mae": mae.tolist(), "avg_mse": mse.mean().item(), "avg_mae": mae.mean().item(),
            "avg_mse_min": min(avg), "avg_mse_max": max(avg),
            "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs)}


def _example(data: ForecastData) -> dict:
    """The example window: the middle test window, the first two variates (normalised values)."""
    i, variates = data.test.inputs.shape[0] // 2, list(range(min(2, data.test.inputs.shape[2])))
    return {"window": i, "start": int(data.test.start[i]), "variates": variates,
            "names": [data.names[v] for v in variates] if data.names else [str(v) for v in variates],
            "history": data.test.inputs[i][:, variates].T.tolist(),       # (2, L)
            "truth": data.test.targets[i][:, variates].T.tolist(), "pred": {}}   # (2, Hz)


# ---------------------------------------------------------------- the comparison


def _prepare(data, models, *, lookback, horizon, steps, batch_size, lr, d_model, n_layers, seeds, threads,
             out, data_options) -> tuple[ForecastData, list[str], dict, dict]:
    """Every argument checked before any training (ValueError naming it); returns the data, model
    names, the data options as used and the config."""
    if data not in DATASETS:
        raise ValueError(f"data: expected one of {', '.join(DATASETS)}, got {data!r}")
    names = _parse_models(models)
    lookback = DATASETS[data]["lookback"] if lookback is None else lookback
    horizon = DATASETS[data]["horizon"] if horizon is None else horizon
    config = {name: _positive_int(name, value) for name, value in (
        ("lookback", lookback), ("horizon", horizon), ("steps", steps), ("batch_size", batch_size),
        ("d_model", d_model), ("n_layers", n_layers), ("seeds", seeds), ("threads", threads))}
    if _finite("lr", lr) <= 0:
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    opts = _data_options(data, data_options)
    fdata = load_data(data, lookback=lookback, horizon=horizon, opts=opts)
    model_options = {"d_model": d_model, "n_layers": n_layers, **SSM_OPTIONS}
    for name in names:                                       # widths a model refuses fail here
        build_forecaster(name, lookback=lookback, horizon=horizon, n_variates=fdata.train.inputs.shape[2],
                         **_options(name, model_options))
    if out is not None:
        _check_out(out)
    config |= {"lr": float(lr), "model_options": model_options, "weight_decay": WEIGHT_DECAY, "clip": CLIP,
               "eval_every": max(1, steps // EVALS), "fractions": list(FRACTIONS),
               "n_variates": fdata.train.inputs.shape[2], "names": fdata.names,
               "windows": {s: getattr(fdata, s).inputs.shape[0] for s in ("train", "val", "test")},
               "scale": "normalised by the train segment's per-variate mean and std"}
    return fdata, names, opts, config


def _options(name: str, model_options: dict) -> dict:
    """The SSM options for the SSM forecasters, none for DLinear."""
    return {} if name == "dlinear" else model_options


def run_forecast(data: str = "synthetic", models=MODELS, *, lookback: int | None = None,
                 horizon: int | None = None, steps: int = 300, batch_size: int = 32, lr: float = 1e-2,
                 d_model: int = 16, n_layers: int = 2, seeds: int = 1, threads: int = 2, out=None,
                 log=sys.stderr, **data_options) -> dict:
    """Train and test every model of ``models`` on ``data``; returns the results as plain data.

    data: ``"synthetic"`` (coupled AR; ``data_options`` variates, length, coupling, ar) or ``"macro"``.
    models: names of :data:`linscan.models.forecast.FORECASTERS` (a sequence or ``"a,b"``).
    lookback / horizon: None = the data's default (synthetic 48 / 12, macro 8 / 4).
    d_model, n_layers: the SSM forecasters' size (DLinear has none). seeds: runs 0..seeds-1 per model.
    threads: torch threads while running (restored after). out: folder for results.json,
    forecast.png and example.png (created first, rewritten after every model), or None.
    log: stream for progress lines, or None. Every argument is checked before any training:
    ValueError naming it.
    Returns {"data", "data_options", "config", "references", "models": {name: {"parameters", "runs":
    [{seed, mse [Hz], mae [Hz], best_step, ...}], "summary"}}, "example", "wall_seconds"}.
    """
    fdata, names, opts, config = _prepare(data, models, lookback=lookback, horizon=horizon, steps=steps,
                                          batch_size=batch_size, lr=lr, d_model=d_model, n_layers=n_layers,
                                          seeds=seeds, threads=threads, out=out, data_options=data_options)
    results = {"data": data, "data_options": opts, "config": config,
               "references": references(fdata, data, opts), "models": {}, "example": _example(fdata)}
    previous, t0 = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(threads)
    try:
        for name in names:
            results["models"][name] = _run_model(name, fdata, config, results["example"], log)
            results["wall_seconds"] = time.perf_counter() - t0
            if out is not None:
                write_outputs(results, out)
    finally:
        torch.set_num_threads(previous)
    return results


def _run_model(name: str, fdata: ForecastData, config: dict, example: dict, log) -> dict:
    """Every seed of one model: train, score on test; seed 0's forecast goes into ``example``."""
    runs = []
    for seed in range(config["seeds"]):
        if log is not None:
            print(f"{name} seed {seed}: training {config['steps']} steps", file=log, flush=True)
        model, record = train_one(name, fdata, seed=seed, steps=config["steps"], batch_size=config["batch_size"],
                                  lr=config["lr"], model_options=_options(name, config["model_options"]), log=log)
        pred = predict(model, fdata.test.inputs)                             # (N, Hz, V)
        errors = forecast_errors(pred, fdata.test.targets)
        runs.append(record | {"mse": errors["mse"].tolist(), "mae": errors["mae"].tolist()})
        if seed == 0:
            example["pred"][name] = pred[example["window"]][:, example["variates"]].T.tolist()
        if log is not None:
            print(f"{name} seed {seed}: test mse {errors['mse'].mean():.4f} mae {errors['mae'].mean():.4f} "
                  f"(best val at step {record['best_step']})", file=log, flush=True)
    return {"parameters": sum(p.numel() for p in model.parameters()), "runs": runs, "summary": _summary(runs)}


# ---------------------------------------------------------------- report


def format_table(results: dict) -> str:
    """Rows models (then the references), columns avg MSE, avg MAE, MSE at h=1 and h=Hz, params, train s."""
    seeds, hz = results["config"]["seeds"], results["config"]["horizon"]
    lines = [f"forecast on {results['data']} data: test errors on the normalised scale, mean over {seeds} seed(s)"
             + (" (avg MSE [min-max] over seeds)" if seeds > 1 else ""),
             f"{'model':<8} {'avg MSE':>{20 if seeds > 1 else 8}} {'avg MAE':>8} {'MSE h=1':>8} "
             f"{f'MSE h={hz}':>8} {'params':>8} {'train s':>8}"]
    for name, entry in results["models"].items():
        s = entry["summary"]
        avg = f"{s['avg_mse']:.4f}" + (f" [{s['avg_mse_min']:.3f}-{s['avg_mse_max']:.3f}]" if seeds > 1 else "")
        lines.append(f"{name:<8} {avg:>{20 if seeds > 1 else 8}} {s['avg_mae']:>8.4f} {s['mse'][0]:>8.4f} "
                     f"{s['mse'][-1]:>8.4f} {entry['parameters']:>8} {s['train_seconds']:>8.0f}")
    for name, ref in results["references"].items():
        avg_mse, avg_mae = sum(ref["mse"]) / hz, sum(ref["mae"]) / hz
        lines.append(f"{name:<8} {avg_mse:>{20 if seeds > 1 else 8}.4f} {avg_mae:>8.4f} {ref['mse'][0]:>8.4f} "
                     f"{ref['mse'][-1]:>8.4f} {'-':>8} {'-':>8}  (reference)")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_horizon(results: dict, path) -> bool:
    """Test MSE against horizon step, one line per model (references dashed); False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    hs = list(range(1, results["config"]["horizon"] + 1))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, entry in results["models"].items():
        ax.plot(hs, entry["summary"]["mse"], "o-", label=name)
    for name, ref in results["references"].items():
        ax.plot(hs, ref["mse"], "--", color="grey" if name == "zero" else "black", label=f"{name} (reference)")
    ax.set_xticks(hs[::max(1, len(hs) // 12)])
    ax.set_xlabel("horizon step h")
    ax.set_ylabel("test MSE (normalised)")
    ax.set_title(f"forecast on {results['data']} data (mean over {results['config']['seeds']} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_example(results: dict, path) -> bool:
    """One test window, one panel per variate: history, truth and each model's forecast (seed 0)."""
    plt = _pyplot()
    if plt is None:
        return False
    ex = results["example"]
    fig, axes = plt.subplots(len(ex["variates"]), 1, figsize=(8, 2.8 * len(ex["variates"])), squeeze=False)
    for row, (ax, label) in enumerate(zip(axes[:, 0], ex["names"])):
        L, hz = len(ex["history"][row]), len(ex["truth"][row])
        future = list(range(L, L + hz))
        ax.plot(range(L), ex["history"][row], color="black", label="history")
        ax.plot(future, ex["truth"][row], "o-", color="black", alpha=0.5, label="truth")
        for name, pred in ex["pred"].items():
            ax.plot(future, pred[row], ".-", label=name)
        ax.axvline(L - 0.5, color="grey", lw=0.8)
        ax.set_ylabel(f"{label} (normalised)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(f"{results['data']}: test window {ex['window']} (series step {ex['start']})")
    axes[0, 0].legend(fontsize=8, ncol=3)
    axes[-1, 0].set_xlabel("step in window")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_outputs(results: dict, out) -> None:
    """``out/results.json``, ``out/forecast.png`` and ``out/example.png`` (the folder is created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "results.json")
    plot_horizon(results, out / "forecast.png")
    plot_example(results, out / "example.png")


# ---------------------------------------------------------------- command


def _finite_float(text: str) -> float:
    """A finite number (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``linscan eval forecast``."""
    from ..cli import positive_float, positive_int

    p.epilog = (f"Models: {', '.join(FORECASTERS)}. Errors are on the normalised scale (train mean and std). "
                "Defaults: synthetic lookback 48, horizon 12; macro lookback 8, horizon 4.")
    p.add_argument("--data", choices=list(DATASETS), default="synthetic", help="series (default synthetic)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    p.add_argument("--lookback", type=positive_int, default=None, help="input steps L (default: the data's)")
    p.add_argument("--horizon", type=positive_int, default=None, help="forecast steps Hz (default: the data's)")
    p.add_argument("--steps", type=positive_int, default=300, help="training steps per model (default 300)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=1e-2, help="peak AdamW learning rate (default 1e-2)")
    p.add_argument("--d-model", type=positive_int, default=16, help="SSM forecasters' width (default 16)")
    p.add_argument("--layers", type=positive_int, default=2, help="SSM forecasters' depth (default 2)")
    p.add_argument("--seeds", type=positive_int, default=1, help="runs per model (seeds 0..S-1, default 1)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default=None, metavar="DIR", help="write results.json, forecast.png, example.png")
    synthetic = p.add_argument_group("synthetic data (coupled AR(1) on a ring of variates)")
    synthetic.add_argument("--variates", type=positive_int, default=None, help=f"V (default {SYNTHETIC['variates']})")
    synthetic.add_argument("--length", type=positive_int, default=None,
                           help=f"series steps (default {SYNTHETIC['length']})")
    synthetic.add_argument("--coupling", type=_finite_float, default=None,
                           help=f"neighbour weight (default {SYNTHETIC['coupling']}; 0: independent variates)")


def run(args) -> int:
    """Run the comparison for parsed ``args``; print the table. Bad values: CliError (exit status 1)."""
    from ..cli import option_error

    data_options = {k: getattr(args, k) for k in ("variates", "length", "coupling") if getattr(args, k) is not None}
    try:
        results = run_forecast(args.data, args.models, lookback=args.lookback, horizon=args.horizon,
                               steps=args.steps, batch_size=args.batch_size, lr=args.lr, d_model=args.d_model,
                               n_layers=args.layers, seeds=args.seeds, threads=args.threads, out=args.out,
                               log=sys.stderr, **data_options)
    except ValueError as e:
        raise option_error(e, OPTIONS) from e
    print(format_table(results))
    print(f"\nwall time {results['wall_seconds']:.0f} s"
          + (f"; wrote {args.out}/results.json, forecast.png, example.png" if args.out else ""))
    return 0
