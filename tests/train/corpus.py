"""The small Python-like corpus (about 12 kB) the training tests train micro models on."""

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400))


def write_corpus(path):
    path.write_text(TEXT)
    return path
