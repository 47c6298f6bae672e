"""Analyses of sequence mixers (no training): what a mechanism can and cannot represent.

    from linscan.analysis.heads import ssm_lags, fit_heads, head_curve   # MATH.md 10.4
    python -m linscan.analysis.heads --out DIR                            # table, JSON, PNG

Submodules are imported on demand (so that ``python -m`` runs them without a second copy).
"""
