"""Fused ops on a GPU: eager reference vs torch.compile(reference) vs Triton, and a whole
PGGAN training step (WGAN-GP D step + G step) with impl=triton vs impl=ref.

    python benchmarks/ops.py                     # every op, bf16 and fp32, + steps at 256, 1024
    python benchmarks/ops.py --ops bias_act --dtypes bf16 --no-step
    python benchmarks/ops.py --out benchmarks/out/run1    # also writes ops.md / ops.json
    TRITON_INTERPRET=1 python benchmarks/ops.py --smoke       # CPU: tiny shapes, checks the script

Per op and shape it prints the median time (ms) of the forward and of forward + backward, the
effective bandwidth (the bytes the op must move at minimum, divided by the time) and that
bandwidth as a percentage of the measured device-to-device copy bandwidth (a 1 GiB
tensor.copy_). Minimum bytes, in elements of the activation tensor: bias_act, noise_bias_act,
pixel_norm and minibatch_std move 2 forward (read x, write y) and 5 forward + backward (+ read
dy, read the saved tensor, write dx); fade_in moves 3 forward (read old, new; write) and 6
forward + backward. demod_coefficients is a small reduction over the conv weight ([O, I, 3, 3])
and the styles ([N, I]); its bytes are those of weight + styles + output (x3 with backward), and
its time is mostly launch overhead at these sizes.
--smoke runs tiny shapes on CPU through the Triton interpreter: it checks that the script and
every path run; its timings say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import markdown_table, write_atomic  # noqa: E402
from pggan.ops._dispatch import interpreter_enabled, triton_available  # noqa: E402
from pggan.ops.bias_act import bias_act, bias_act_ref  # noqa: E402
from pggan.ops.demod import demod_coefficients, demod_coefficients_ref  # noqa: E402
from pggan.ops.fade_in import fade_in, fade_in_ref  # noqa: E402
from pggan.ops.minibatch_std import minibatch_std, minibatch_std_ref  # noqa: E402
from pggan.ops.noise_bias_act import noise_bias_act, noise_bias_act_ref  # noqa: E402
from pggan.ops.pixel_norm import pixel_norm, pixel_norm_ref  # noqa: E402

# [N, C, H, W] feature maps at training shapes: PGGAN's 512 channels at 8..32 px and
# nf(res) = 8192 / 2^(log2 res - 1) channels at 256..1024 px, batch 32.
GPU_SHAPES = [(32, 512, 8, 8), (32, 512, 16, 16), (32, 512, 32, 32),
              (32, 64, 256, 256), (32, 32, 512, 512), (32, 16, 1024, 1024)]
SMOKE_SHAPES = [(4, 8, 4, 4), (2, 3, 16, 16)]
# demod_coefficients: (N, O, I, k) of StyleGAN's synthesis convs (512 channels at low res,
# 64 and 32 at 256 / 512 px) and a batch of 4.
GPU_DEMOD_SHAPES = [(32, 512, 512, 3), (32, 64, 128, 3), (4, 32, 64, 3)]
SMOKE_DEMOD_SHAPES = [(3, 8, 16, 3)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
OPS = ("bias_act", "noise_bias_act", "pixel_norm", "minibatch_std", "fade_in",
       "demod_coefficients")
# Minimum traffic in units of numel(x) * element size: (forward, forward + backward).
BYTES_PER_ELEM = {"bias_act": (2, 5), "noise_bias_act": (2, 5), "pixel_norm": (2, 5),
                  "minibatch_std": (2, 5), "fade_in": (3, 6)}
# Per-GPU batch of the training-step benchmark (ScheduleConfig.batch_per_gpu_by_res defaults).
STEP_BATCH = {256: 16, 1024: 4}
SMOKE_STEP = {8: 4}


# ---------------------------------------------------------------------------------------------
# Timing


def bench_ms(fn, device: str, grad_to_none=None, smoke=False) -> float:
    """Median milliseconds of fn(). On CUDA: triton.testing.do_bench (CUDA events, L2 flushed
    between runs). In smoke mode on CPU: a few wall-clock repetitions."""
    if device == "cuda":
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none,
                              return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        for t in grad_to_none or []:
            t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: str, smoke: bool) -> float:
    """Device-to-device copy bandwidth: bytes read + bytes written per second (GB = 1e9 B)."""
    n = (1 << 20) if smoke else (1 << 28)                          # fp32 elements: 4 MiB / 1 GiB
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device, smoke=smoke)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------------
# Op cases: for each op, (fast_fn, ref_fn, make_inputs) at one shape/dtype


def op_case(op: str, shape, dtype, device):
    """-> (inputs, triton_fn, reference_fn, minimum bytes forward, forward + backward)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*s, dt=dtype):
        return torch.randn(*s, generator=gen, device=device, dtype=torch.float32).to(dt)

    if op == "demod_coefficients":
        n, o, i, k = shape
        weight, styles = rnd(o, i, k, k, dt=torch.float32), rnd(n, i)  # fp32 weight parameter
        nbytes = weight.numel() * 4 + styles.numel() * styles.element_size() + n * o * 4
        return ([weight, styles], lambda w, s: demod_coefficients(w, s, impl="triton"),
                demod_coefficients_ref, nbytes, 3 * nbytes)
    n, c, h, w = shape
    units = BYTES_PER_ELEM[op]
    nbytes = [u * n * c * h * w * torch.empty((), dtype=dtype).element_size() for u in units]
    return _elementwise_case(op, shape, dtype, rnd) + tuple(nbytes)


