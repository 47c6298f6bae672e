"""Synthetic tasks: every label re-derived by an independent computation
(counting, Python ``eval``, composing permutation tuples, a dict re-scan),
plus determinism, lengths, padding, vocabulary bounds and clear errors."""

import itertools

import pytest
import torch

from linscan.data.tasks import TASKS, Task, make_task

NAMES = ["parity", "arith", "arith_brackets", "s3", "a5", "s5", "mqar"]


def rows(task, input_ids, labels):
    """Yield each row's unpadded (ids, labels) as Python lists."""
    for b, length in enumerate(task.lengths_of(input_ids).tolist()):
        yield input_ids[b, :length].tolist(), labels[b, :length].tolist()


def scored(labels):
    return [t for t, y in enumerate(labels) if y != -100]


# ---------------------------------------------------------------- registry and API

def test_registry_names_and_api():
    assert sorted(TASKS) == sorted(NAMES)
    for name in NAMES:
        task = make_task(name)
        assert isinstance(task, Task) and isinstance(task, TASKS[name])
        assert task.name == name and task.pad_id == 0
        lo, hi = task.train_lengths
        tlo, thi = task.test_lengths
        assert 1 <= lo <= hi and tlo <= thi and thi > hi
    assert make_task("parity").train_lengths == (3, 40) and make_task("parity").test_lengths == (40, 256)
    assert make_task("arith").vocab_size == 5 + 5
    assert make_task("arith", modulus=7).vocab_size == 12
    assert make_task("arith_brackets").vocab_size == 7 + 8
    assert make_task("mqar").vocab_size == 8192 and make_task("mqar").num_pairs == 8
    assert [make_task(g).vocab_size for g in ("s3", "a5", "s5")] == [7, 61, 121]


