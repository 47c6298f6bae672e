"""Real Ctrl-C at random moments, then resume: every logged loss equals the uninterrupted run's.

A worker process trains a micro model on 1 thread: first an uninterrupted reference run,
then runs that this test interrupts with real SIGINTs (some pairs in quick succession) at
random times after each attempt starts; after an interrupt the worker resumes in the same
process until the run is complete. One run's worker exits after the interrupt and a fresh
process resumes it. Every metrics row (bit for bit) and the final weights must equal the
reference's (as must a second uninterrupted run, whose time, once warm, scales the signal times).
"""

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from safetensors.torch import load_file

from .corpus import write_corpus

STEPS = 30

WORKER = r"""
import signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
# imported lazily by the first optimiser and plot: a SIGINT inside an import leaves a half-imported
# module that breaks the next attempt in this process, which a real fresh process would not see
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import torch._dynamo
from linscan.models.config import PRESETS
from linscan.train import TrainArgs, checkpoint, train

PRESETS["micro"] = dict(d_model=32, n_layers=2, n_heads=2, pattern="DA", mlp_ratio=2.0)
data, root, steps, names, exit_after = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
busy = False


def outside_train(signum, frame):
    # a SIGINT between attempts is ignored; inside one it raises once, as Python's default would
    global busy
    if busy:
        busy = False
        raise KeyboardInterrupt


def finished(out):
    return (out / "latest").is_file() and (out / "latest").read_text() == f"step-{steps:06d}"


def attempt(out, resume):
    global busy
    args = TrainArgs(preset="micro", data=data, steps=steps, batch_size=2, seq_len=16, eval_every=5,
                     eval_batches=1, ckpt_every=4, warmup=3, out=str(out), resume=resume, progress=False)
    try:
        try:
            busy = True
            train(args)
        finally:
            busy = False
    except KeyboardInterrupt:
        return False
    return True


signal.signal(signal.SIGINT, outside_train)
for name in names.split(","):
    out, n = root / name, 0
    while not finished(out):
        print(f"start {name} {n}", flush=True)
        t0 = time.perf_counter()
        completed = attempt(out, resume=out.exists())
        print(f"ended {name} {n} {time.perf_counter() - t0:.3f}", flush=True)
        n += 1
        if not completed and name == exit_after:
            sys.exit(0)
"""

# Signals per attempt of each run: "single", "pair" (two in quick succession), or "early" (a
# single one in the first half, so that it surely comes before the attempt ends). Attempts
# past the end of a plan get none, so every run completes.
PLANS = {"one": ["single", "single"], "two": ["pair"], "mixed": ["pair", "single", "pair"], "fresh": ["early"]}


def signal_times(kind, rng, duration):
    """Offsets (s) from an attempt's start: anywhere in it, set-up and checkpoint writes included."""
    t = rng.uniform(0.02, 0.5 if kind == "early" else 0.8) * duration
    return [t, t + rng.uniform(0.0, 0.03)] if kind == "pair" else [t]


def drive(cmd, plans, rng, duration, timeout, log):
    """Run a worker, sending each attempt's SIGINTs on time; returns its stderr. Fails on a hang or an error."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    lines, stderr = queue.Queue(), []
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put(None)], daemon=True).start()
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        line = lines.get(timeout=timeout)
        while line is not None:
            log.append(line.strip())
            kind, name, n, *rest = line.split()
            if kind == "ended" and name == "warm":
                duration[0] = float(rest[0])
            pending = []
            if kind == "start" and int(n) < len(plans.get(name, [])):
                start = time.monotonic()
                pending = [start + t for t in signal_times(plans[name][int(n)], rng, duration[0])]
                log.append(f"  SIGINT at +{[round(p - start, 3) for p in pending]} s")
            line = next_line(lines, pending, proc.pid, deadline)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (queue.Empty, subprocess.TimeoutExpired):
        proc.kill()
        pytest.fail(f"worker hung; log: {log}")
    reader.join(timeout=10)
    err = "".join(stderr)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}); log {log}\n{err[-3000:]}"
    return err


def next_line(lines, pending, pid, deadline):
    """The worker's next line, sending the pending SIGINTs on time while the attempt still runs."""
    for when in pending:
        try:
            return lines.get(timeout=max(0.0, when - time.monotonic()))
        except queue.Empty:
            os.kill(pid, signal.SIGINT)
    return lines.get(timeout=max(0.0, deadline - time.monotonic()))


@pytest.mark.slow
def test_real_sigints_at_random_moments_then_resume_equal_the_uninterrupted_run(tmp_path):
    text = write_corpus(tmp_path / "corpus.txt")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    seed = random.randrange(2**32)
    rng, log, duration = random.Random(seed), [f"seed {seed}"], [2.0]
    worker = [sys.executable, str(script), str(text), str(tmp_path), str(STEPS)]
    # one process: the reference, a second uninterrupted run to time the signals by (once warm), then
    # every plan; it exits after "fresh" is interrupted
    stderr = drive([*worker, ",".join(["reference", "warm", *PLANS]), "fresh"], PLANS, rng, duration, 240, log)
    latest = tmp_path / "fresh" / "latest"
    assert not latest.exists() or latest.read_text() != f"step-{STEPS:06d}", f"fresh finished early; log {log}"
    stderr += drive([*worker, "fresh", ""], {"fresh": ["single"]}, rng, duration, 120, log)   # a new process

    reference = (tmp_path / "reference" / "metrics.jsonl").read_text()
    assert len(reference.splitlines()) == STEPS
    ref_weights = load_file(str(tmp_path / "reference" / f"step-{STEPS:06d}" / "model.safetensors"))
    for name in ["warm", *PLANS]:
        run = tmp_path / name
        assert (run / "metrics.jsonl").read_text() == reference, f"{name}: the logged losses differ; log {log}"
        weights = load_file(str(run / f"step-{STEPS:06d}" / "model.safetensors"))
        assert all((weights[k] == ref_weights[k]).all() for k in ref_weights), f"{name}: weights differ"
    assert "interrupted: saved" in stderr, f"no SIGINT reached the training loop; log {log}"
