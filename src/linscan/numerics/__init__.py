"""Emulated low-cost arithmetic: L-Mul (multiplication as an integer add, MATH.md 10.3).

    from linscan.numerics import lmul, lmul_matmul, lmul_attention, relative_error_table, format_table

    z = lmul(x, y)                                 # float32, bits(|x|) + bits(|y|) - 0x3F780000
    o = lmul_attention(q, k, v, mantissa_bits=4)   # q, k [B, T, H, K], v [B, T, H, V] -> [B, T, H, V]
    print(format_table(relative_error_table()))    # L-Mul vs float8 e4m3 / e5m2 products

See :mod:`linscan.numerics.lmul` for the bit form, the carry form and the edge cases.
"""

from .lmul import (
    fp8_product,
    format_table,
    lmul,
    lmul_attention,
    lmul_matmul,
    lmul_offset,
    lmul_reference,
    offset_exponent,
    relative_error_table,
    round_mantissa,
)

__all__ = [
    "fp8_product", "format_table", "lmul", "lmul_attention", "lmul_matmul", "lmul_offset",
    "lmul_reference", "offset_exponent", "relative_error_table", "round_mantissa",
]
