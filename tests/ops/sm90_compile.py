"""Compile every Triton kernel of pggan/ops for an H100 (sm_90) without a GPU: Triton's own
pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin through the ptxas shipped in the triton
wheel). This checks that the GPU path compiles (types, constexpr branches, layouts), which the
interpreter does not; it does not run anything.

    python tests/ops/sm90_compile.py          # one variant per kernel and branch (bf16)
    python tests/ops/sm90_compile.py --all    # every dtype x act x clamp x ... (about 2 min)
"""
import importlib
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"                 # real JIT functions, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def compile_kernel(fn, types, consts, arch=90, num_warps=4):
    sig, cst = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name], cst[(i,)] = "constexpr", consts[name]
        else:
            sig[name] = types[name]
    return triton.compile(ASTSource(fn, sig, cst), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps})


def main(full: bool) -> int:
    m = lambda n: importlib.import_module("pggan.ops." + n)  # noqa: E731
    ba, pn, mb, fi, nb, dm = map(m, ["bias_act", "pixel_norm", "minibatch_std", "fade_in",
                                      "noise_bias_act", "demod"])
    dtypes = [(tl.bfloat16, "bf16"), (tl.float32, "fp32"), (tl.float16, "fp16"),
              (tl.float64, "fp64")] if full else [(tl.bfloat16, "bf16")]
    acts = (0, 1, 2) if full else (2,)
    ok = 0
    for dt, dts in dtypes:
        acc = tl.float64 if dts == "fp64" else tl.float32
        P = "*" + dts
        for act in acts:
            for clamp in (False, True):
                compile_kernel(ba._bias_act_fwd_kernel, dict(
                    x_ptr=P, b_ptr="*fp32", y_ptr=P, numel="i64", C="i32", inner="i32",
                    alpha="fp32", gain="fp32", clamp="fp32"), dict(
                    ACT=act, HAS_BIAS=True, HAS_CLAMP=clamp, X_DT=dt, ACC=acc, BLOCK=2048))
                ok += 1
                for ref in ((0, 1, 2) if full else ((2,) if clamp else (1,))):
                    for gr in ((False, True) if full else (clamp,)):
                        compile_kernel(ba._bias_act_bwd_kernel, dict(
                            dy_ptr=P, gb_ptr="*fp32", gr_ptr="*fp32", ref_ptr=P, b_ptr="*fp32",
                            dx_ptr=P, db_part_ptr="*fp32", dr_part_ptr="*fp32", rows="i32",
                            C="i32", inner="i32", alpha="fp32", gain="fp32", clamp="fp32"), dict(
                            ACT=act, REF=ref, HAS_GB=gr, HAS_GR=gr, WRITE_DR=gr, HAS_BIAS=True,
                            HAS_CLAMP=clamp, REF_DT=dt, ACC=acc, BLOCK_R=64, BLOCK_C=64),
                            num_warps=8)
                        ok += 1
        for one in (True, False):
            for kern in (pn._pixel_norm_fwd_kernel, pn._pixel_norm_bwd_kernel):
                types = dict(x_ptr=P, y_ptr=P, dy_ptr=P, dx_ptr=P, rows="i32", C="i32",
                             inner="i32", eps="fp32")
                compile_kernel(kern, types, dict(ACC=acc, BLOCK_R=64, BLOCK_C=64, ONE_CHUNK=one),
                               num_warps=8)
                ok += 1
        strides = {n: "i32" for n in ["xs_n", "xs_c", "xs_p", "os_n", "os_c", "os_p", "ds_n",
                                      "ds_c", "ds_p"]}
        for kern in (mb._mbstd_fwd_kernel, mb._mbstd_bwd_kernel):
            compile_kernel(kern, dict(x_ptr=P, out_ptr=P, dout_ptr=P, dx_ptr=P, part_ptr="*fp32",
                                      coef_ptr="*fp32", G="i32", F="i32", CF="i32", HW="i32",
                                      eps="fp32", **strides),
                           dict(ACC=acc, G_PAD=4, BLOCK=512))
            ok += 1
        for from_end in (False, True):
            compile_kernel(fi._fade_in_fwd_kernel, dict(
                old_ptr=P, new_ptr="*fp32", out_ptr=P, numel="i64", alpha="fp32"),
                dict(OLD_DT=dt, ACC=acc, FROM_END=from_end, BLOCK=2048))
            ok += 1
        compile_kernel(fi._fade_in_bwd_kernel, dict(
            dy_ptr=P, d_old_ptr=P, d_new_ptr=P, numel="i64", w_old="fp32", w_new="fp32"),
            dict(ACC=acc, BLOCK=2048))
        compile_kernel(nb._noise_bias_act_fwd_kernel, dict(
            x_ptr=P, noise_ptr=P, s_ptr="*fp32", b_ptr="*fp32", y_ptr=P, numel="i64", C="i32",
            inner="i32", noise_rows="i32", alpha="fp32", gain="fp32", clamp="fp32"),
            dict(ACT=2, HAS_STRENGTH=True, HAS_BIAS=True, HAS_CLAMP=True, DT=dt, ACC=acc,
                 BLOCK=2048))
        compile_kernel(dm._demod_fwd_kernel, dict(
            w_ptr="*fp32", s_ptr=P, d_ptr="*fp64" if dts == "fp64" else "*fp32", N="i32",
            O="i32", I="i32", KK="i32", eps="fp32"),
            dict(ACC=acc, BLOCK_N=8, BLOCK_O=32, BLOCK_I=16))
        ok += 3
    print(f"compiled {ok} kernel variants for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main("--all" in sys.argv[1:]))
