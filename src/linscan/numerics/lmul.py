"""L-Mul: a float multiplication done as one integer addition (MATH.md 10.3).

With x = (1 + x_m) 2^{x_e} and y = (1 + y_m) 2^{y_e} (m-bit mantissas x_m, y_m in [0, 1)),

    exact    x y   = (1 + x_m + y_m + x_m y_m)  2^{x_e + y_e}
    L-Mul    x . y = (1 + x_m + y_m + 2^{-l})   2^{x_e + y_e},   l(m) = m (m <= 3), 3 (m = 4), 4 (m > 4)

the product x_m y_m (the only multiplication) replaced by the constant 2^{-l}. On float32 bit
patterns (sign | 8-bit biased exponent | 23-bit mantissa, read as integers) this is

    bits(|x . y|) = bits(|x|) + bits(|y|) - C,   C = 0x3F800000 - 2^{23 - l(m)},   sign = XOR

0x3F800000 removes the second exponent bias; -2^{23 - l} adds 2^{-l} in the mantissa field.

Carry form. With s = x_m + y_m + 2^{-l} and e = x_e + y_e, the mantissa field overflows into
the exponent field when s >= 1, and the integer add gives s 2^{e+1} (MATH.md's carry form)
instead of the formula's (1 + s) 2^e (a mantissa >= 2). It can overflow twice: when s >= 2
(x_m + y_m >= 2 - 2^{-l}, both near 1; possible only for m >= 6 or the full mantissa, since
for m <= 5 s <= 2, and at s = 2 both readings agree) the add gives (s - 1) 2^{e+2}, not s 2^{e+1}
(a relative difference of up to 2^{-l}/2; about 0.2% of uniform mantissa pairs for l = 4). So
the bit form is exactly (1 + frac(s)) 2^{e + floor(s)}: MATH.md's carry form for s < 2, and the
one-more-carry form above. :func:`lmul_reference` computes this from mantissas and exponents in
float64; every result fits float32, and the tests compare bit for bit (and check that MATH.md's
single-carry formula differs exactly where s >= 2).

Error bound. The relative error is (2^{-l} - x_m y_m) / ((1 + x_m)(1 + y_m)) without a carry,
(2^{1-l} - (1 - x_m)(1 - y_m)) / ((1 + x_m)(1 + y_m)) with one, and in (0, 2^{-l}) with two,
so |error| <= max(2^{-l}, ((1 - 2^{-l})^2 - 2^{2-l}) / (3 - 2^{-l})^2): 2^{-l} at x_m = y_m = 0
(1 . 1 = 1 + 2^{-l}); the other term (a product too small) at x_m = y_m = (1 - 2^{-l}) / 2,
on either side of the carry. That is 161/2209 = 7.3% for l = 4 and 2^{-l} = 12.5% for l = 3
(not the 1/4 the dropped x_m y_m alone might suggest: the offset and the carry both help). A
product is exact when x_m y_m = 2^{-l} (1.25 . 1.25 for l = 4) or, with a carry,
(1 - x_m)(1 - y_m) = 2^{1-l} (1.5 . 1.75 for l = 4); multiplying by one never is:
1 . v = v (1 + 2^{-l} / (1 + v_m)) without a carry, 2 (v_m + 2^{-l}) 2^{v_e} != v with one.

Mantissa bits. ``mantissa_bits=m`` first cuts each float32 operand to m mantissa bits, then adds
with l(m); the result then has at most m mantissa bits (l <= m), so it is the exact L-Mul of the
cut operands. ``rounding="truncate"`` (the default) drops the low bits, as hardware taking the
top m bits does, and as the offset assumes: 2^{-l} is also meant to restore what truncation
removes on average. ``rounding="nearest"`` rounds half to even, a smaller error on the
operands that makes the products *worse* (mean relative error 5.3% instead of 3.0% for m = 4,
5.7% instead of 4.8% for m = 3, log-uniform operands: the offset then over-corrects).
``mantissa_bits=None`` keeps all 23 bits (l = 4).

Edge cases (the bare integer add gets all of them wrong): a zero operand gives a (signed) zero,
as does a subnormal one (flushed: the add assumes the hidden bit); a result below the smallest
normal float32 (2^-126) is flushed to zero instead of borrowing into the sign bit; one at or
above 2^128 becomes inf; inf or NaN operands follow IEEE (the ordinary product: NaN propagates,
inf . 0 = NaN, inf . y = +-inf). All arithmetic is float32 (inputs of other dtypes are cast).

    from linscan.numerics import lmul, lmul_matmul, lmul_attention, relative_error_table
"""

