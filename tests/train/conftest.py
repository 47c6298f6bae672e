"""Shared fixtures of the training tests."""

import pytest

from .corpus import write_corpus


@pytest.fixture
def text_file(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")
