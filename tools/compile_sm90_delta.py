"""Compile the delta triton kernels for sm_90 on the CPU (no GPU needed): catches type errors and
reports shared memory; ptxas spills via the cubin."""
import os, sys, re, subprocess, tempfile
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from linscan.ops.delta import triton_fwd as F, triton_bwd as Bw, triton_step as S

def compile_kernel(fn, types, consts, num_warps=4, num_stages=3):
    sig = {}
    for name in fn.arg_names:
        sig[name] = "constexpr" if name in consts else types(name)
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"]); path = f.name
    sass = subprocess.run([os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
    regs = re.findall(r"REG:(\d+)", sass); stack = re.findall(r"STACK:(\d+)", sass); lmem = re.findall(r"LOCAL:(\d+)", sass)
    return k.metadata.shared, regs, stack, lmem

def types_for(dtype):
    def t(name):
        if name.endswith("_ptr"):
            if name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "do_ptr", "beta_ptr", "g_ptr"):
                return "*" + dtype
            if name in ("cu_ptr", "index_ptr", "offsets_ptr"):
                return "*i32"
            return "*fp32"
        if name == "scale":
            return "fp32"
        return "i32"
    return t

K = V = int(sys.argv[1]) if len(sys.argv) > 1 else 128
R = int(sys.argv[2]) if len(sys.argv) > 2 else 1
BV = int(sys.argv[3])
only = sys.argv[4].split(",")
dtypes = sys.argv[5].split(",")
warps = [int(w) for w in sys.argv[6].split(",")]
stages = int(sys.argv[7]) if len(sys.argv) > 7 else 3
BK = max(16, triton.next_power_of_2(K))
C = (int(sys.argv[8]) if len(sys.argv) > 8 else 64) // R
base = dict(C=C, R=R, BL=max(16, triton.next_power_of_2(C * R)), BC=max(16, triton.next_power_of_2(C)), BK=BK, BV=BV)
for dtype, dot, carried in [x for x in [("bf16", "tf32", "tf32x3"), ("fp32", "ieee", "ieee")] if x[0] in dtypes]:
    ty = types_for(dtype)
    jobs = [
        (F._prep_kernel, base | dict(HAS_G=True, DOT=carried)),
        (F._state_kernel, base | dict(HAS_G=True, HAS_H0=True, DOT=carried)),
        (F._output_kernel, base | dict(HAS_G=True, DOT=dot)),
        (Bw._dv_local_kernel, base | dict(HAS_G=True, DOT=dot)),
        (Bw._dstate_kernel, base | dict(HAS_G=True, HAS_DHT=True, DOT=carried)),
        (Bw._grad_kernel, base | dict(HAS_G=True, DOT=dot)),
        (S._step_kernel, dict(R=R, BK=BK, BV=BV, HAS_G=True, HAS_H0=True)),
    ]
    for fn, consts in jobs:
        if fn.__name__ not in only:
            continue
        for nw in warps:
            try:
                shared, regs, stack, lmem = compile_kernel(fn, ty, consts, nw, stages)
                print(f"{dtype} K=V={K} R={R} C={C} BV={BV} {fn.__name__:16s} warps={nw} stages={stages} shared={shared} regs={regs} stack={stack} local={lmem}", flush=True)
            except Exception as e:
                print(f"{dtype} {fn.__name__} warps={nw} FAILED: {type(e).__name__}: {str(e)[:400]}", flush=True)
