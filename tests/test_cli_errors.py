"""A clean error for every bad input: each subcommand's bad arguments give one line on stderr that
names the argument and the value, exit status 1 (2: argparse usage errors), no traceback, and no
work started. Also: a diverging eval run is reported, not raised; the generate API's ValueErrors."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch

from linscan import cli
from linscan.data.corpus import batch_at, load_corpus, split_sizes
from linscan.eval import runner
from linscan.models import LinscanConfig, LinscanForCausalLM, sample

CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(CUDA, reason="checks the refusal without a CUDA device")


@pytest.fixture
def files(tmp_path):
    """Paths the table refers to as {name}: a plain file, a 1000-byte text file, a 4-byte one,
    a folder without text files."""
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "text.txt").write_bytes(b"0123456789" * 100)      # splits: 950 training, 50 validation bytes
    (tmp_path / "tiny.txt").write_bytes(b"abcd")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "blob.bin").write_bytes(b"\0" * 64)
    return {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "run", "text": tmp_path / "text.txt",
            "tiny": tmp_path / "tiny.txt", "binary": tmp_path / "binary", "folder": tmp_path,
            "missing_dir": tmp_path / "no" / "x.json"}


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Any training, evaluation or benchmark started for a bad input fails the test."""
    import linscan.bench.gpu
    import linscan.bench.models
    import linscan.bench.ops
    import linscan.bench.rnn
    import linscan.train.loop

    def started(*args, **kwargs):
        raise AssertionError("work started for a bad input")

    for module, name in [(linscan.train.loop, "train"), (runner, "train_one"), (linscan.bench.ops, "run"),
                         (linscan.bench.models, "run"), (linscan.bench.rnn, "run"), (linscan.bench.gpu, "run_args")]:
        monkeypatch.setattr(module, name, started)


