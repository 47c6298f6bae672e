"""How many heads make an SSM (MATH.md 10.4): lags vs the recurrence, the weighted SVD fit,
exactness at k = span (and not below), the theorem check, the report module, argument errors."""

import json

import pytest
import torch

from linscan.analysis.heads import (
    check_heads_theorem,
    delay_line,
    fit_heads,
    head_curve,
    head_factors,
    heads_apply,
    lag_apply,
    lag_weights,
    main,
    oscillator,
    random_diagonal,
    span_dimension,
    ssm_lags,
    ssm_run,
)

SYSTEMS = {"delay line": (delay_line(6, 2), 6), "oscillator": (oscillator(3, 3), 4)}


def test_recurrence_equals_lag_convolution():
    g = torch.Generator().manual_seed(0)
    for A, B, C in (delay_line(4, 2), oscillator(2, 3), random_diagonal(5, 2, 3)):
        x = torch.randn(20, B.shape[1], generator=g, dtype=torch.float64)
        torch.testing.assert_close(lag_apply(ssm_lags(A, B, C, 20), x), ssm_run(A, B, C, x), rtol=1e-13, atol=1e-13)
        # lags are C A^l B
        assert torch.allclose(ssm_lags(A, B, C, 4)[3], C @ torch.linalg.matrix_power(A, 3) @ B)


def test_delay_line_lags_are_orthonormal_blocks():
    lags = ssm_lags(*delay_line(6, 2), 10).reshape(10, -1)          # [n, p d]
    gram = lags @ lags.T
    assert torch.equal(gram[:6, :6], 2 * torch.eye(6, dtype=torch.float64))   # ||I_2||_F^2 = 2
    assert not gram[6:].any()


@pytest.mark.parametrize("name", SYSTEMS)
def test_exact_at_span_not_below(name):
    (A, B, C), span = SYSTEMS[name]
    lags = ssm_lags(A, B, C, 32)
    assert span_dimension(lags) == span
    err, fitted = fit_heads(lags, span)
    assert err < 1e-10 and torch.allclose(fitted, lags, atol=1e-12)
    assert fit_heads(lags, span - 1)[0] > 1e-3
    errors = head_curve(lags, range(1, span + 1))
    assert all(a > b for a, b in zip(errors, errors[1:]))           # more heads, smaller error


def test_delay_line_curve_is_the_weighted_tail():
    # drop the span - k lags of least weight (n - l): squared error = their share of sum (n - l)
    n, taps = 32, 6
    share = torch.arange(n, n - taps, -1, dtype=torch.float64)      # n - l for l < taps
    expected = [(share[k:].sum() / share.sum()).sqrt().item() for k in range(taps + 1)]
    assert head_curve(ssm_lags(*delay_line(taps, 2), n), range(taps + 1)) == pytest.approx(expected, abs=1e-12)
    # MATH.md's 0.82, 0.64, 0.47, 0.31, 0.15 are these squared (the residual energy share)
    assert [round(e * e, 2) for e in expected[1:6]] == [0.82, 0.64, 0.47, 0.31, 0.15]


def test_fit_is_the_best_weighted_rank_k():
    # any other rank-k fit (here: the unweighted SVD) has a larger weighted error
    lags = ssm_lags(*random_diagonal(6, 3, 3), 32)
    n = lags.shape[0]
    U, S, Vh = torch.linalg.svd(lags.reshape(n, -1), full_matrices=False)
    w = lag_weights(n)[:, None]
    for k in (1, 2, 3):
        other = (U[:, :k] * S[:k]) @ Vh[:k]
        other_err = (w * (lags.reshape(n, -1) - other)).norm() / (w * lags.reshape(n, -1)).norm()
        assert fit_heads(lags, k)[0] < other_err.item()


@pytest.mark.parametrize("name", ["delay line", "oscillator", "random diagonal"])
def test_heads_reproduce_the_ssm_at_span(name):
    (A, B, C), span = {**SYSTEMS, "random diagonal": (random_diagonal(6, 3, 3), 6)}[name]
    assert check_heads_theorem(A, B, C, 32, span) < 1e-13
    assert check_heads_theorem(A, B, C, 32, span - 1) > 1e-6
    # heads_apply with the factors is lag_apply with the fitted lags
    coeffs, values = head_factors(ssm_lags(A, B, C, 16), 2)
    x = torch.randn(16, B.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fitted = fit_heads(ssm_lags(A, B, C, 16), 2)[1]
    torch.testing.assert_close(heads_apply(coeffs, values, x), lag_apply(fitted, x), rtol=1e-12, atol=1e-12)


def test_main_writes_json_and_png(tmp_path, capsys):
    report = main(["--out", str(tmp_path / "out"), "--n", "16"])
    text = capsys.readouterr().out
    assert "delay line" in text and "oscillator" in text and "random diagonal" in text
    saved = json.loads((tmp_path / "out" / "heads.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["oscillator"]["errors"][3] < 1e-10 < saved["oscillator"]["errors"][2]
    assert all(r["theorem_check"] < 1e-13 for r in saved.values())
    assert (tmp_path / "out" / "heads.png").read_bytes()[:4] == b"\x89PNG"


def test_errors_name_the_argument():
    lags = ssm_lags(*oscillator(3, 3), 8)                           # [8, 3, 3]: k <= min(8, 9)
    with pytest.raises(ValueError, match=r"k must be in \[0, 8\], got 9"):
        fit_heads(lags, 9)
    with pytest.raises(ValueError, match=r"k must be in \[0, 8\], got -1"):
        head_curve(lags, [1, -1])
    with pytest.raises(TypeError, match="k must be an int, got float"):
        fit_heads(lags, 2.0)
    with pytest.raises(TypeError, match="k must be an int, got bool"):
        fit_heads(lags, True)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        ssm_lags(*oscillator(), 0)
    with pytest.raises(ValueError, match=r"A, B, C must be \[N, N\], \[N, d\], \[p, N\], got \(4, 4\), \(3, 3\)"):
        ssm_lags(torch.eye(4), torch.ones(3, 3), torch.ones(3, 4), 4)
    with pytest.raises(ValueError, match=r"lags must be \[n, p, d\] with n >= 1, got \(8, 9\)"):
        fit_heads(lags.reshape(8, 9), 1)
    with pytest.raises(ValueError, match=r"x must be \[T, d\] with d = 3, got \(5, 2\)"):
        lag_apply(lags, torch.ones(5, 2))
    with pytest.raises(ValueError, match="x has T = 9 steps, more than the n = 8 lags"):
        lag_apply(lags, torch.ones(9, 3))
    assert fit_heads(lags, 0)[0] == pytest.approx(1.0)
