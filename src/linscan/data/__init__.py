"""Data: the embedded byte-level corpus and (later) synthetic evaluation tasks."""

from .corpus import ByteCorpus, batch_at, load_corpus, stdlib_files, unigram_entropy_bits

__all__ = ["ByteCorpus", "batch_at", "load_corpus", "stdlib_files", "unigram_entropy_bits"]
