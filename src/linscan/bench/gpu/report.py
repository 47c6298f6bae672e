"""The GPU benchmark's printed table and JSON file (the report dict is built by :mod:`linscan.bench.gpu.cli`)."""

from __future__ import annotations

import json
import math
import os

COLUMNS = [("variant", 14), ("T", 6), ("B", 4), ("fwd ms", 9), ("f+b ms", 9), ("peer f+b", 9),
           ("ours/peer", 9), ("o diff", 7), ("SDPA f+b", 9), ("MiB ours/peer/SDPA", 20), ("TFLOP/s", 8),
           ("%mm", 5), ("GB/s", 7), ("%bw", 5)]
LEGEND = ("f+b: fwd+bwd; o diff: rel. L2 difference of the peer's output from linscan's (same inputs); "
          "MiB: peak fwd+bwd memory above the inputs; TFLOP/s, GB/s: linscan fwd+bwd, nominal counts "
          "(linscan.bench.gpu.metrics), % of the measured matmul (mm) and copy (bw) ceilings")


def write_json(report: dict, path: str) -> None:
    """Write ``report`` to ``path`` atomically (a crash mid-write leaves the previous file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(report, fh, indent=1, default=_jsonable)
    os.replace(path + ".tmp", path)


def _jsonable(x):
    return str(x)


def _num(x, fmt: str) -> str:
    """``x`` formatted; "-" for None or NaN; values too small for a fixed-point ``fmt`` in e-notation."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if fmt.endswith("f") and x != 0 and abs(x) < 0.5 * 10 ** -int(fmt[1:-1] or 0):
        return format(x, ".1e")
    return format(x, fmt)


def _short(status: str | None) -> str:
    """A table cell for a measurement without numbers: its status, shortened."""
    if status is None:
        return "-"
    for prefix, cell in (("not timed", "FAILED"), ("skipped", "skipped"), ("not installed", "n/inst"),
                         ("no peers", "-"), ("OOM", "OOM"), ("import failed", "imp.err")):
        if status.startswith(prefix):
            return cell
    return "error"


def _value(m: dict | None, key: str, fmt: str, scale: float = 1.0) -> str:
    if m is None:
        return "-"
    value = m.get(key)
    if value is None:
        return _short(m.get("status")) if m.get("status") != "ok" else "-"
    return format(value * scale, fmt)


def row_cells(row: dict, sdpa: dict | None) -> list[str]:
    """The cells of one variant x T row of the table (see COLUMNS)."""
    ours, peer = row["ours"], row.get("peer")
    ratio = None
    if peer and ours.get("fwdbwd_ms") and peer.get("fwdbwd_ms") and ours["status"] == peer["status"] == "ok":
        ratio = ours["fwdbwd_ms"] / peer["fwdbwd_ms"]
    mib = "/".join(_num(None if m is None or m.get("peak_bytes") is None else m["peak_bytes"] / 2 ** 20, ".0f")
                   for m in (ours, peer, sdpa))
    r = (ours.get("fwdbwd_rates") or {})
    return [row["variant"], str(row["T"]), str(row["B"]), _value(ours, "fwd_ms", ".3f"),
            _value(ours, "fwdbwd_ms", ".3f"), _value(peer, "fwdbwd_ms", ".3f"), _num(ratio, ".2f"),
            _num(row.get("peer_o_diff"), ".0e"), _value(sdpa, "fwdbwd_ms", ".3f"), mib, _num(r.get("tflops"), ".1f"),
            _num(None if r.get("frac_matmul") is None else 100 * r["frac_matmul"], ".0f"),
            _num(r.get("gbs"), ".0f"), _num(None if r.get("frac_copy") is None else 100 * r["frac_copy"], ".0f")]


def format_table(report: dict) -> str:
    """Header, gate, rows (variant x T), bars, and notes for every status that is not "ok"."""
    m, c = report["setup"], report["ceilings"]
    lines = [f"linscan bench gpu ({'smoke, ' if m['smoke'] else ''}{report['device']['name']}): {m['dtype']}, "
             f"H={m['H']} K={m['K']} V={m['V']}, B*T={m['tokens']}, medians ({m['timing']})",
             f"ceilings: matmul {_num(c.get('matmul_tflops'), '.1f')} TFLOP/s ({c['matmul_n']}^3), "
             f"copy {_num(c.get('copy_gbs'), '.0f')} GB/s ({c['copy_bytes'] / 2 ** 20:.0f} MiB)"
             + ("" if c.get("status") == "ok" else f" [{c.get('status')}]"), "", "gate (rel. L2 vs float64; "
             "PASS when every error <= 2 x chunk-in-bf16's + 1e-3)"]
    for g in report["gate"]:
        lines.append("  " + gate_line(g))
    sdpa = {row["T"]: row["ours"] for row in report["rows"] if row["variant"] == "sdpa"}
    lines += ["", "  ".join(f"{name:>{w}}" for name, w in COLUMNS)]
    for row in report["rows"]:
        if row["variant"] != "sdpa":
            cells = row_cells(row, sdpa.get(row["T"]))
            lines.append("  ".join(f"{cell:>{w}}" for cell, (_, w) in zip(cells, COLUMNS)))
    lines.append(LEGEND)
    lines.append(first_calls_line(report["rows"]))
    lines += ["", "bars (fwd+bwd)"]
    for b in report["bars"]:
        why = f"  ({b['why']})" if b["why"] else ""
        lines.append(f"  {b['variant']:<14} T={b['T']:<6} {b['bar']:<56} {_num(b['value'], '.3f'):>7} "
                     f"{b['op']} {b['threshold']:g}  {b['status']}{why}")
    lines.append(f"  summary: {report['bars_summary']}")
    notes = sorted({f"{row['variant']} {m_['impl']}: {m_['status']}" for row in report["rows"]
                    for m_ in (row["ours"], row.get("peer")) if m_ is not None and m_["status"] != "ok"})
    if notes:
        lines += ["", "notes"] + [f"  {n}" for n in notes]
    return "\n".join(lines)


def gate_line(g: dict) -> str:
    """One gate result: status, o and worst-gradient errors (triton vs chunk-in-bf16), the peer's o error."""
    head = f"{g['variant']:<14} {g['status']}"
    if not g["errors"]:
        return head
    low = g["errors_reference_low"]
    grads = {k: v for k, v in g["errors"].items() if k != "o"}
    worst = max(grads, key=lambda k: -1.0 if math.isnan(grads[k]) else grads[k], default=None)
    text = f"{head:<24} o {g['errors']['o']:.2e} (bf16 chunk {low.get('o', math.nan):.2e})"
    if worst is not None:
        text += f", worst grad {worst} {grads[worst]:.2e} (bf16 chunk {low.get(worst, math.nan):.2e})"
    if g["failing"]:
        text += f", failing: {','.join(g['failing'])}"
    return text


def first_calls_line(rows: list[dict]) -> str:
    """Seconds spent in the untimed first calls (compilation, autotuning), linscan's and the peers'."""
    total = {"ours": 0.0, "peer": 0.0}
    for row in rows:
        for side in total:
            m = row.get(side)
            if m is not None and m.get("first_calls_s") is not None:
                total[side] += m["first_calls_s"]
    return (f"first calls (compile, autotune; not timed): linscan/SDPA {total['ours']:.1f} s, "
            f"peers {total['peer']:.1f} s")
