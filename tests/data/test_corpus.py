"""The embedded byte corpus: found, split by file, deterministic batches."""

import math

import pytest
import torch

from linscan.data import batch_at, load_corpus, stdlib_files, unigram_entropy_bits


def test_stdlib_corpus_is_found_and_split_by_file():
    files = stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    corpus = load_corpus()
    assert corpus.source == "python-stdlib" and corpus.n_files == len(files)
    assert 0.01 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.2
    again = load_corpus()
    assert torch.equal(corpus.val, again.val)
    # a validation window never appears verbatim in the training bytes' file set
    assert b"def " in bytes(corpus.val[:100_000].tolist())


def test_custom_file_and_folder(tmp_path):
    text = ("hello linscan " * 200).encode()
    (tmp_path / "a.txt").write_bytes(text)
    corpus = load_corpus(tmp_path / "a.txt", val_fraction=0.1)
    assert len(corpus.train) + len(corpus.val) == len(text)
    (tmp_path / "bin.dat").write_bytes(b"\0\1\2" * 10)
    for i in range(30):
        (tmp_path / f"f{i}.txt").write_bytes(f"file {i} ".encode() * 20)
    folder = load_corpus(tmp_path, val_fraction=0.2)
    assert folder.n_files == 31                     # the binary file is skipped
    assert b"\0" not in bytes(folder.train.tolist())


def test_missing_path_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data: no such file or folder"):
        load_corpus(tmp_path / "nope")


def test_batches_are_a_function_of_seed_and_step():
    data = torch.arange(1000, dtype=torch.int64).remainder(256).to(torch.uint8)
    x1, y1 = batch_at(data, 5, 3, 17, seed=1)
    x2, y2 = batch_at(data, 5, 3, 17, seed=1)
    x3, _ = batch_at(data, 6, 3, 17, seed=1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (3, 17) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1])


def test_unigram_entropy():
    assert unigram_entropy_bits(torch.arange(256, dtype=torch.uint8).repeat(4)) == pytest.approx(8.0)
    assert unigram_entropy_bits(torch.tensor([7, 7, 7, 9], dtype=torch.uint8)) == pytest.approx(
        -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