@pytest.mark.parametrize("name", NAMES)
def test_shapes_padding_lengths_and_vocab(name):
    task = make_task(name)
    lo, hi = task.train_lengths
    input_ids, labels = task.sample(200, lengths=(lo, hi), seed=3)
    assert input_ids.dtype == torch.long and labels.dtype == torch.long
    assert input_ids.shape == labels.shape and input_ids.dim() == 2
    lengths = task.lengths_of(input_ids)
    assert lengths.shape == (200,) and lengths.dtype == torch.long
    assert int(lengths.min()) >= lo and int(lengths.max()) <= hi
    assert input_ids.shape[1] == int(lengths.max())
    assert int(lengths.min()) < lo + (hi - lo) // 4 and int(lengths.max()) > hi - (hi - lo) // 4   # spread out
    position = torch.arange(input_ids.shape[1])[None, :]
    inside = position < lengths[:, None]
    assert bool((input_ids[~inside] == 0).all()) and bool((labels[~inside] == -100).all())
    assert bool((input_ids[inside] != 0).all())               # pad never inside a sequence
    assert int(input_ids.min()) >= 0 and int(input_ids.max()) < task.vocab_size
    real = labels[labels != -100]
    assert real.numel() > 0 and int(real.min()) >= 1 and int(real.max()) < task.vocab_size
    assert bool(((labels == -100) | (labels >= 0)).all())


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed_and_seeds_differ(name):
    task = make_task(name)
    a = task.sample(16, lengths=task.train_lengths, seed=11)
    torch.manual_seed(0)
    b = make_task(name).sample(16, lengths=task.train_lengths, seed=11)
    torch.manual_seed(1)                                      # global RNG state must not matter
    c = task.sample(16, lengths=task.train_lengths, seed=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    d = task.sample(16, lengths=task.train_lengths, seed=12)
    assert a[0].shape != d[0].shape or not torch.equal(a[0], d[0])
    assert task.sample(16, seed=11)[0].equal(a[0])            # lengths default to train_lengths
    for seed in (-3, 2**80):                                  # any Python int is a valid seed
        assert torch.equal(task.sample(4, seed=seed)[0], task.sample(4, seed=seed)[0])
    assert torch.equal(task.sample(4, seed=torch.tensor(11))[0], task.sample(4, seed=11)[0])


def test_fixed_length_gives_full_rows():
    task = make_task("s3")
    input_ids, labels = task.sample(5, lengths=(9, 9), seed=0)
    assert input_ids.shape == (5, 9) and bool((task.lengths_of(input_ids) == 9).all())


# ---------------------------------------------------------------- parity

def test_parity_labels_by_counting():
    task = make_task("parity")
    input_ids, labels = task.sample(300, lengths=(1, 60), seed=5)
    parities = []
    for ids, lab in rows(task, input_ids, labels):
        assert set(ids) <= {1, 2}
        assert scored(lab) == [len(ids) - 1]
        ones = sum(1 for x in ids if x == 2)
        assert lab[-1] == (2 if ones % 2 else 1)
        parities.append(ones % 2)
    assert 0.35 < sum(parities) / len(parities) < 0.65


# ---------------------------------------------------------------- arithmetic

def to_python(ids, symbols, number0):
    """Token ids (without '=') -> a Python expression string."""
    return " ".join(symbols[t] if t in symbols else str(t - number0) for t in ids)


def test_arith_labels_by_eval():
    m = 5
    task = make_task("arith", modulus=m)
    symbols = {1: "+", 2: "-", 3: "*"}
    input_ids, labels = task.sample(400, lengths=(2, 60), seed=7)
    answers = set()
    for ids, lab in rows(task, input_ids, labels):
        assert ids[-1] == 4 and 4 not in ids[:-1]
        assert scored(lab) == [len(ids) - 1]
        assert all(1 <= t <= 3 or 5 <= t < 5 + m for t in ids[:-1])
        unary = sum(1 for j, t in enumerate(ids[:-1]) if t == 2 and (j == 0 or ids[j - 1] in (1, 2, 3)))
        assert unary == len(ids) % 2                        # one unary minus exactly on odd lengths
        value = eval(to_python(ids[:-1], symbols, 5)) % m   # Python: '*' binds tighter, unary '-' handled
        assert lab[-1] == 5 + value
        answers.add(value)
    assert answers == set(range(m))


@pytest.mark.parametrize("modulus", [8, 3])
def test_arith_brackets_labels_by_eval(modulus):
    task = make_task("arith_brackets", modulus=modulus)
    symbols = {1: "+", 2: "-", 3: "*", 4: "(", 5: ")"}
    input_ids, labels = task.sample(300, lengths=(2, 120), seed=8)
    answers, lengths = set(), []
    for ids, lab in rows(task, input_ids, labels):
        assert ids[-1] == 6 and 6 not in ids[:-1]
        assert scored(lab) == [len(ids) - 1]
        value = eval(to_python(ids[:-1], symbols, 7)) % modulus
        assert lab[-1] == 7 + value
        answers.add(value)
        lengths.append(len(ids))
    assert answers == set(range(modulus))
    assert min(lengths) == 2 and max(lengths) > 100


@pytest.mark.parametrize("name", ["arith", "arith_brackets"])
def test_arithmetic_hits_every_requested_length_exactly(name):
    task = make_task(name)
    for length in range(2, 70):
        input_ids, labels = task.sample(3, lengths=(length, length), seed=length)
        assert input_ids.shape == (3, length) and bool((task.lengths_of(input_ids) == length).all())


def paren_depth(ids, open_id=4, close_id=5):
    depth = deepest = 0
    for t in ids:
        depth += (t == open_id) - (t == close_id)
        assert depth >= 0
        deepest = max(deepest, depth)
    assert depth == 0
    return deepest


def test_arith_brackets_exact_lengths_and_max_depth():
    task = make_task("arith_brackets", max_depth=2)
    longest = 7 * 2**2 - 3 + 1                                # 25 expression tokens + '='
    input_ids, labels = task.sample(200, lengths=(2, longest), seed=9)
    assert int(task.lengths_of(input_ids).max()) == longest      # the deepest allowed length is reachable
    for ids, lab in rows(task, input_ids, labels):
        assert paren_depth(ids) <= 2 + 1                      # (L op R) nesting, plus a leaf's own (n)
        assert lab[-1] == 7 + eval(to_python(ids[:-1], {1: "+", 2: "-", 3: "*", 4: "(", 5: ")"}, 7)) % 8
    leaf = make_task("arith_brackets", max_depth=0)
    input_ids, labels = leaf.sample(50, lengths=(2, 5), seed=0)
    for ids, _ in rows(leaf, input_ids, labels):
        assert sum(1 for t in ids if t in (1, 3)) == 0       # no binary operator in a single leaf
    with pytest.raises(ValueError, match="max_depth"):
        task.sample(4, lengths=(2, longest + 1), seed=0)


# ---------------------------------------------------------------- groups

def is_even_by_cycles(p):
    seen, transpositions = set(), 0
    for start in range(len(p)):
        size, i = 0, start
        while i not in seen:
            seen.add(i)
            i = p[i]
            size += 1
        transpositions += max(size - 1, 0)
    return transpositions % 2 == 0


def compose(after, first):
    """Apply ``first``, then ``after``."""
    return tuple(after[first[i]] for i in range(len(first)))


@pytest.mark.parametrize("name,degree,even_only,order", [("s3", 3, False, 6), ("a5", 5, True, 60),
                                                          ("s5", 5, False, 120)])
def test_group_elements_and_running_products(name, degree, even_only, order):
    elements = [p for p in itertools.permutations(range(degree)) if is_even_by_cycles(p) or not even_only]
    assert len(elements) == order == len(set(elements))
    closed = set(elements)
    assert all(compose(a, b) in closed for a in elements for b in elements)
    task = make_task(name)
    assert [tuple(p) for p in task.elements] == elements
    assert task.vocab_size == order + 1
    input_ids, labels = task.sample(60, lengths=(1, 50), seed=4)
    seen = set()
    for ids, lab in rows(task, input_ids, labels):
        assert all(1 <= t <= order for t in ids)
        product = tuple(range(degree))
        for t, (x, y) in enumerate(zip(ids, lab)):
            product = compose(elements[x - 1], product)
            assert y == elements.index(product) + 1, (name, t)
        seen.update(ids)
    assert len(seen) > order // 2                             # elements drawn from the whole group


def test_group_order_matters_in_s3():
    """The running product is g_t o ... o g_1 (not the reverse): a check that fails for the other order."""
    task = make_task("s3")
    elements = list(itertools.permutations(range(3)))
    input_ids, labels = task.sample(40, lengths=(2, 2), seed=1)
    mismatched = 0
    for ids, lab in rows(task, input_ids, labels):
        g1, g2 = elements[ids[0] - 1], elements[ids[1] - 1]
        assert lab[1] == elements.index(compose(g2, g1)) + 1
        mismatched += compose(g1, g2) != compose(g2, g1)
    assert mismatched > 0


# ---------------------------------------------------------------- MQAR

def test_mqar_labels_by_dict_rescan():
    task = make_task("mqar", vocab_size=512, num_pairs=8)
    v, d = 512, 8
    input_ids, labels = task.sample(100, lengths=(24, 128), seed=6)
    for ids, lab in rows(task, input_ids, labels):
        pairs = dict(zip(ids[0 : 2 * d : 2], ids[1 : 2 * d : 2]))
        assert len(pairs) == d and len(set(pairs.values())) == d
        assert all(1 <= k < v // 2 for k in pairs) and all(v // 2 <= x < v for x in pairs.values())
        assert lab[: 2 * d] == [-100] * (2 * d)
        queried = []
        for t in range(2 * d, len(ids)):
            if ids[t] in pairs:
                assert lab[t] == pairs[ids[t]]
                queried.append(ids[t])
            else:
                assert lab[t] == -100 and 1 <= ids[t] < v
        assert sorted(queried) == sorted(pairs)                # every key re-queried exactly once


def test_mqar_power_law_puts_queries_early():
    def mean_offset(power_a):
        task = make_task("mqar", vocab_size=1024, num_pairs=4, power_a=power_a)
        input_ids, labels = task.sample(200, lengths=(200, 200), seed=2)
        where = (labels[:, 8:] != -100).nonzero()[:, 1].double()
        return float(where.mean()) / (200 - 8)

    assert mean_offset(1.0) > 0.4                             # uniform: about half way
    assert mean_offset(0.01) < 0.3                            # power law: skewed to small gaps


def test_mqar_default_lengths_follow_num_pairs():
    assert make_task("mqar").train_lengths == (64, 256)
    big = make_task("mqar", num_pairs=64)
    assert big.train_lengths[0] >= 4 * 64
    input_ids, labels = big.sample(2, seed=0)
    assert int((labels != -100).sum()) == 2 * 64


# ---------------------------------------------------------------- errors

def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="nope.*parity"):
        make_task("nope")
    with pytest.raises(ValueError, match="modulo.*modulus"):
        make_task("arith", modulo=5)
    with pytest.raises(ValueError, match="foo.*none"):
        make_task("parity", foo=1)
    with pytest.raises(ValueError, match="modulus"):
        make_task("arith", modulus=1)
    with pytest.raises(ValueError, match="modulus"):
        make_task("arith_brackets", modulus=2.5)
    with pytest.raises(ValueError, match="max_depth"):
        make_task("arith_brackets", max_depth=-1)
    with pytest.raises(ValueError, match="vocab_size"):
        make_task("mqar", vocab_size=10, num_pairs=8)
    with pytest.raises(ValueError, match="num_pairs"):
        make_task("mqar", num_pairs=0)
    with pytest.raises(ValueError, match="power_a"):
        make_task("mqar", power_a=0)
    task = make_task("parity")
    with pytest.raises(ValueError, match="lengths"):
        task.sample(4, lengths=(10, 5), seed=0)
    with pytest.raises(ValueError, match="lengths"):
        task.sample(4, lengths=(0, 5), seed=0)
    with pytest.raises(ValueError, match="lengths"):
        task.sample(4, lengths=(2.0, 5), seed=0)
    with pytest.raises(ValueError, match="n must"):
        task.sample(0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        task.sample(4, seed=None)
    with pytest.raises(ValueError, match="lengths lo must be >= 2"):
        make_task("arith").sample(4, lengths=(1, 5), seed=0)
    with pytest.raises(ValueError, match="lengths lo must be >= 24"):
        make_task("mqar").sample(4, lengths=(16, 40), seed=0)
    with pytest.raises(ValueError, match="2-D"):
        task.lengths_of(torch.ones(5, dtype=torch.long))