from __future__ import annotations

import math

import torch

ONE_BITS = 0x3F800000          # float32 1.0: the exponent bias in place
MIN_NORMAL_BITS = 0x00800000   # float32 2^-126
INF_BITS = 0x7F800000
MANTISSA = 23                  # float32 mantissa bits
ROUNDINGS = ("truncate", "nearest")
BLOCK_ELEMENTS = 1 << 22       # lmul_matmul: products held at once (int64 temporaries: ~32 MiB each)


def offset_exponent(mantissa_bits: int | None) -> int:
    """l(m) of MATH.md 10.3: the added constant is 2^{-l}. ``None`` is the full 23-bit mantissa."""
    m = _check_bits(mantissa_bits)
    return m if m <= 3 else (3 if m == 4 else 4)


def lmul_offset(mantissa_bits: int | None = None) -> int:
    """The integer C with bits(|x . y|) = bits(|x|) + bits(|y|) - C (0x3F780000 for 23 bits)."""
    return ONE_BITS - (1 << (MANTISSA - offset_exponent(mantissa_bits)))


def round_mantissa(x: torch.Tensor, mantissa_bits: int | None = None, *, rounding: str = "truncate") -> torch.Tensor:
    """``x (...) -> (...)`` float32, cut to ``mantissa_bits`` mantissa bits (exponent range kept;
    rounding up may reach the next power of two, or inf above the largest float32)."""
    x = _as_float32(x, "x")
    bits = _magnitude_bits(x, _check_bits(mantissa_bits), _check_rounding(rounding))
    magnitude = bits.to(torch.int32).view(torch.float32)
    out = torch.where(x.view(torch.int32) < 0, -magnitude, magnitude)
    return torch.where(torch.isfinite(x), out, x)


def lmul(x: torch.Tensor, y: torch.Tensor, *, mantissa_bits: int | None = None,
         rounding: str = "truncate") -> torch.Tensor:
    """L-Mul product of ``x`` and ``y`` (broadcast), float32, by the integer add of their bits.

    Args:
        x, y: float tensors of broadcastable shapes (any float dtype; computed in float32).
        mantissa_bits: operand mantissa bits m in 1..23, or None for all 23 (l = 4).
        rounding: how operands are cut to m bits, "truncate" (default) or "nearest".
    Returns:
        float32 tensor of the broadcast shape; see the module docstring for zeros, underflow,
        overflow, inf and NaN.
    """
    # 1. operands: float32, broadcast; magnitudes as integers cut to m bits (0: zero or subnormal)
    x, y = torch.broadcast_tensors(_as_float32(x, "x"), _as_float32(y, "y"))
    m, rounding = _check_bits(mantissa_bits), _check_rounding(rounding)
    xb, yb = _magnitude_bits(x, m, rounding), _magnitude_bits(y, m, rounding)
    # 2. the add, in int64 so that no sum wraps; underflow flushed, overflow saturated to inf
    s = xb + yb - lmul_offset(m)
    s = torch.where((s < MIN_NORMAL_BITS) | (xb == 0) | (yb == 0), 0, s).clamp_(max=INF_BITS)
    magnitude = s.to(torch.int32).view(torch.float32)
    # 3. sign = XOR of the signs (negation flips only the sign bit, zeros included)
    negative = (x.view(torch.int32) ^ y.view(torch.int32)) < 0
    out = torch.where(negative, -magnitude, magnitude)
    # 4. inf and NaN operands: the IEEE product
    return torch.where(torch.isfinite(x) & torch.isfinite(y), out, x * y)


