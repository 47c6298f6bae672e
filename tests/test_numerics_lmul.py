"""L-Mul (MATH.md 10.3): exact small cases, bit form == float64 carry form, the error bound,
edge cases, lmul_matmul == a loop of lmul, lmul_attention vs exact attention, the error table
against MATH.md's computed figures, and argument errors."""

import math

import pytest
import torch

from linscan.numerics import (
    format_table,
    fp8_product,
    lmul,
    lmul_attention,
    lmul_matmul,
    lmul_offset,
    lmul_reference,
    offset_exponent,
    relative_error_table,
    round_mantissa,
)
from linscan.numerics.lmul import representable_operands

BITS = [None, 5, 4, 3, 2, 1]


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def same_bits(a, b):
    """Equal as float32 bit patterns (NaNs compared as NaN, signed zeros told apart)."""
    a, b = a.float(), b.float()
    nan = torch.isnan(a) & torch.isnan(b)
    return bool(((a.view(torch.int32) == b.view(torch.int32)) | nan).all())


def wide_operands(n, seed):
    """Random signs, mantissas and exponents over the whole float32 range (under- and overflow),
    plus zeros, subnormals, inf and NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-120, 120, (n,), generator=g).float())
    special = t(0.0, -0.0, 1e-40, -3e-39, math.inf, -math.inf, math.nan, 1.0, 3e38)
    return torch.cat([x, special])


def test_offsets_match_math_md():
    assert [offset_exponent(m) for m in (1, 2, 3, 4, 5, 23, None)] == [1, 2, 3, 3, 4, 4, 4]
    assert lmul_offset() == 0x3F780000
    assert lmul_offset(3) == 0x3F700000 and lmul_offset(4) == 0x3F700000
    assert lmul_offset() >> 16 == 0x3F78 and lmul_offset(3) >> 16 == 0x3F70      # bf16's offsets


@pytest.mark.parametrize("bits", BITS)
def test_one_times_one_and_powers_of_two(bits):
    delta = 2.0 ** -offset_exponent(bits)
    assert lmul(t(1.0), t(1.0), mantissa_bits=bits).item() == 1 + delta
    # x_m = y_m = 0 is not exact either: (1 + 2^-l) 2^{i + j}
    i, j = torch.meshgrid(torch.arange(-8, 9.0), torch.arange(-8, 9.0), indexing="ij")
    out = lmul(torch.exp2(i), torch.exp2(j), mantissa_bits=bits)
    assert torch.equal(out, (1 + delta) * torch.exp2(i + j))


def test_exact_small_cases_full_mantissa():
    # 2 . 3: (1 + 0.5 + 1/16) 4 = 6.25; 1.75 . 1.75 carries: 2 (0.75 + 0.75 + 1/16) = 3.125
    assert lmul(t(2.0, 1.75), t(3.0, 1.75)).tolist() == [6.25, 3.125]
    assert lmul_reference(t(1.75), t(1.75), carry=False).item() == 2.5625     # the literal formula
    # zero error iff x_m y_m = 2^-l, or with a carry (1 - x_m)(1 - y_m) = 2^{1-l}
    assert lmul(t(1.25, 1.5), t(1.25, 1.75)).tolist() == [1.5625, 2.625]
    # multiplying by one is never exact: 1 . v = v (1 + 2^-l / (1 + v_m)) without a carry
    v = t(1.5, 3.0, 0.625)
    assert torch.equal(lmul(t(1.0), v), v + t(1 / 16) * torch.exp2(torch.floor(torch.log2(v))))


def test_signs_and_zeros():
    x, y = t(2.0, -2.0, 2.0, -2.0), t(3.0, 3.0, -3.0, -3.0)
    assert lmul(x, y).tolist() == [6.25, -6.25, -6.25, 6.25]
    z = lmul(t(0.0, -0.0, 0.0, 5.0, 1e-40), t(7.0, 7.0, -7.0, -0.0, 3.0))   # 1e-40: subnormal, flushed
    assert z.tolist() == [0.0] * 5
    assert torch.signbit(z).tolist() == [False, True, True, True, False]


def test_underflow_overflow_inf_nan():
    # flushed below 2^-126: no borrow into the sign, no subnormal bit pattern (exponent field 0)
    tiny = t(1e-30, -1e-30, 2.0 ** -64, 2.0 ** -63, 2.0 ** -63)
    out = lmul(tiny, t(1e-20, 1e-20, 2.0 ** -64, 2.0 ** -64, 2.0 ** -63))
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0, (1 + 1 / 16) * 2.0 ** -126]
    assert lmul(t(1e30, -1e30), t(1e10, 1e10)).tolist() == [math.inf, -math.inf]
    out = lmul(t(math.nan, 1.0, math.inf, math.inf, -math.inf), t(1.0, math.nan, 0.0, -2.0, -2.0))
    assert torch.isnan(out[:3]).all() and out[3:].tolist() == [-math.inf, math.inf]


@pytest.mark.parametrize("bits", [None, 4, 3, 1])
@pytest.mark.parametrize("rounding", ["truncate", "nearest"])
def test_bit_form_equals_float64_carry_form(bits, rounding):
    x, y = wide_operands(20000, seed=1), wide_operands(20000, seed=2)
    ref = lmul_reference(x, y, mantissa_bits=bits, rounding=rounding)
    assert same_bits(lmul(x, y, mantissa_bits=bits, rounding=rounding), ref)
    assert same_bits(ref.float(), ref)                  # every carry-form result fits float32
    formula = lmul_reference(x, y, mantissa_bits=bits, rounding=rounding, carry=False)
    assert not same_bits(formula, ref)                  # ... and the literal formula differs


@pytest.mark.parametrize("bits", [None, 6, 5, 4, 3])
def test_bit_form_is_math_md_carry_form_below_two(bits):
    # MATH.md: s = x_m + y_m + 2^-l >= 1 gives s 2^{e+1}; the add carries once more when s >= 2
    g = torch.Generator().manual_seed(8)
    x, y = torch.exp2(torch.rand(2, 40000, generator=g) * 6 - 3)
    xr, yr = round_mantissa(x, bits).double(), round_mantissa(y, bits).double()
    (xm, xe), (ym, ye) = torch.frexp(xr), torch.frexp(yr)                # |v| = mant 2^exp, mant in [0.5, 1)
    s = (2 * xm - 1) + (2 * ym - 1) + 2.0 ** -offset_exponent(bits)
    e = xe + ye - 2
    single = torch.where(s < 1, torch.ldexp(1 + s, e), torch.ldexp(s, e + 1))
    differs = lmul(x, y, mantissa_bits=bits).double() != single
    assert torch.equal(differs, s > 2)
    assert differs.any() == (bits in (None, 6))         # s > 2 needs m >= 6 bits


@pytest.mark.parametrize("bits", [5, 4, 3])
def test_error_bound_on_representable_operands(bits):
    # |error| <= max(2^-l, ((1 - 2^-l)^2 - 2^{2-l}) / (3 - 2^-l)^2), attained on m-bit pairs
    delta = 2.0 ** -offset_exponent(bits)
    bound = max(delta, ((1 - delta) ** 2 - 4 * delta) / (3 - delta) ** 2)
    x, y = representable_operands(bits)
    err = lmul(x, y, mantissa_bits=bits).double() / (x.double() * y.double()) - 1
    assert err.abs().max().item() == pytest.approx(bound, abs=1e-15)
    assert bound == (161 / 2209 if bits == 5 else 1 / 8)


def test_error_bound_with_truncated_operands():
    # truncation shrinks each operand by < 2^-m relative; the L-Mul error then adds on top
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 20000, generator=g) * torch.exp2(torch.randint(-40, 40, (2, 20000), generator=g).float())
    for bits in (None, 4):
        delta, cut = 2.0 ** -offset_exponent(bits), 2.0 ** -(bits or 23)
        neg = ((1 - delta) ** 2 - 4 * delta) / (3 - delta) ** 2
        err = lmul(x, y, mantissa_bits=bits).double() / (x.double() * y.double()) - 1
        assert err.max().item() <= delta + 1e-12
        assert err.min().item() >= (1 - cut) ** 2 * (1 - neg) - 1 - 1e-12


def test_round_mantissa_and_dtypes():
    x = t(1.0625, 1.1875, 1.3125, 1.9375, -1.1875)
    assert round_mantissa(x, 3).tolist() == [1.0, 1.125, 1.25, 1.875, -1.125]
    assert round_mantissa(x, 3, rounding="nearest").tolist() == [1.0, 1.25, 1.25, 2.0, -1.25]   # ties to even
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        out = lmul(x.to(dtype), t(3.0))
        assert out.dtype == torch.float32 and torch.equal(out, lmul(x.to(dtype).float(), t(3.0)))
    assert lmul(t(2.0)[:, None], t(1.0, 2.0, 3.0)).shape == (1, 3)


def explicit_matmul(a, b, **opts):
    """[M, K] @ [K, N]: every entry a float32 running sum over k of scalar lmul products."""
    M, K = a.shape
    out = torch.zeros(M, b.shape[1])
    for i in range(M):
        for j in range(b.shape[1]):
            acc = torch.zeros((), dtype=torch.float32)
            for k in range(K):
                acc = acc + lmul(a[i, k], b[k, j], **opts)
            out[i, j] = acc
    return out


def test_matmul_equals_loop_and_chunking_is_exact():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 7, generator=g), torch.randn(7, 4, generator=g)
    a[0, 2] = 0.0
    for opts in ({}, {"mantissa_bits": 3}):
        ref = explicit_matmul(a, b, **opts)
        for chunk in (None, 1, 3, 7, 100):
            assert torch.equal(lmul_matmul(a, b, chunk=chunk, **opts), ref)
    a3, b3 = torch.randn(2, 5, 6, generator=g), torch.randn(6, 3, generator=g)     # batch broadcast
    assert torch.equal(lmul_matmul(a3, b3, chunk=2), torch.stack([lmul_matmul(a3[0], b3), lmul_matmul(a3[1], b3)]))
    rel = (lmul_matmul(a3, b3) - a3 @ b3).norm() / (a3 @ b3).norm()
    assert 0 < rel < 0.1


def exact_attention(q, k, v, causal=True):
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-1], s.shape[-1], dtype=torch.bool).triu(1), -math.inf)
    return (s.softmax(-1) @ v).transpose(1, 2)


def test_attention_close_to_exact_and_causal():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 9, 2, d, generator=g) for d in (4, 4, 3))
    for causal in (True, False):
        ref = exact_attention(q, k, v, causal)
        for bits, tol in ((None, 0.06), (4, 0.08)):
            out = lmul_attention(q, k, v, causal=causal, mantissa_bits=bits)
            assert out.shape == (2, 9, 2, 3) and out.dtype == torch.float32
            rel = ((out - ref).norm() / ref.norm()).item()
            assert 0.005 < rel < tol, (causal, bits, rel)
    # QK^T and PV are lmul_matmul: recompose them by hand
    scores = lmul_matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(-1, -2)) * 0.5
    probs = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), -math.inf).softmax(-1)
    assert torch.equal(lmul_attention(q, k, v), lmul_matmul(probs, v.transpose(1, 2)).transpose(1, 2))
    # causal: later tokens cannot change earlier outputs
    v2 = v.clone()
    v2[:, 5:] += 1.0
    assert torch.equal(lmul_attention(q, k, v)[:, :5], lmul_attention(q, k, v2)[:, :5])


def test_attention_one_token_is_one_times_v():
    # the only exact softmax weight is p = 1 (T = 1), and even then 1 . v != v
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 1, 2, 4, generator=g) for _ in range(3))
    out = lmul_attention(q, k, v)
    assert torch.equal(out, lmul(torch.ones(()), v)) and not torch.equal(out, v)


def test_error_table_matches_math_md():
    table = relative_error_table(n=1 << 15)
    pct = {name: {c: 100 * e for c, e in row.items()} for name, row in table.items()}
    # MATH.md 10.3 (computed): continuous carry 3.0 / 4.8, formula 6.5 / 8.4, fp8 3.6 / 7.2
    expected = {"L-Mul m=4": 3.0, "L-Mul m=3": 4.8, "formula m=4 (no carry)": 6.5,
                "formula m=3 (no carry)": 8.4, "fp8 e4m3": 3.6, "fp8 e5m2": 7.2}
    for name, value in expected.items():
        assert pct[name]["continuous"] == pytest.approx(value, abs=0.15), name
    # all m-bit pairs: carry 5.1-5.2, formula 6.9, fp8 1.9 / 3.6 (exact enumerations)
    for name, value in {"L-Mul m=4": 5.15, "L-Mul m=3": 5.2, "formula m=4 (no carry)": 6.9,
                        "formula m=3 (no carry)": 6.9, "fp8 e4m3": 1.9, "fp8 e5m2": 3.6}.items():
        assert pct[name]["representable"] == pytest.approx(value, abs=0.06), name
    # the paper's ordering holds on continuous operands and fails on representable ones
    assert pct["L-Mul m=4"]["continuous"] < pct["fp8 e4m3"]["continuous"]
    assert pct["L-Mul m=3"]["continuous"] < pct["fp8 e5m2"]["continuous"]
    assert pct["L-Mul m=4"]["representable"] > pct["fp8 e4m3"]["representable"]
    # round-to-nearest operands make L-Mul worse (the offset also compensates truncation)
    assert pct["L-Mul m=4 nearest"]["continuous"] > 5 and pct["L-Mul m=3 nearest"]["continuous"] > 5.5


def test_error_table_given_operands_and_format():
    x = t(1.5, -2.0, 0.0, 3.0)
    table = relative_error_table(x, t(1.25), n=64)
    assert set(table["fp8 e4m3"]) == {"continuous", "representable", "given"}
    # zero products are skipped; the rest are computed by hand
    # m = 4 (l = 3): 1.5 . 1.25 = (1 + 0.5 + 0.25 + 0.125) exact, 2 . 1.25 = 2.75 (+10%), 3 . 1.25 exact
    assert table["L-Mul m=4"]["given"] == pytest.approx((0.0 + 0.1 + 0.0) / 3)
    # e5m2 (2 bits): 1.125 rounds to 1 (tie to even); 1.25 . 1.75 = 2.1875 rounds to 2
    assert fp8_product(t(1.125, 1.25), t(1.125, 1.75), torch.float8_e5m2).tolist() == [1.0, 2.0]
    assert fp8_product(t(1.125, 1.25), t(1.125, 1.75), torch.float8_e4m3fn).tolist() == [1.25, 2.25]
    text = format_table(table)
    assert "fp8 e5m2" in text and text.count("%") == 3 * len(table)


def test_errors_name_the_argument():
    x = t(1.0)
    with pytest.raises(ValueError, match="mantissa_bits must be in 1..23 or None, got 0"):
        lmul(x, x, mantissa_bits=0)
    with pytest.raises(ValueError, match="got 24"):
        lmul(x, x, mantissa_bits=24)
    with pytest.raises(TypeError, match="mantissa_bits must be an int .* got float"):
        lmul(x, x, mantissa_bits=4.0)
    with pytest.raises(TypeError, match="got bool"):
        lmul(x, x, mantissa_bits=True)
    with pytest.raises(ValueError, match="rounding must be one of .* got 'up'"):
        lmul(x, x, rounding="up")
    with pytest.raises(TypeError, match="y must be a floating-point tensor, got torch.int64"):
        lmul(x, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"b.shape\[-2\] must equal a.shape\[-1\] = 3"):
        lmul_matmul(torch.ones(2, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="chunk must be a positive int or None, got 0"):
        lmul_matmul(torch.ones(2, 3), torch.ones(3, 2), chunk=0)
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, V\] with B, T, H = \(1, 2, 1\)"):
        lmul_attention(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), torch.ones(1, 3, 1, 4))
    with pytest.raises(ValueError, match="q and k must be"):
        lmul_attention(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 5), torch.ones(1, 2, 1, 4))
    with pytest.raises(ValueError, match="dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got torch.float16"):
        fp8_product(x, x, torch.float16)
    with pytest.raises(ValueError, match="pass both x and y or neither"):
        relative_error_table(x)