def _elementwise_case(op, shape, dtype, rnd):
    n, c, h, w = shape

    if op == "bias_act":
        x, b = rnd(n, c, h, w), rnd(c, dt=torch.float32)            # fp32 bias, as in the nets
        gain = math.sqrt(2)
        return ([x, b],
                lambda x, b: bias_act(x, b, 1, "lrelu", 0.2, gain, impl="triton"),
                lambda x, b: bias_act_ref(x, b, 1, "lrelu", 0.2, gain))
    if op == "noise_bias_act":
        x, noise, b = rnd(n, c, h, w), rnd(n, 1, h, w), rnd(c, dt=torch.float32)
        strength = torch.full((), 0.1, device=x.device)
        return ([x, noise, strength, b],
                lambda *a: noise_bias_act(*a, act="lrelu", impl="triton"),
                lambda *a: noise_bias_act_ref(*a, act="lrelu"))
    if op == "pixel_norm":
        return ([rnd(n, c, h, w)], lambda x: pixel_norm(x, impl="triton"), pixel_norm_ref)
    if op == "minibatch_std":
        return ([rnd(n, c, h, w)], lambda x: minibatch_std(x, 4, 1, impl="triton"),
                lambda x: minibatch_std_ref(x, 4, 1))
    if op == "fade_in":
        return ([rnd(n, c, h, w), rnd(n, c, h, w)],
                lambda a, b: fade_in(a, b, 0.3, impl="triton"),
                lambda a, b: fade_in_ref(a, b, 0.3))
    raise ValueError(op)


def run_op(op, shape, dtype, device, copy_gbs, use_compile, smoke):
    inputs, fast, ref, bytes_f, bytes_fb = op_case(op, shape, dtype, device)
    variants = {"eager": ref, "triton": fast}
    if use_compile:
        # A fresh dynamo cache per case: the reference's code object is shared by every shape and
        # dtype, and past the recompile limit dynamo would silently run it eagerly.
        torch._dynamo.reset()
        variants["compile"] = torch.compile(ref, dynamic=False)
    rows = []
    for name in ("eager", "compile", "triton"):
        if name not in variants:
            continue
        fn = variants[name]
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        with torch.no_grad():
            y = fn(*inputs)
        dy = torch.randn_like(y)

        def fwd():
            with torch.no_grad():
                fn(*inputs)

        def fwd_bwd():
            fn(*leaves).backward(dy)

        ms_f = bench_ms(fwd, device, smoke=smoke)
        ms_fb = bench_ms(fwd_bwd, device, grad_to_none=leaves, smoke=smoke)
        gbs_f = bytes_f / (ms_f * 1e-3) / 1e9
        gbs_fb = bytes_fb / (ms_fb * 1e-3) / 1e9
        rows.append(dict(op=op, shape="x".join(map(str, shape)), dtype=str(dtype)[6:],
                         impl=name, fwd_ms=ms_f, fwd_gbs=gbs_f, fwd_pct=100 * gbs_f / copy_gbs,
                         fwdbwd_ms=ms_fb, fwdbwd_gbs=gbs_fb, fwdbwd_pct=100 * gbs_fb / copy_gbs))
    return rows


