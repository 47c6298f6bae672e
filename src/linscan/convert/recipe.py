"""The Liger recipe end to end: convert, score, LoRA fine-tune with linscan's trainer, merge, save."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..models import LinscanForCausalLM
from .liger import liger
from .lora import require_peft, apply_lora, lora_parameters, merge_lora
from .source import load_source


def validation_bpb(model: LinscanForCausalLM, corpus, args) -> float:
    """Validation bits per byte of ``model`` on ``corpus.val`` (the trainer's fixed windows)."""
    from ..train.loop import _device, autocast, evaluate

    device = _device(args.device)
    model = model.to(device)
    return evaluate(model, corpus.val, args, device, lambda: autocast(device))


def recovery(unigram: float, teacher: float, student: float) -> float:
    """(unigram - student) / (unigram - teacher), in bits per byte: 1 = the teacher's quality,
    0 = no better than byte frequencies."""
    return (unigram - student) / (unigram - teacher)


def linearize_model(source, train_args, *, recurrence: str = "gla", window: int | None = 64,
                    recurrent_weight: float = 0.5, keep_attention_every: int | None = None, rank: int = 8,
                    out: str | Path | None = None, log=None, eval_args=None) -> dict:
    """Convert ``source``'s attention layers to Liger layers, fine-tune LoRA adapters, merge them.

    source: a ``LinscanForCausalLM`` or a folder for :func:`load_source`.
    train_args: a ``linscan.train.TrainArgs`` for the fine-tune (its ``out`` is the run folder;
        ``steps = 0``: convert only). Fine-tuning reads bytes, so it needs a byte-level model
        (vocab 256); any model converts.
    recurrence, window, recurrent_weight, keep_attention_every: as :func:`linscan.convert.liger`.
    rank: LoRA rank on q, k, v (alpha = rank).
    out: write ``out/model`` (the merged model folder) and ``out/linearize.json`` (the report).
    eval_args: the ``TrainArgs`` whose batch size, length and count of windows score the models
        (default ``train_args``: the validation windows of the fine-tune's own batch size).
    Returns the report: validation bits per byte of the teacher, the converted model before and
    after the fine-tune, the unigram baseline and the recovery, parameter counts, tokens; with
    ``"model"``, the converted model (not written to JSON).
    """
    log = sys.stderr if log is None else log          # looked up per call: stderr may be replaced (pytest, notebooks)
    from ..data import load_corpus, unigram_entropy_bits
    from ..train import checkpoint
    from ..train.loop import train

    teacher = source if isinstance(source, LinscanForCausalLM) else load_source(source)
    student = liger(teacher, recurrence=recurrence, window=window, recurrent_weight=recurrent_weight,
                    keep_attention_every=keep_attention_every)
    report = {"source": "model" if isinstance(source, LinscanForCausalLM) else str(source), "recurrence": recurrence, "window": window,
              "recurrent_weight": recurrent_weight, "keep_attention_every": keep_attention_every,
              "pattern": student.config.pattern, "parameters": student.num_parameters(),
              "teacher_parameters": teacher.num_parameters()}
    byte_level = teacher.config.vocab_size == 256
    if train_args.steps > 0:
        require_peft()                  # a missing peft fails now, not after the evaluations
    if train_args.steps > 0 and not byte_level:
        raise ValueError(f"steps: fine-tuning reads bytes (the embedded corpus or --data), so it needs a byte-level "
                         f"model (vocab 256), got vocab {teacher.config.vocab_size}; pass --steps 0 to convert only")
    if byte_level:
        corpus = load_corpus(train_args.data)
        report["unigram_bpb"] = unigram_entropy_bits(corpus.val)
        scoring = eval_args or train_args
        report["teacher_val_bpb"] = validation_bpb(teacher, corpus, scoring)
        report["converted_val_bpb"] = validation_bpb(student, corpus, scoring)
        print(f"linearize: teacher {report['teacher_val_bpb']:.3f} bits per byte, converted "
              f"{report['converted_val_bpb']:.3f} before fine-tuning (unigram {report['unigram_bpb']:.3f})", file=log)
    if train_args.steps > 0:
        apply_lora(student, rank=rank)
        report["lora_parameters"] = lora_parameters(student)
        summary = train(train_args, model=student)
        merge_lora(student)
        report["tokens"] = train_args.steps * train_args.batch_size * train_args.seq_len * train_args.grad_accum
        report["finetune_seconds"] = summary["seconds"]
        report["finetuned_val_bpb"] = validation_bpb(student, corpus, scoring)
        report["recovery"] = recovery(report["unigram_bpb"], report["teacher_val_bpb"], report["finetuned_val_bpb"])
        print(f"linearize: fine-tuned {report['finetuned_val_bpb']:.3f} bits per byte, recovery "
              f"{report['recovery']:.1%} of the teacher", file=log)
    student.eval()
    if out is not None:
        checkpoint.save_model(Path(out) / "model", student)
        Path(out).mkdir(parents=True, exist_ok=True)
        checkpoint.replace_file(Path(out) / "linearize.json", json.dumps(report, indent=2).encode())
        print(f"linearize: wrote {Path(out) / 'model'} and {Path(out) / 'linearize.json'}", file=log)
    report["model"] = student
    return report