def run_main(capsys, argv):
    """cli.main(argv) in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(argv)
    except SystemExit as e:                 # argparse usage errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


# (argv, exit status, the argument the line must name, a fragment with the value it must show);
# "{name}" in argv is a path of the ``files`` fixture.
TRAIN = [
    (["train", "--out", "{file}"], 1, "--out", "got the file"),
    (["train", "--out", "{under_file}"], 1, "--out", "under the file"),
    (["train", "--threads", "-1"], 2, "--threads", "'-1'"),
    (["train", "--threads", "0"], 2, "--threads", "'0'"),
    (["train", "--device", "bogus"], 1, "--device", "'bogus'"),
    (["train", "--device", "cuda:99"], 1, "--device", "cuda"),
    pytest.param(["train", "--device", "cuda"], 1, "--device", "no CUDA device", marks=no_cuda),
    (["train", "--data", "{text}", "--seq-len", "2000"], 1, "--seq-len", "training split"),
    (["train", "--data", "{text}", "--sequence-parallel", "0"], 2, "--sequence-parallel", "'0'"),
    (["train", "--data", "{text}", "--seq-len", "16", "--sequence-parallel", "2"], 1, "--sequence-parallel",
     "divisor of the 1 processes"),
    (["train", "--data", "{text}", "--seq-len", "100"], 1, "--seq-len", "expected at most 48 (the validation split"),
    (["train", "--data", "{tiny}", "--seq-len", "1"], 1, "--data", "at least 3 bytes"),
    (["train", "--data", "{binary}"], 1, "--data", "expected text files"),
    (["train", "--data", "/no/such/path"], 1, "--data", "/no/such/path"),
    (["train", "--pattern", "DQ"], 1, "--pattern", "'DQ'"),
    (["train", "--pattern", ""], 1, "--pattern", "''"),
    (["train", "--preset", "huge"], 1, "--preset", "'huge'"),
    (["train", "--steps", "0"], 2, "--steps", "'0'"),
    (["train", "--steps", "-5"], 2, "--steps", "'-5'"),
    (["train", "--steps", "ten"], 2, "--steps", "'ten'"),
    (["train", "--batch-size", "0"], 2, "--batch-size", "'0'"),
    (["train", "--seq-len", "-1"], 2, "--seq-len", "'-1'"),
    (["train", "--grad-accum", "0"], 2, "--grad-accum", "'0'"),
    (["train", "--eval-every", "0"], 2, "--eval-every", "'0'"),
    (["train", "--ckpt-every", "0"], 2, "--ckpt-every", "'0'"),
    (["train", "--warmup", "-1"], 2, "--warmup", "'-1'"),
    (["train", "--lr", "0"], 2, "--lr", "'0'"),
    (["train", "--lr=-1e-3"], 2, "--lr", "'-1e-3'"),
    (["train", "--lr", "nan"], 2, "--lr", "'nan'"),
    (["train", "--lr", "inf"], 2, "--lr", "'inf'"),
    (["train", "--weight-decay", "-0.1"], 2, "--weight-decay", "'-0.1'"),
    (["train", "--weight-decay", "nan"], 2, "--weight-decay", "'nan'"),
    (["train", "--seed", "-1"], 2, "--seed", "'-1'"),
    (["train", "--seed", str(2**32)], 2, "--seed", str(2**32)),
    (["train", "--sample", "-1"], 2, "--sample", "'-1'"),
]
GENERATE = [
    (["generate", "--ckpt", "/no/such/run", "--prompt", ""], 2, "--prompt", "''"),
    (["generate", "--ckpt", "/no/such/run", "--prompt", "ab\udcff"], 2, "--prompt", "b'ab\\xff'"),   # non-UTF-8 argv
    (["generate", "--ckpt", "/no/such/run", "--temperature", "nan"], 2, "--temperature", "'nan'"),
    (["generate", "--ckpt", "/no/such/run", "--temperature", "-1"], 2, "--temperature", "'-1'"),
    (["generate", "--ckpt", "/no/such/run", "--temperature", "inf"], 2, "--temperature", "'inf'"),
    (["generate", "--ckpt", "/no/such/run", "--top-k", "0"], 2, "--top-k", "'0'"),
    (["generate", "--ckpt", "/no/such/run", "--top-k", "-3"], 2, "--top-k", "'-3'"),
    (["generate", "--ckpt", "/no/such/run", "--top-p", "-0.5"], 2, "--top-p", "'-0.5'"),
    (["generate", "--ckpt", "/no/such/run", "--top-p", "0"], 2, "--top-p", "'0'"),
    (["generate", "--ckpt", "/no/such/run", "--top-p", "1.5"], 2, "--top-p", "'1.5'"),
    (["generate", "--ckpt", "/no/such/run", "--top-p", "nan"], 2, "--top-p", "'nan'"),
    (["generate", "--ckpt", "/no/such/run", "--max-new-tokens", "-1"], 2, "--max-new-tokens", "'-1'"),
    (["generate", "--ckpt", "/no/such/run", "--seed", "-1"], 2, "--seed", "'-1'"),
    (["generate"], 2, "--ckpt", "required"),
    (["generate", "--ckpt", "/no/such/run"], 1, "--ckpt", "/no/such/run"),
    (["generate", "--ckpt", "{file}"], 1, "--ckpt", "a_file"),
]
EVAL = [
    (["eval", "parity", "--out", "{file}"], 1, "--out", "a_file"),
    (["eval", "parity", "--out", "{under_file}"], 1, "--out", "a_file"),
    (["eval", "nosuchtask"], 1, "TASK", "'nosuchtask'"),
    (["eval", "parity", "--mixers", "deltanet,nope"], 1, "--mixers", "'nope'"),
    (["eval", "parity", "--mixers", " , "], 1, "--mixers", "' , '"),
    (["eval", "parity", "--steps", "0"], 2, "--steps", "'0'"),
    (["eval", "parity", "--seeds", "0"], 2, "--seeds", "'0'"),
    (["eval", "parity", "--batch-size", "-2"], 2, "--batch-size", "'-2'"),
    (["eval", "parity", "--layers", "0"], 2, "--layers", "'0'"),
    (["eval", "parity", "--d-model", "0"], 2, "--d-model", "'0'"),
    (["eval", "parity", "--heads", "0"], 2, "--heads", "'0'"),
    (["eval", "parity", "--head-dim", "-2"], 2, "--head-dim", "'-2'"),
    (["eval", "parity", "--heads", "3"], 1, "--d-model", "n_heads = 3"),
    (["eval", "parity", "--eval-sequences", "0"], 2, "--eval-sequences", "'0'"),
    (["eval", "parity", "--lr", "0"], 2, "--lr", "'0'"),
    (["eval", "parity", "--lr", "-0.1"], 2, "--lr", "'-0.1'"),
    (["eval", "parity", "--lr", "nan"], 2, "--lr", "'nan'"),
    (["eval", "parity", "--lr", "inf"], 2, "--lr", "'inf'"),
    (["eval", "parity", "--train-len", "40..3"], 2, "--train-len", "'40..3'"),
    (["eval", "parity", "--train-len", "0..5"], 2, "--train-len", "'0..5'"),
    (["eval", "parity", "--test-len", "64"], 2, "--test-len", "'64'"),
    (["eval", "arith", "--train-len", "1..5"], 1, "--train-len", "(1, 5)"),
    (["eval", "arith_brackets", "--task-option", "max_depth=1", "--train-len", "3..10", "--test-len", "40..64"], 1,
     "--test-len", "(40, 64)"),
    (["eval", "mqar", "--task-option", "pairs=4"], 1, "--task-option", "['pairs']"),
    (["eval", "mqar", "--task-option", "num_pairs=0"], 1, "--task-option", "got 0"),
    (["eval", "mqar", "--task-option", "num_pairs=abc"], 1, "--task-option", "'abc'"),
    (["eval", "mqar", "--task-option", "power_a=nan"], 1, "--task-option", "nan"),
    (["eval", "mqar", "--task-option", "vocab_size=100000000"], 1, "--task-option", "100000000"),
    (["eval", "arith", "--task-option", "modulus=1"], 1, "--task-option", "got 1"),
    (["eval", "parity", "--task-option", "x=1"], 1, "--task-option", "['x']"),
    (["eval", "parity", "--task-option", "novalue"], 2, "--task-option", "'novalue'"),
    (["eval", "parity", "--d-model", "6"], 1, "--d-model", "got 6"),
    (["eval", "parity", "--mixers", "attention", "--d-model", "12"], 1, "--d-model", "got 12"),
]
BENCH = [
    (["bench", "ops", "--family", "nope"], 2, "--family", "'nope'"),
    (["bench", "ops", "--T", "0"], 2, "--T", "'0'"),
    (["bench", "ops", "--threads", "0"], 2, "--threads", "'0'"),
    (["bench", "ops", "--repeats", "-1"], 2, "--repeats", "'-1'"),
    (["bench", "ops", "--device", "tpu"], 2, "--device", "'tpu'"),
    pytest.param(["bench", "ops", "--device", "cuda"], 1, "--device", "no CUDA device", marks=no_cuda),
    (["bench", "ops", "--out", "{folder}"], 1, "--out", "the folder"),
    (["bench", "ops", "--out", "{missing_dir}"], 1, "--out", "x.json"),
    (["bench", "model", "--patterns", "DQ"], 1, "--patterns", "'DQ'"),
    (["bench", "model", "--patterns", ","], 1, "--patterns", "','"),
    (["bench", "model", "--preset", "huge"], 1, "--preset", "'huge'"),
    (["bench", "model", "--contexts", "0"], 2, "--contexts", "'0'"),
    (["bench", "model", "--threads", "-2"], 2, "--threads", "'-2'"),
    (["bench", "model", "--out", "{folder}"], 1, "--out", "the folder"),
    (["bench", "rnn", "--cells", "gru,nope"], 1, "--cells", "'gru,nope'"),
    (["bench", "rnn", "--lengths", "-4"], 2, "--lengths", "'-4'"),
    (["bench", "rnn", "--batch", "0"], 2, "--batch", "'0'"),
    (["bench", "rnn", "--dim", "0"], 2, "--dim", "'0'"),
    (["bench", "rnn", "--train-steps", "-1"], 2, "--train-steps", "'-1'"),
    (["bench", "rnn", "--out", "{under_file}"], 1, "--out", "a_file"),
    pytest.param(["bench", "rnn", "--device", "cuda"], 1, "--device", "no CUDA device", marks=no_cuda),
    pytest.param(["bench", "gpu"], 1, "--smoke", "CUDA", marks=no_cuda),
    (["bench", "sp", "--world", "1"], 1, "--world", "at least 2"),
    (["bench", "sp", "--families", "decay,nope"], 1, "--families", "'decay,nope'"),
    (["bench", "sp", "--lengths", "6", "--world", "4"], 1, "--lengths", "[6]"),
    (["bench", "sp", "--heads", "0"], 2, "--heads", "'0'"),
    (["bench", "sp", "--out", "{folder}"], 1, "--out", "the folder"),
    (["bench", "mom", "--top-k", "5"], 1, "--top-k", "got 5"),
    (["bench", "mom", "--heads", "3"], 1, "--heads", "got 3"),
    (["bench", "mom", "--length", "0"], 2, "--length", "'0'"),
    (["bench", "mom", "--out", "{folder}"], 1, "--out", "the folder"),
    (["bench", "grid", "--sides", "0"], 2, "--sides", "'0'"),
    (["bench", "grid", "--out", "{folder}"], 1, "--out", "the folder"),
    (["bench", "liger", "--variants", "liger_foo", "--out", "{folder}/bench"], 1, "--variants", "liger_foo"),
    (["bench", "liger", "--fraction", "0"], 2, "--fraction", "'0'"),
    (["linearize", "--from", "{file}", "--out", "{folder}/lin"], 1, "--from", "not a folder"),
    (["linearize", "--from", "{folder}", "--to", "mamba", "--out", "{folder}/lin"], 2, "--to", "'mamba'"),
    (["linearize", "--from", "{folder}", "--window", "-1", "--out", "{folder}/lin"], 2, "--window", "'-1'"),
    (["bench", "gpu", "--smoke", "--lengths", "abc"], 1, "--lengths", "'abc'"),
    (["bench", "gpu", "--smoke", "--lengths", "0"], 1, "--lengths", "'0'"),
    (["bench", "gpu", "--smoke", "--lengths", "100000"], 1, "--lengths", "'100000'"),
    (["bench", "gpu", "--smoke", "--only", "nope"], 1, "--only", "['nope']"),
    (["bench", "gpu", "--smoke", "--budget-s", "nan"], 1, "--budget-s", "nan"),
    (["bench", "gpu", "--smoke", "--budget-s", "-1"], 1, "--budget-s", "-1"),
    (["bench", "gpu", "--smoke", "--budget-s", "soon"], 2, "--budget-s", "'soon'"),
    (["bench", "gpu", "--smoke", "--out", "{folder}"], 1, "--out", "the folder"),
    (["bench", "nope"], 2, "BENCHMARK", "'nope'"),
]
TOP = [
    ([], 2, "COMMAND", "required"),
    (["nope"], 2, "COMMAND", "'nope'"),
    (["info", "--bogus"], 2, "--bogus", "unrecognized"),
]


def _named(rows):
    """Each row as a pytest.param whose id is its command line."""
    for row in rows:
        values, marks = (row.values, row.marks) if hasattr(row, "values") else (row, ())
        yield pytest.param(*values, marks=marks, id=" ".join(values[0]) or "(none)")


@pytest.mark.parametrize("argv, code, option, fragment", list(_named(TRAIN + GENERATE + EVAL + BENCH + TOP)))
def test_bad_input_is_one_line(argv, code, option, fragment, files, capsys):
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    status, out, err = run_main(capsys, argv)
    assert status == code, err
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    prefix = "linscan: error: " if code == 1 else "linscan"
    assert err.startswith(prefix) and " error: " in err, err
    assert option in err and fragment in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        status, _, err = run_main(capsys, ["train", "--out", str(tmp_path / "run")])
    finally:
        tmp_path.chmod(0o700)
    assert status == 1 and err.startswith("linscan: error: --out: expected a writable folder")


# ---------------------------------------------------------------- data lengths, checked before loading

def test_split_sizes_match_the_loaded_corpus(tmp_path):
    (tmp_path / "one.txt").write_bytes(b"x" * 1234)
    train, val, _ = split_sizes(tmp_path / "one.txt")
    corpus = load_corpus(tmp_path / "one.txt")
    assert (train, val) == (len(corpus.train), len(corpus.val))
    for i in range(40):
        (tmp_path / f"f{i}.py").write_bytes(b"y" * (i + 1))
    train, val, _ = split_sizes(tmp_path)
    corpus = load_corpus(tmp_path)
    assert (train, val) == (len(corpus.train), len(corpus.val)) and val > 0


def test_batch_at_names_seq_len_when_data_is_too_short():
    data = torch.zeros(10, dtype=torch.uint8)
    assert batch_at(data, 0, 2, 8)[0].shape == (2, 8)           # 10 bytes: windows of 8 + 1 fit
    with pytest.raises(ValueError, match=r"seq_len: expected at most 8 for 10 bytes of data, got 9"):
        batch_at(data, 0, 2, 9)


# ---------------------------------------------------------------- eval: a diverging mixer is reported

class Echo:
    """Fake task: label = the input token at every position (vocabulary 5, lengths 3..8)."""

    name, vocab_size, pad_id = "echo", 5, 0
    train_lengths, test_lengths = (3, 6), (6, 8)

    def sample(self, n, lengths=None, *, seed=0):
        lo, hi = lengths or self.train_lengths
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, self.vocab_size, (n, int(torch.randint(lo, hi + 1, (1,), generator=gen))), generator=gen)
        return ids, ids.clone()


def diverging(monkeypatch, name: str, step: int, seeds=(0,)):
    """``name``'s models (for ``seeds``) give NaN logits from training step ``step`` on."""
    build = runner.build_model

    def build_diverging(spec, preset, vocab_size, seed):
        model = build(spec, preset, vocab_size, seed)
        if spec.name == name and seed in seeds:
            calls = itertools.count(1)
            model.head.register_forward_hook(lambda mod, args, out: out * math.nan if next(calls) >= step else out)
        return model

    monkeypatch.setattr(runner, "build_model", build_diverging)


