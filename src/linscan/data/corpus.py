"""Byte-level text corpora (vocabulary 256).

The default corpus is the running interpreter's own standard library: its
``.py`` files, found through ``sysconfig``, so every machine with Python has
it and nothing is downloaded. Any text file or folder can replace it. The
split into train and validation is by file and deterministic (a hash of the
file's relative path), so validation text is never seen in training.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

SEPARATOR = b"\n\n"
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class ByteCorpus:
    """Train and validation bytes as uint8 tensors ``[n_bytes]``; ``source`` says where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    source: str
    n_files: int


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without installed third-party packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts) and p.is_file())


def _text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.parts))
    return [p for p in files if b"\0" not in p.read_bytes()[:4096]]      # skip binaries


def _is_validation(name: str, val_fraction: float) -> bool:
    digest = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
    return digest % 10_000 < val_fraction * 10_000


def _sources(path: str | Path | None) -> tuple[Path, list[Path], str]:
    """(root, text files, source name) of ``path``; None: the standard library."""
    if path is None:
        return Path(sysconfig.get_paths()["stdlib"]), stdlib_files(), "python-stdlib"
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data: no such file or folder: {root}")
    files = _text_files(root)
    if not files:
        raise ValueError(f"data: expected text files under {root}, found none")
    return root, files, str(root)


def _by_split(root: Path, files: list[Path], val_fraction: float) -> dict[bool, list[Path]]:
    """Several files: {True: validation files, False: training files}, by a hash of each name."""
    parts = {True: [], False: []}
    for f in files:
        name = f.relative_to(root).as_posix() if root.is_dir() else f.name
        parts[_is_validation(name, val_fraction)].append(f)
    return parts


def split_sizes(path: str | Path | None = None, *, val_fraction: float = 0.05) -> tuple[int, int, str]:
    """(training bytes, validation bytes, source) that ``load_corpus(path)`` gives, from file sizes
    alone: cheap enough to check ``seq_len`` against both splits before loading anything."""
    root, files, source = _sources(path)
    if len(files) == 1:
        size = files[0].stat().st_size
        cut = int(size * (1 - val_fraction))
        return cut, size - cut, source
    parts = _by_split(root, files, val_fraction)
    joined = {k: sum(f.stat().st_size for f in fs) + len(SEPARATOR) * max(0, len(fs) - 1) for k, fs in parts.items()}
    return joined[False], joined[True], source


def load_corpus(path: str | Path | None = None, *, val_fraction: float = 0.05) -> ByteCorpus:
    """Load ``path`` (a text file or a folder of them) or, when None, the standard library.

    A single file is split by position (the last ``val_fraction`` of its bytes
    is validation); several files are split by file.
    """
    root, files, source = _sources(path)
    if len(files) == 1:
        data = files[0].read_bytes()
        cut = int(len(data) * (1 - val_fraction))
        train, val = data[:cut], data[cut:]
    else:
        parts = _by_split(root, files, val_fraction)
        train, val = (SEPARATOR.join(f.read_bytes() for f in parts[k]) for k in (False, True))
    if len(train) < 2 or len(val) < 2:
        raise ValueError(f"data: {source} is too small to split into train and validation")
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    return ByteCorpus(as_tensor(train), as_tensor(val), source, len(files))


def batch_at(data: torch.Tensor, step: int, batch_size: int, seq_len: int, seed: int = 0):
    """The batch of training step ``step``: a pure function of (seed, step), so resuming is exact.

    Returns ``(x, y)``, int64 ``[batch_size, seq_len]`` each, y = x shifted by one byte.
    ``data`` needs at least ``seq_len + 2`` bytes.
    """
    if len(data) < seq_len + 2:
        raise ValueError(f"seq_len: expected at most {len(data) - 2} for {len(data)} bytes of data, got {seq_len}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=gen)
    window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return window[:, :-1], window[:, 1:]


def unigram_entropy_bits(data: torch.Tensor) -> float:
    """Entropy of the byte distribution in bits per byte: the loss of the best context-free model."""
    counts = torch.bincount(data.long(), minlength=256).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