# ---------------------------------------------------------------------------------------------
# Whole training step


def train_step_case(res: int, batch: int, impl: str, device: str, smoke: bool):
    """A WGAN-GP D step (gradient penalty, drift) then a G step, Adam(0, 0.99), bf16 autocast on
    CUDA. Returns (ms per D+G step, peak MiB)."""
    from pggan.config import ModelConfig
    from pggan.nets import build_discriminator, build_generator

    if smoke:
        cfg = ModelConfig(max_res=res, fmap_base=64, fmap_max=16, latent_dim=16, impl=impl)
    else:
        cfg = ModelConfig(max_res=res, impl=impl)
    torch.manual_seed(0)
    G = build_generator(cfg).to(device)
    D = build_discriminator(cfg).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    reals = torch.randn(batch, cfg.img_channels, res, res, device=device)
    alpha = 0.5                                                    # fade-in active
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" \
        else torch.autocast("cpu", enabled=False)

    def step():
        z = torch.randn(batch, cfg.latent_dim, device=device)
        with autocast:
            with torch.no_grad():
                fakes = G(z, res=res, alpha=alpha).float()
            d_real = D(reals, alpha=alpha).float()
            d_fake = D(fakes, alpha=alpha).float()
            mix = torch.rand(batch, 1, 1, 1, device=device)
            x_hat = (mix * reals + (1 - mix) * fakes).requires_grad_(True)
            d_hat = D(x_hat, alpha=alpha).float()
        grad, = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        penalty = (grad.float().flatten(1).norm(dim=1) - 1.0).square().mean()
        d_loss = (d_fake - d_real).mean() + 10.0 * penalty + 1e-3 * d_real.square().mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with autocast:
            g_loss = -D(G(z, res=res, alpha=alpha), alpha=alpha).float().mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    warmup, reps = (1, 2) if smoke else (3, 10)
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else float("nan")
    return statistics.median(times), peak


# ---------------------------------------------------------------------------------------------
# Report


def op_table(rows) -> str:
    return markdown_table(
        ["op", "shape", "dtype", "impl", "fwd ms", "fwd GB/s", "fwd % copy", "fwd+bwd ms",
         "fwd+bwd GB/s", "fwd+bwd % copy"],
        ([r["op"], r["shape"], r["dtype"], r["impl"], f"{r['fwd_ms']:.3f}",
          f"{r['fwd_gbs']:.1f}", f"{r['fwd_pct']:.0f}%", f"{r['fwdbwd_ms']:.3f}",
          f"{r['fwdbwd_gbs']:.1f}", f"{r['fwdbwd_pct']:.0f}%"] for r in rows),
        left={"op", "shape", "dtype", "impl"})


