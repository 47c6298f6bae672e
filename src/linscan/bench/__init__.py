"""Benchmarks: linscan's ops (and later its models) side by side with peers.

    linscan bench ops [--family decay,delta,mlstm] [--T 1024,4096,16384] [--out bench.json]

:mod:`linscan.bench.ops` holds the op benchmark, :mod:`linscan.bench.timing`
the timers and memory probes (how and what they measure is documented
there). Peer libraries (fla, mlstm_kernels) are imported only inside these
modules, only when a benchmark asks for them, and are optional: a missing
peer becomes a row that says "not installed".
"""