TRAIN_ONE = runner.train_one          # before the no_work fixture replaces it
TINY = dict(steps=4, d_model=16, n_layers=1, batch_size=2, eval_sequences=4, progress=False)


@pytest.fixture
def train_for_real(monkeypatch):
    monkeypatch.setattr(runner, "train_one", TRAIN_ONE)


def runner_table(results) -> list[str]:
    from linscan.eval import format_table
    return format_table(results).splitlines()


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_diverged_mixer_is_reported_and_the_others_go_on(monkeypatch, train_for_real, tmp_path):
    diverging(monkeypatch, "gla", step=3)
    results = runner.run(Echo(), ["gla", "attention"], out=tmp_path, **TINY)
    gla, attention = results["mixers"]["gla"], results["mixers"]["attention"]
    assert gla["diverged"] == "diverged at step 3" and gla["summary"] is None
    assert gla["runs"][0]["diverged_at"] == 3 and gla["runs"][0]["buckets"] is None
    assert attention["diverged"] is None and len(attention["summary"]["acc_mean"]) == len(results["buckets"])
    saved = strict_json((tmp_path / "results.json").read_text())
    assert saved["mixers"]["gla"]["diverged"] == "diverged at step 3"
    assert saved["mixers"]["attention"]["summary"] == attention["summary"]
    assert (tmp_path / "accuracy.png").is_file()
    table = runner_table(results)
    assert [line.split()[0] for line in table[2:]] == ["gla", "attention"]
    assert table[2].split(None, 1)[1] == "diverged at step 3"


