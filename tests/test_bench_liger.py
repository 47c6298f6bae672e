"""``linscan bench liger`` end to end at a tiny size: every score on the teacher's windows, results written."""

import json

import pytest

from linscan.bench import liger

pytest.importorskip("peft")


def test_bench_liger_smoke(tmp_path, capsys):
    out = tmp_path / "bench"
    result = liger.run(str(out), teacher_steps=4, fraction=0.5, batch_size=2, seq_len=16, finetune_batch_size=1,
                       variants=("liger_attention",), progress=False)
    row = result["rows"][0]
    report = json.loads((out / "liger_attention" / "linearize.json").read_text())
    assert report["teacher_val_bpb"] == result["teacher_bpb"]       # the same windows as the bench's teacher
    assert report["finetuned_val_bpb"] == row["finetuned_bpb"]
    assert row["recovery"] == pytest.approx((result["unigram_bpb"] - row["finetuned_bpb"])
                                            / (result["unigram_bpb"] - result["teacher_bpb"]))
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]
    assert (out / "recovery.png").stat().st_size > 0 and "LoRA-tuned" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already holds results"):
        liger.run(str(out), teacher_steps=4, variants=("liger_attention",), progress=False)