def lmul_reference(x: torch.Tensor, y: torch.Tensor, *, mantissa_bits: int | None = None,
                   rounding: str = "truncate", carry: bool = True) -> torch.Tensor:
    """The L-Mul formula in float64 from mantissas and exponents: ``(...) -> (...)`` float64.

    ``carry=True`` is what the integer add computes, (1 + frac(s)) 2^{e + floor(s)} with
    s = x_m + y_m + 2^{-l}, e = x_e + y_e (equal to :func:`lmul` bit for bit, same edge cases);
    ``carry=False`` the literal formula (1 + s) 2^e, mantissa >= 2 allowed. Operands are cast
    to float32 first, as in :func:`lmul`.
    """
    # 1. operands: float32 values, subnormals flushed, then (mantissa fraction, exponent) rounded
    x, y = torch.broadcast_tensors(_as_float32(x, "x"), _as_float32(y, "y"))
    m, rounding = _check_bits(mantissa_bits), _check_rounding(rounding)
    xm, xe, x_zero = _fraction_exponent(x.double(), m, rounding)
    ym, ye, y_zero = _fraction_exponent(y.double(), m, rounding)
    # 2. the formula; the carry form moves the integer part of s into the exponent (s < 2.07)
    s = xm + ym + 2.0 ** -offset_exponent(m)
    e = xe + ye
    if carry:
        carries = torch.floor(s)
        value = torch.ldexp(1 + s - carries, e + carries.to(e.dtype))
    else:
        value = torch.ldexp(1 + s, e)
    # 3. the edge cases of lmul: flush, saturate, zeros, signs, inf and NaN
    value = torch.where((value < 2.0 ** -126) | x_zero | y_zero, 0.0, value)
    value = torch.where(value >= 2.0 ** 128, math.inf, value)
    negative = (x.view(torch.int32) ^ y.view(torch.int32)) < 0
    value = torch.where(negative, -value, value)
    return torch.where(torch.isfinite(x) & torch.isfinite(y), value, x.double() * y.double())


def lmul_matmul(a: torch.Tensor, b: torch.Tensor, *, mantissa_bits: int | None = None,
                rounding: str = "truncate", chunk: int | None = None) -> torch.Tensor:
    """``a [..., M, K] @ b [..., K, N] -> [..., M, N]`` float32, every product an :func:`lmul`.

    The products are summed in float32 in the order k = 0, 1, ..., K - 1 (so the result does not
    depend on ``chunk``); ``chunk`` products along K are formed at a time ([..., M, chunk, N]),
    by default as many as keep that block near 4M elements (at least one). Batch dims broadcast.
    """
    # 1. shapes
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"lmul_matmul: a and b need >= 2 dims, got a {tuple(a.shape)}, b {tuple(b.shape)}")
    M, K = a.shape[-2:]
    if b.shape[-2] != K:
        raise ValueError(f"lmul_matmul: b.shape[-2] must equal a.shape[-1] = {K}, got b {tuple(b.shape)}")
    N = b.shape[-1]
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if chunk is None:
        chunk = max(1, BLOCK_ELEMENTS // max(1, math.prod(batch) * M * N))
    elif isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"lmul_matmul: chunk must be a positive int or None, got {chunk!r}")
    # 2. blocks of products along K, added one k at a time
    a, b = _as_float32(a, "a"), _as_float32(b, "b")
    out = torch.zeros(*batch, M, N, dtype=torch.float32, device=a.device)
    for k0 in range(0, K, chunk):
        k1 = min(K, k0 + chunk)
        products = lmul(a[..., :, k0:k1, None], b[..., None, k0:k1, :],   # [..., M, c, N]
                        mantissa_bits=mantissa_bits, rounding=rounding)
        for j in range(k1 - k0):
            out += products[..., :, j, :]
    return out


def lmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                   scale: float | None = None, mantissa_bits: int | None = None,
                   rounding: str = "truncate") -> torch.Tensor:
    """Softmax attention with QK^T and PV by :func:`lmul_matmul`; softmax in float32.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (any float dtype).
        causal: mask keys after the query.
        scale: multiplies the scores (exactly, after the L-Mul matmul); default K^-0.5.
        mantissa_bits, rounding: as in :func:`lmul`.
    Returns:
        [B, T, H, V] float32.
    """
    # 1. shapes
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError("lmul_attention: q and k must be [B, T, H, K] of one shape, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"lmul_attention: v must be [B, T, H, V] with B, T, H = {tuple(q.shape[:3])}, "
                         f"got {tuple(v.shape)}")
    T, K = q.shape[1], q.shape[3]
    scale = K ** -0.5 if scale is None else scale
    opts = dict(mantissa_bits=mantissa_bits, rounding=rounding)
    # 2. scores and probabilities, [B, H, T, T]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))                        # (B, H, T, *)
    scores = lmul_matmul(q, k.transpose(-1, -2), **opts) * scale
    if causal:
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, -math.inf)
    probs = torch.softmax(scores, dim=-1)
    # 3. weighted values (masked probabilities are exact zeros, and lmul keeps them zero)
    return lmul_matmul(probs, v, **opts).transpose(1, 2)                    # (B, T, H, V)


# ---------------------------------------------------------------------------------------------
# Relative error of L-Mul against float8 products


