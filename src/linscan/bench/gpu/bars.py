"""The acceptance bars of the GPU benchmark (issue 3), evaluated on its rows; pure, CPU-testable.

A row is one variant at one T (the shape :mod:`linscan.bench.gpu` writes):

    {"variant": "decay_scalar", "T": 8192, "B": 8,
     "ours": {"impl": ..., "status": "ok", "fwd_ms": ..., "fwdbwd_ms": ..., "peak_bytes": ...},
     "peer": None | {the same keys}}

and the row of variant ``"sdpa"`` at the same T is the common reference. Bars, each
PASS / FAIL / n/a (with why):

    1. ours / peer fwd+bwd time <= 1.0, at every T (variants that have a peer)
    2. ours / SDPA fwd+bwd time < 1.0, at every T >= ``sdpa_from_T``
    3. ours / SDPA fwd+bwd peak memory < 1.0, at T == ``memory_T``
"""

from __future__ import annotations

SDPA = "sdpa"


def _value(measure: dict | None, key: str, who: str) -> tuple[float | None, str]:
    if measure is None:
        return None, f"no {who}"
    if measure.get("status") != "ok":
        return None, f"{measure.get('impl', who)}: {measure.get('status')}"
    value = measure.get(key)
    return (value, "") if value is not None else (None, f"{measure.get('impl', who)}: {key} not measured")


def _bar(row: dict, name: str, num: dict | None, den: dict | None, key: str, op: str, who: str) -> dict:
    a, why_a = _value(num, key, "linscan")
    b, why_b = _value(den, key, who)
    value = a / b if a is not None and b else None
    why = why_a or why_b or ("" if value is not None else f"{who}: {key} is zero")
    ok = value is not None and (value <= 1.0 if op == "<=" else value < 1.0)
    return {"variant": row["variant"], "T": row["T"], "bar": name, "value": value, "op": op,
            "threshold": 1.0, "status": "n/a" if value is None else ("PASS" if ok else "FAIL"), "why": why}


def evaluate_bars(rows: list[dict], *, sdpa_from_T: int, memory_T: int) -> list[dict]:
    """Every bar (module docstring) for every variant and T present in ``rows``, in row order."""
    sdpa = {row["T"]: row["ours"] for row in rows if row["variant"] == SDPA}
    out = []
    for row in rows:
        if row["variant"] == SDPA:
            continue
        T, ours, peer = row["T"], row["ours"], row.get("peer")
        if peer is not None:
            label = peer.get("impl", "peer")
            out.append(_bar(row, f"time linscan / {label} (fwd+bwd)", ours, peer, "fwdbwd_ms", "<=", label))
        if T >= sdpa_from_T:
            out.append(_bar(row, "time linscan / SDPA (fwd+bwd)", ours, sdpa.get(T), "fwdbwd_ms", "<", "SDPA"))
        if T == memory_T:
            out.append(_bar(row, "peak memory linscan / SDPA (fwd+bwd)", ours, sdpa.get(T), "peak_bytes", "<",
                            "SDPA"))
    return out


def summary(bars: list[dict]) -> dict[str, int]:
    """How many bars passed, failed, and could not be evaluated."""
    return {status: sum(b["status"] == status for b in bars) for status in ("PASS", "FAIL", "n/a")}