def test_one_diverged_seed_is_left_out_of_the_summary(monkeypatch, train_for_real):
    diverging(monkeypatch, "attention", step=2, seeds=(1,))
    results = runner.run(Echo(), ["attention"], seeds=2, **TINY)
    entry = results["mixers"]["attention"]
    assert entry["diverged"] == "seed 1 diverged at step 2"
    assert entry["summary"]["acc_mean"] == [b["acc"] for b in entry["runs"][0]["buckets"]]
    assert runner_table(results)[2].endswith("(seed 1 diverged at step 2)")


def test_cli_eval_with_a_diverging_mixer_finishes(monkeypatch, train_for_real, tmp_path, capsys):
    diverging(monkeypatch, "gla", step=2)
    status, out, err = run_main(capsys, ["eval", "parity", "--mixers", "gla,deltanet_neg", "--steps", "3",
                                         "--train-len", "3..6", "--test-len", "6..10", "--batch-size", "2",
                                         "--eval-sequences", "4", "--d-model", "16", "--layers", "1",
                                         "--out", str(tmp_path)])
    assert status == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("gla", "deltanet_neg"))}
    assert rows["gla"].split(None, 1)[1] == "diverged at step 2"
    assert float(rows["deltanet_neg"].split()[1]) >= 0
    saved = strict_json((tmp_path / "results.json").read_text())
    assert saved["mixers"]["deltanet_neg"]["summary"] is not None
    assert "gla seed 0: diverged at step 2" in err