def fp8_product(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(...) -> (...)`` float32: x and y rounded to the float8 ``dtype``, multiplied in float32
    (exact), the product rounded to ``dtype`` (torch's casts: nearest even, no scaling)."""
    if dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"fp8_product: dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    xq = _as_float32(x, "x").to(dtype).float()
    yq = _as_float32(y, "y").to(dtype).float()
    return (xq * yq).to(dtype).float()


def _method(kind: str, bits: int, **opts):
    """One row of the error table: (product function, mantissa bits of its representable operands)."""
    if kind == "lmul":
        return (lambda x, y: lmul(x, y, mantissa_bits=bits, **opts)), bits
    if kind == "formula":
        return (lambda x, y: lmul_reference(x, y, mantissa_bits=bits, carry=False, **opts)), bits
    dtype = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[kind]
    return (lambda x, y: fp8_product(x, y, dtype)), bits


METHODS = {
    "L-Mul m=4": _method("lmul", 4),
    "L-Mul m=3": _method("lmul", 3),
    "L-Mul m=4 nearest": _method("lmul", 4, rounding="nearest"),
    "L-Mul m=3 nearest": _method("lmul", 3, rounding="nearest"),
    "formula m=4 (no carry)": _method("formula", 4),
    "formula m=3 (no carry)": _method("formula", 3),
    "fp8 e4m3": _method("e4m3", 3),
    "fp8 e5m2": _method("e5m2", 2),
}


def mean_relative_error(approx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean of |approx / (x y) - 1| over the pairs with a nonzero exact product (float64)."""
    exact = x.double() * y.double()
    keep = exact != 0
    return (approx.double()[keep] / exact[keep] - 1).abs().mean().item()


def continuous_operands(n: int, *, binades: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 tensors [n]: log-uniform magnitudes over ``binades`` binades centred on 1
    (so mantissas follow Benford's 1/(1 + x_m) density), random signs."""
    g = torch.Generator().manual_seed(seed)
    logs = (torch.rand(2, n, generator=g, dtype=torch.float64) - 0.5) * binades
    signs = torch.randint(0, 2, (2, n), generator=g) * 2 - 1
    x, y = (signs * torch.exp2(logs)).float()
    return x, y


def representable_operands(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs of mantissas with ``bits`` bits in [1, 2): two float32 tensors [4^bits]. The
    relative errors of L-Mul and fp8 products do not depend on the exponents (in range)."""
    grid = 1 + torch.arange(2 ** bits, dtype=torch.float32) / 2 ** bits
    x, y = torch.meshgrid(grid, grid, indexing="ij")
    return x.reshape(-1), y.reshape(-1)


def relative_error_table(x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                         n: int = 1 << 16, binades: int = 4, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean relative error of every method in :data:`METHODS` -> {method: {operands: error}}.

    Operand sets: "continuous" (:func:`continuous_operands`, n pairs), "representable" (all
    pairs of each method's own m-bit mantissas: :func:`representable_operands`), and "given"
    (``x``, ``y`` elementwise after broadcasting, e.g. weights and activations; fp8 products see
    torch's cast, so values outside the fp8 range saturate or underflow) when both are passed.
    """
    if (x is None) != (y is None):
        raise ValueError("relative_error_table: pass both x and y or neither, "
                         f"got x {type(x).__name__}, y {type(y).__name__}")
    xc, yc = continuous_operands(n, binades=binades, seed=seed)
    sets = {"continuous": lambda bits: (xc, yc), "representable": representable_operands}
    if x is not None:
        xg, yg = (t.reshape(-1) for t in torch.broadcast_tensors(_as_float32(x, "x"), _as_float32(y, "y")))
        sets["given"] = lambda bits: (xg, yg)
    table = {}
    for name, (product, bits) in METHODS.items():
        table[name] = {}
        for label, operands in sets.items():
            xs, ys = operands(bits)
            table[name][label] = mean_relative_error(product(xs, ys), xs, ys)
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """Text table of :func:`relative_error_table`'s result, errors in percent."""
    columns = list(next(iter(table.values())))
    lines = ["method".ljust(24) + "".join(c.rjust(15) for c in columns)]
    for name, row in table.items():
        lines.append(name.ljust(24) + "".join(f"{100 * row[c]:14.2f}%" for c in columns))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_bits(mantissa_bits: int | None) -> int:
    """Mantissa bits as an int in 1..23 (None -> 23)."""
    if mantissa_bits is None:
        return MANTISSA
    if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, int):
        raise TypeError(f"mantissa_bits must be an int in 1..23 or None, got {type(mantissa_bits).__name__}")
    if not 1 <= mantissa_bits <= MANTISSA:
        raise ValueError(f"mantissa_bits must be in 1..23 or None, got {mantissa_bits}")
    return mantissa_bits


def _check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return rounding


def _as_float32(t: torch.Tensor, name: str) -> torch.Tensor:
    """A float tensor as contiguous float32 (bit views need contiguity)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    return t.to(torch.float32).contiguous()


def _magnitude_bits(x: torch.Tensor, m: int, rounding: str) -> torch.Tensor:
    """float32 ``x (...)`` -> int64 ``(...)``: bits of |x| cut to m mantissa bits; 0 for zeros
    and subnormals (the add assumes the hidden bit). Rounding may carry into the exponent."""
    bits = x.view(torch.int32).to(torch.int64) & 0x7FFFFFFF
    drop = MANTISSA - m
    cut = bits
    if drop:
        if rounding == "nearest":      # add just under half an ulp, plus one if the kept lsb is odd
            cut = cut + ((1 << (drop - 1)) - 1) + ((cut >> drop) & 1)
        cut = cut & ~((1 << drop) - 1)
    return torch.where(bits < MIN_NORMAL_BITS, 0, cut)


def _fraction_exponent(x: torch.Tensor, m: int, rounding: str):
    """float64 ``x (...)`` -> (x_m float64, x_e int, zero bool): |x| = (1 + x_m) 2^{x_e} with
    x_m rounded to m bits (float arithmetic, independent of the bit tricks); zero marks zeros
    and float32 subnormals."""
    mant, exp = torch.frexp(x.abs())                          # |x| = mant 2^exp, mant in [0.5, 1)
    frac = (2 * mant - 1) * 2.0 ** m
    frac = torch.floor(frac) if rounding == "truncate" else torch.round(frac)   # round: half to even
    frac = frac / 2.0 ** m
    exp = torch.where(frac >= 1, exp, exp - 1)
    frac = torch.where(frac >= 1, frac - 1, frac)
    return frac, exp, x.abs() < 2.0 ** -126
