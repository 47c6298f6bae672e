"""AOT-compile every kernel for sm_90 (no GPU needed) to catch compile-time errors."""
import os, sys, time
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from linscan.ops.shared import triton as sh
from linscan.ops.decay import triton_fwd as F, triton_bwd as Bw, triton_step as St

target = GPUTarget("cuda", 90, 32)
HALF = {"q_ptr", "k_ptr", "v_ptr", "o_ptr", "do_ptr", "dq_ptr", "dk_ptr", "dv_ptr", "x_ptr", "y_ptr"}
INT_PTR = {"cu_ptr", "index_ptr", "offsets_ptr"}

def compile_kernel(fn, constexprs, half="bf16"):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if name in INT_PTR else (f"*{half}" if name in HALF else "*fp32")
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    t = time.time()
    k = triton.compile(ASTSource(fn, sig, constexprs), target=target, options={"num_warps": int(os.environ.get("NW", 4))})
    regs = k.n_regs if hasattr(k, "n_regs") else "?"
    print(f"ok {fn.__name__:28s} {constexprs} {time.time()-t:.1f}s spills={getattr(k.metadata, 'n_spills', '?') if False else ''}", flush=True)
    return k

C, S, BK, BV = 64, 16, 64, 64
for gate in (0, 1, 2):
    for half, prec in (("bf16", "tf32"), ("fp32", "ieee")):
        compile_kernel(F._writes_kernel, dict(C=C, BK=BK, BV=BV, GATE=gate, FROM_END=True, PREC=prec), half)
        compile_kernel(F._writes_kernel, dict(C=C, BK=BK, BV=BV, GATE=gate, FROM_END=False, PREC=prec), half)
        compile_kernel(F._scores_kernel, dict(C=C, S=S, BK=32 if gate == 2 else BK, GATE=gate, PREC=prec), half)
        compile_kernel(F._output_kernel, dict(C=C, BK=BK, BV=BV, GATE=gate, PREC=prec), half)
        compile_kernel(Bw._dv_kernel, dict(C=C, BK=BK, BV=BV, GATE=gate, PREC=prec), half)
        compile_kernel(Bw._dqk_kernel, dict(C=C, BK=32, BV=BV, GATE=gate, PREC=prec), half)
        if gate == 2:
            compile_kernel(Bw._intra_diagonal_kernel, dict(C=C, S=S, BK=32, PREC=prec), half)
    compile_kernel(sh._state_passing_kernel, dict(C=C, BK=32, BV=32, GATE=gate, REVERSE=False, HAS_X0=True, STORE_FINAL=True))
    compile_kernel(sh._state_passing_kernel, dict(C=C, BK=32, BV=32, GATE=gate, REVERSE=True, HAS_X0=False, STORE_FINAL=False))
    compile_kernel(St._step_kernel, dict(BK=BK, BV=BV, GATE=gate, HAS_H0=True))
compile_kernel(Bw._dscores_kernel, dict(C=C, BV=BV, PREC="tf32"))
compile_kernel(sh._chunk_cumsum_kernel, dict(C=C, BD=64, REVERSE=True))
compile_kernel(sh._chunk_cumsum_kernel, dict(C=C, BD=1, REVERSE=False))
print("ALL OK")