# ---------------------------------------------------------------- the generate / sample API

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LinscanConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, pattern="D", mlp_ratio=1.0)
    return LinscanForCausalLM(config).eval()


@pytest.mark.parametrize("kwargs, argument", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=math.inf), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-2), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=math.nan), "top_p"),
])
def test_sampling_options_out_of_range(model, kwargs, argument):
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=rf"^{argument}: expected .*got"):
        model.generate(prompt, 2, **kwargs)
    with pytest.raises(ValueError, match=rf"^{argument}: expected .*got"):
        sample(torch.zeros(1, 16), **kwargs)


def test_generate_refuses_an_empty_prompt_and_negative_lengths(model):
    with pytest.raises(ValueError, match=r"^input_ids: expected a non-empty prompt .* got shape \[1, 0\]"):
        model.generate(torch.empty(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"^max_new_tokens: expected an integer >= 0, got -1"):
        model.generate(torch.tensor([[1]]), -1)


def test_boundary_values_are_accepted(model):
    gen = torch.Generator().manual_seed(0)
    out = model.generate(torch.tensor([[1, 2]]), 3, temperature=0.5, top_k=1, top_p=1.0, generator=gen)
    assert out.shape == (1, 5)
    assert model.generate(torch.tensor([[1, 2]]), 0).shape == (1, 2)


@pytest.mark.parametrize("argv, message", [
    (["bench", "lcm", "--aggregators", "foo"], "--aggregators: expected some of"),
    (["bench", "tcnca", "--lengths", "0"], "--lengths"),
    (["eval", "arrow", "--out", "/proc/linscan-no-such"], "--out: expected a folder that can be created"),
])
def test_module_benchmarks_and_arrow_refuse_bad_values_in_one_line(argv, message, capsys):
    from linscan.cli import main
    try:
        code = main(argv)
    except SystemExit as e:          # argparse's usage error (exit 2) is one line too
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and message in err[-1] and "Traceback" not in "\n".join(err)