def step_table(rows) -> str:
    return markdown_table(
        ["res", "batch/GPU", "impl", "ms per D+G step", "img/s", "peak MiB", "speed-up vs ref"],
        ([str(r["res"]), str(r["batch"]), r["impl"], f"{r['ms']:.1f}", f"{r['img_s']:.1f}",
          f"{r['peak_mib']:.0f}", f"{r['speedup']:.2f}x"] for r in rows),
        left={"impl"})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default=",".join(OPS), help=f"comma list of {OPS}")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma list of bf16, fp32, fp16")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    p.add_argument("--no-step", action="store_true", help="skip the training-step benchmark")
    p.add_argument("--step-res", default="256,1024", help="training-step resolutions")
    p.add_argument("--out", default=None, help="folder for ops.md and ops.json")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, tiny shapes, Triton interpreter (TRITON_INTERPRET=1): checks the "
                        "script runs; timings are meaningless")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in OPS]
    if bad:
        print(f"benchmarks/ops.py: unknown op(s) {bad} in --ops (choose from {OPS})",
              file=sys.stderr)
        return 2
    try:
        dtypes = [DTYPES[d] for d in args.dtypes.split(",") if d]
        step_res = [int(r) for r in args.step_res.split(",") if r]
    except (KeyError, ValueError) as e:
        print(f"benchmarks/ops.py: bad --dtypes or --step-res value {e} (dtypes: "
              f"{sorted(DTYPES)}; resolutions: powers of two 8..1024)", file=sys.stderr)
        return 2
    if not triton_available():
        print("benchmarks/ops.py: the triton package is not importable (pip install triton)",
              file=sys.stderr)
        return 2
    if args.smoke:
        if not interpreter_enabled():
            print("benchmarks/ops.py: --smoke runs the Triton interpreter on CPU; set "
                  "TRITON_INTERPRET=1 before starting Python", file=sys.stderr)
            return 2
        device, shapes, demod_shapes, steps = "cpu", SMOKE_SHAPES, SMOKE_DEMOD_SHAPES, SMOKE_STEP
    else:
        if not torch.cuda.is_available():
            print("benchmarks/ops.py: needs a CUDA GPU (none visible); on CPU use "
                  "TRITON_INTERPRET=1 ... --smoke to check the script only", file=sys.stderr)
            return 2
        if interpreter_enabled():
            print("benchmarks/ops.py: TRITON_INTERPRET=1 is set, which would time the "
                  "interpreter; unset it (or TRITON_INTERPRET=0) for GPU figures",
                  file=sys.stderr)
            return 2
        device, shapes, demod_shapes = "cuda", GPU_SHAPES, GPU_DEMOD_SHAPES
        steps = {r: STEP_BATCH.get(r, 8) for r in step_res}
    use_compile = not args.no_compile and not args.smoke

    gpu = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    command = " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"device: {gpu}; torch {torch.__version__}; "
              f"triton {__import__('triton').__version__}; "
              f"date {datetime.date.today().isoformat()}; "
              f"command: python benchmarks/ops.py {command}")
    print(header, flush=True)
    copy_gbs = copy_bandwidth_gbs(device, args.smoke)
    print(f"device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)", flush=True)

    op_rows = []
    for op in ops:
        for dtype in dtypes:
            for shape in (demod_shapes if op == "demod_coefficients" else shapes):
                rows = run_op(op, shape, dtype, device, copy_gbs, use_compile, args.smoke)
                op_rows += rows
                print(op_table(rows).split("\n", 2)[2], flush=True)

    step_rows = []
    if not args.no_step:
        for res, batch in steps.items():
            ref_ms = None
            for impl in ("ref", "triton"):
                ms, peak = train_step_case(res, batch, impl, device, args.smoke)
                if device == "cuda":
                    torch.cuda.empty_cache()                       # the nets of this case are gone
                ref_ms = ms if impl == "ref" else ref_ms
                step_rows.append(dict(res=res, batch=batch, impl=impl, ms=ms,
                                      img_s=batch / (ms * 1e-3), peak_mib=peak,
                                      speedup=ref_ms / ms))
                print(step_table(step_rows[-1:]).split("\n", 2)[2], flush=True)

    report = "\n\n".join([header, f"copy bandwidth: {copy_gbs:.0f} GB/s", op_table(op_rows)]
                         + ([step_table(step_rows)] if step_rows else [])) + "\n"
    print("\n" + report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "ops.md", report)
        write_atomic(out / "ops.json", json.dumps(
            dict(header=header, copy_gbs=copy_gbs, ops=op_rows, steps=step_rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
