"""``linscan bench liger``: how much of a pretrained transformer's quality Liger keeps (CPU reproduction).

1. Pretrain a pure-attention byte LM (the ``tiny`` preset with pattern "A") on the corpus for
   ``teacher_steps`` steps of ``batch_size x seq_len`` bytes (``linscan train``'s loop).
2. Convert it (:func:`linscan.convert.liger`, no new parameters) to each variant, score it, then
   fine-tune LoRA (rank 8 on q, k, v, no warmup; lr 1e-2: Liger's 1e-3 is for thousands of steps) on ``fraction`` of the
   pretraining bytes, merged afterwards; score again.
3. Train each variant's architecture from scratch (all parameters, fresh initialisation, lr 3e-3)
   on the same bytes as its fine-tune.

Scores are validation bits per byte on fixed windows; recovery = (unigram - student) /
(unigram - teacher). The paper keeps ~93% of its teacher's average benchmark score (MATH.md 9).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

# name -> options of linscan.convert.liger
VARIANTS = {
    "liger_gla": {"recurrence": "gla", "window": None},
    "liger_gdn": {"recurrence": "gated_deltanet", "window": None},
    "liger_attention": {"recurrence": "gla", "window": 64},
}


def run(out: str, *, teacher_steps: int = 1500, fraction: float = 0.02, batch_size: int = 16, seq_len: int = 128,
        finetune_batch_size: int = 4, finetune_lr: float = 1e-2, variants: tuple[str, ...] = tuple(VARIANTS), seed: int = 0,
        progress: bool = True, data: str | None = None) -> dict:
    """Run the comparison in ``out`` (run folders, results.json, recovery.png); returns the results.

    The fine-tunes and the from-scratch runs see ``fraction * teacher_steps * batch_size *
    seq_len`` bytes each, in batches of ``finetune_batch_size`` (more updates for the same bytes).
    """
    from ..convert import liger
    from ..convert.recipe import linearize_model, recovery, validation_bpb
    from ..data import load_corpus, unigram_entropy_bits
    from ..models import LinscanForCausalLM
    from ..train import checkpoint
    from ..train.loop import TrainArgs, train

    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; expected from {sorted(VARIANTS)}")
    out = Path(out)
    taken = [name for name in variants if (out / name).exists()]
    if taken:
        raise ValueError(f"out: {out} already holds results for {taken}; choose another --out (a finished "
                         "teacher in OUT/teacher is reused, the variants' folders are not)")
    corpus = load_corpus(data)
    unigram = unigram_entropy_bits(corpus.val)
    base = TrainArgs(preset="tiny", pattern="A", data=data, steps=teacher_steps, batch_size=batch_size,
                     seq_len=seq_len, eval_every=max(1, teacher_steps // 5), ckpt_every=teacher_steps,
                     out=str(out / "teacher"), resume=True, seed=seed, progress=progress)
    log(f"1. teacher: pure attention, {teacher_steps} steps of {batch_size} x {seq_len} bytes")
    finished = checkpoint.latest(out / "teacher")
    if finished is not None and checkpoint.load_trainer_state(finished)["step"] == teacher_steps:
        log(f"   reusing the finished teacher {finished}")
        teacher = checkpoint.load_model(finished)
    else:
        teacher = train(base)["model"].eval()
    teacher_bpb = validation_bpb(teacher, corpus, base)
    tokens = round(fraction * teacher_steps * batch_size * seq_len)
    steps = max(1, round(tokens / (finetune_batch_size * seq_len)))
    short = replace(base, steps=steps, batch_size=finetune_batch_size, eval_every=steps, ckpt_every=steps, warmup=0,
                    resume=False)
    rows = []
    for name in variants:
        options = VARIANTS[name]
        log(f"2. {name}: convert, LoRA fine-tune {steps} steps of {finetune_batch_size} x {seq_len} bytes")
        report = linearize_model(teacher, replace(short, lr=finetune_lr, weight_decay=0.0, out=str(out / name / "finetune")),
                                 out=out / name, eval_args=base, **options)   # scored on the teacher's windows
        log(f"3. {name}: from scratch on the same bytes")
        fresh = LinscanForCausalLM(liger(teacher, **options).config)   # the same architecture, new weights
        scratch = train(replace(short, lr=3e-3, warmup=max(1, steps // 10), out=str(out / name / "scratch")),
                        model=fresh)["model"].eval()
        converted_bpb, finetuned_bpb = report["converted_val_bpb"], report["finetuned_val_bpb"]
        scratch_bpb = validation_bpb(scratch, corpus, base)
        rows.append({"variant": name, **options, "converted_bpb": converted_bpb, "finetuned_bpb": finetuned_bpb,
                     "scratch_bpb": scratch_bpb, "recovery_converted": recovery(unigram, teacher_bpb, converted_bpb),
                     "recovery": recovery(unigram, teacher_bpb, finetuned_bpb),
                     "recovery_scratch": recovery(unigram, teacher_bpb, scratch_bpb),
                     "lora_parameters": report["lora_parameters"], "parameters": report["parameters"]})
    results = {"teacher_steps": teacher_steps, "finetune_lr": finetune_lr, "batch_size": batch_size, "seq_len": seq_len,
               "teacher_tokens": teacher_steps * batch_size * seq_len, "finetune_tokens": steps * finetune_batch_size * seq_len,
               "finetune_steps": steps, "finetune_batch_size": finetune_batch_size, "unigram_bpb": unigram,
               "teacher_bpb": teacher_bpb, "teacher_parameters": teacher.num_parameters(), "rows": rows}
    print(format_table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "recovery.png")
    return results


def log(text: str) -> None:
    print(f"bench liger: {text}", file=sys.stderr, flush=True)


def format_table(results: dict) -> str:
    lines = [f"teacher (attention, {results['teacher_tokens']:,} bytes): {results['teacher_bpb']:.3f} bits per byte; "
             f"unigram {results['unigram_bpb']:.3f}; fine-tune and scratch: {results['finetune_tokens']:,} bytes",
             f"{'variant':<16} {'converted':>10} {'LoRA-tuned':>11} {'recovery':>9} {'scratch':>8} {'recovery':>9}"]
    for r in results["rows"]:
        lines.append(f"{r['variant']:<16} {r['converted_bpb']:>10.3f} {r['finetuned_bpb']:>11.3f} "
                     f"{r['recovery']:>9.1%} {r['scratch_bpb']:>8.3f} {r['recovery_scratch']:>9.1%}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Bars of recovery per variant: converted, LoRA-tuned, from scratch (PNG via Pillow)."""
    from PIL import Image, ImageDraw

    rows, series = results["rows"], (("recovery_converted", (150, 150, 150), "converted"),
                                     ("recovery", (40, 110, 200), "LoRA-tuned"),
                                     ("recovery_scratch", (220, 120, 40), "from scratch"))
    width, height, left, bottom, top = 120 + 150 * len(rows), 320, 50, 40, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    span = height - bottom - top

    def y(value: float) -> float:
        return height - bottom - span * max(0.0, min(1.0, value))

    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        draw.line([(left, y(tick)), (width - 10, y(tick))], fill=(225, 225, 225))
        draw.text((8, y(tick) - 6), f"{tick:.0%}", fill="black")
    for i, row in enumerate(rows):
        x0 = left + 20 + 150 * i
        for j, (key, colour, _) in enumerate(series):
            draw.rectangle([x0 + 36 * j, y(row[key]), x0 + 36 * j + 30, y(0)], fill=colour)
        draw.text((x0, height - bottom + 8), row["variant"], fill="black")
    for j, (_, colour, label) in enumerate(series):
        draw.rectangle([left + 130 * j, 10, left + 130 * j + 12, 22], fill=colour)
        draw.text((left + 130 * j + 16, 10), label, fill="black")
    draw.text((width - 200, 26), "recovery of the teacher (bpb)", fill="black")
    image.save(path)
