"""benchmarks/flops.py against a hand count and against torch's own FLOP counter, and
benchmarks/train_step.py as a command (a tiny CPU run in a subprocess)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pggan.config import Config, LossConfig, ModelConfig
from pggan.nets import build_discriminator, build_generator

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_step.py"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module             # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


flops = _load("flops")

# nf(4) = min(16 / 2, 8) = 8, nf(8) = 16 / 4 = 4; D's last dense: nf_stage(0) = min(16, 8) = 8.
TINY = dict(max_res=8, fmap_base=16, fmap_max=8, latent_dim=8, img_channels=3)


def test_pggan_generator_hand_count():
    m = ModelConfig(**TINY)
    macs = {lay.name: lay.macs for lay in flops.generator_layers(m, 8, 1.0)}
    assert macs == {
        "input.dense": 8 * (8 * 16),            # latent 8 -> nf(4) x 4 x 4
        "input.conv": 8 * 8 * 9 * 16,           # 3x3, 8 -> 8 channels, 4x4 outputs
        "blocks.8.conv0": 8 * 4 * 9 * 64,       # 3x3, 8 -> 4, 8x8
        "blocks.8.conv1": 4 * 4 * 9 * 64,       # 3x3, 4 -> 4, 8x8
        "torgb.8": 4 * 3 * 64,                  # 1x1, 4 -> 3, 8x8
    }
    # 1024 + 9216 + 18432 + 9216 + 768 = 38656 MACs = 77312 FLOPs
    assert flops.flops_of(flops.generator_layers(m, 8, 1.0)) == 77312
    # Fading in adds toRGB at 4x4: 8 * 3 * 16 = 384 MACs.
    assert flops.flops_of(flops.generator_layers(m, 8, 0.5)) == 2 * (38656 + 384)
    # At 4x4: dense + conv + toRGB(8 -> 3 at 4x4) = 1024 + 9216 + 384; alpha has no effect.
    assert flops.flops_of(flops.generator_layers(m, 4, 0.3)) == 2 * (1024 + 9216 + 384)


def test_pggan_discriminator_hand_count():
    m = ModelConfig(**TINY)
    macs = {lay.name: lay.macs for lay in flops.discriminator_layers(m, 8, 1.0)}
    assert macs == {
        "fromrgb.8": 3 * 4 * 64,                # 1x1, 3 -> nf(8) = 4, 8x8
        "blocks.8.conv0": 4 * 4 * 9 * 64,       # 3x3, 4 -> 4, 8x8
        "blocks.8.conv1": 4 * 8 * 9 * 64,       # 3x3, 4 -> nf(4) = 8, 8x8 (then 2x2 box)
        "output.conv": (8 + 1) * 8 * 9 * 16,    # minibatch-stddev adds 1 channel; 4x4
        "output.dense": 8 * 16 * 8,             # flatten 8 x 4 x 4 -> 8
        "output.out": 8 * 1,                    # -> score
    }
    # 768 + 9216 + 18432 + 10368 + 1024 + 8 = 39816 MACs; the fade adds fromRGB at 4x4: 384.
    assert flops.flops_of(flops.discriminator_layers(m, 8, 1.0)) == 2 * 39816
    assert flops.flops_of(flops.discriminator_layers(m, 8, 0.5)) == 2 * (39816 + 384)


def test_rejects_resolutions_outside_the_network():
    m = ModelConfig(**TINY)
    with pytest.raises(ValueError, match="not a stage"):
        flops.generator_layers(m, 16)
    with pytest.raises(ValueError, match="power of two"):
        flops.discriminator_layers(m, 6)
    with pytest.raises(ValueError, match="alpha"):
        flops.generator_layers(m, 8, 1.5)


NETS = [
    dict(arch="pggan"),
    dict(arch="pggan", num_classes=5, cond_d="projection"),
    dict(arch="pggan", num_classes=4, cond_d="acgan", img_channels=1, mbstd_channels=2),
    dict(arch="stylegan", style_mixing_prob=0.0),
    dict(arch="stylegan", modulation="adain", num_classes=3, style_mixing_prob=0.0),
]


@pytest.mark.parametrize("kw", NETS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_matches_torch_flop_counter_on_the_real_networks(kw):
    # The analytic counts are those of the unfused network (fused layers do less arithmetic
    # for the same function; test_executed_step_flops_fused_vs_unfused counts them).
    m = ModelConfig(max_res=16, fmap_base=64, fmap_max=16, latent_dim=8, w_dim=8,
                    mapping_layers=2, fused_scale="never", **kw)
    G = build_generator(m).eval().requires_grad_(False)
    D = build_discriminator(m).eval().requires_grad_(False)
    n = 4
    c = torch.arange(n) % m.num_classes if m.num_classes else None
    for res, alpha in ((4, 1.0), (8, 1.0), (8, 0.25), (16, 1.0), (16, 0.5)):
        with FlopCounterMode(display=False) as counter:
            img = G(torch.randn(n, 8), c, res, alpha)
        assert counter.get_total_flops() == n * flops.flops_of(
            flops.generator_layers(m, res, alpha, style_mixing=False), "all"), (res, alpha)
        with FlopCounterMode(display=False) as counter:
            D(img, c, alpha)
        assert counter.get_total_flops() == n * flops.flops_of(
            flops.discriminator_layers(m, res, alpha), "all"), (res, alpha)


def test_stylegan_counts_style_mixing_and_keeps_filters_apart():
    m = ModelConfig(arch="stylegan", max_res=16, fmap_base=64, fmap_max=16, latent_dim=8,
                    w_dim=8, mapping_layers=2, style_mixing_prob=0.5)
    plain = flops.generator_layers(m, 16, 1.0, style_mixing=False)
    mixed = flops.generator_layers(m, 16, 1.0)
    mapping = 2 * (8 * 8 + 8 * 8)                   # two 8 -> 8 layers, x2 FLOPs per MAC
    assert flops.flops_of(mixed) == flops.flops_of(plain) + 0.5 * mapping
    # FIR up at 8 (Cin 16) and 16 (Cin 16): 4x4 taps at the output size; not model FLOPs.
    assert flops.flops_of(plain, "filter") == 2 * (16 * 16 * 64 + 16 * 16 * 256)
    d = flops.discriminator_layers(m, 16, 1.0)
    # FIR 2x down as one strided depthwise conv, 4x4 taps at the (r/2)^2 kept pixels:
    # nf(8) = 16 channels after block 16, nf(4) = 16 after block 8.
    assert flops.flops_of(d, "filter") == 2 * (16 * 16 * 8 ** 2 + 16 * 16 * 4 ** 2)


def _cfg(**loss):
    return Config(model=ModelConfig(**TINY), loss=LossConfig(**loss))


def test_step_multiples():
    for res, alpha in ((8, 1.0), (8, 0.5), (4, 1.0)):
        f_g, f_d = flops.forward_flops(ModelConfig(**TINY), res, alpha)
        s = flops.step_flops(_cfg(kind="wgan-gp"), res, alpha)
        assert (s.g_forward, s.d_forward) == (f_g, f_d)
        # D: fakes 1 F_G, reals + fakes 2 F_D, their backward 4 F_D, penalty 4 F_D
        assert s.d_phases == f_g + 10 * f_d
        assert s.g_phase == 3 * f_g + 2 * f_d
        assert s.total == 4 * f_g + 12 * f_d
    f_g, f_d = flops.forward_flops(ModelConfig(**TINY), 8, 1.0)
    lazy = flops.step_flops(_cfg(kind="logistic-r1", r1_interval=16), 8)
    assert lazy.d_phases == f_g + 6 * f_d + 4 * f_d / 16
    assert flops.step_flops(_cfg(kind="logistic-r1", r1_interval=0), 8).d_phases == \
        f_g + 10 * f_d
    assert flops.step_flops(_cfg(kind="hinge"), 8).total == 4 * f_g + 8 * f_d
    assert flops.phase_cycle(_cfg(kind="logistic-r1", r1_interval=16)) == 16
    assert flops.phase_cycle(_cfg(kind="wgan-gp")) == 1


def test_executed_flops_counts_like_torch_and_through_autograd_grad():
    m = ModelConfig(max_res=16, fmap_base=32, fmap_max=8, latent_dim=8, fused_scale="never")
    G, D = build_generator(m), build_discriminator(m)
    z = torch.randn(4, 8)

    def g_fwd_bwd():
        G(z, None, 16, 0.5).square().sum().backward()

    with FlopCounterMode(display=False) as counter:
        g_fwd_bwd()
    assert flops.count_executed_flops(g_fwd_bwd) == counter.get_total_flops() > 0
    # The penalty's first half: forward + input gradient = exactly 2 F_D.
    for res, alpha in ((16, 1.0), (16, 0.5), (4, 1.0)):
        x = torch.randn(4, 3, res, res, requires_grad=True)
        n = flops.count_executed_flops(lambda: torch.autograd.grad(
            D(x, None, alpha).sum(), x, create_graph=True))
        assert n == 4 * 2 * flops.flops_of(flops.discriminator_layers(m, res, alpha))


# --------------------------------------------------------------------------------------------
# The script


def _run(args, tmp_path):
    # One thread: this machine's cores are shared, and a 2-thread OpenMP pool waits on the
    # slower thread at every op.
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)


SMOKE = ["--device", "cpu", "--config", "demo-cpu", "--max-res", "8", "--set", "loss.kind=wgan-gp",
         "--set", "model.fmap_base=32", "--set", "model.fmap_max=8",
         "--set", "model.latent_dim=8", "--set", "schedule.batch_by_res={4: 8, 8: 4}",
         "--warmup", "1", "--steps", "2", "--matmul-size", "64", "--fade"]


def test_cpu_smoke_run_writes_the_tables(tmp_path):
    out = tmp_path / "out"
    proc = _run(SMOKE + ["--impls", "ref,triton,auto", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "train_step.md").read_text()
    data = json.loads((out / "train_step.json").read_text())
    bench = _load("train_step")

    header = "\n".join(data["header"])
    assert "machine: " in header and "date 20" in header and "no GPU used" in header
    command = next(h for h in data["header"] if h.startswith("command: "))
    assert command.startswith("command: OMP_NUM_THREADS=1 ")
    assert "python benchmarks/train_step.py --device cpu --config demo-cpu --max-res 8 " \
        "--set loss.kind=wgan-gp --set model.fmap_base=32" in command
    assert any("impl=triton is not timed" in n for n in data["notes"])

    # Rows: res 4 (no fade-in at the start resolution), 8 stabilised and mid-fade; triton was
    # dropped on CPU and auto runs the reference there, so per point: ref x {nchw,
    # channels_last} x fused_scale {never, always} (the default --fused-scales).
    got = [(r["res"], r["point"], r["alpha"], r["impl"], r["precision"], r["layout"],
            r["fused_scale"], r["batch"]) for r in data["rows"]]
    assert got == [(res, point, alpha, "ref", "fp32", layout, fused, batch)
                   for res, point, alpha, batch in ((4, "stab", 1.0, "8 = 8 x 1"),
                                                    (8, "stab", 1.0, "4 = 4 x 1"),
                                                    (8, "fade", 0.5, "4 = 4 x 1"))
                   for layout in ("nchw", "channels_last") for fused in ("never", "always")]
    m = ModelConfig(max_res=8, fmap_base=32, fmap_max=8, latent_dim=8)
    for r in data["rows"]:
        for key in ("ms_per_step", "img_per_s", "sec_per_kimg", "peak_mib", "gflop_per_img",
                    "tflops", "pct_bf16_mm", "pct_fp32_mm", "executed_ratio", "vs_baseline"):
            assert r[key] > 0, (key, r)
        assert r["timed_steps"] == 2 and len(r["cycle_ms"]) == 2
        assert r["img_per_s"] == pytest.approx(int(r["batch"].split()[0]) / r["ms_per_step"]
                                               * 1e3, rel=1e-9)
        assert r["sec_per_kimg"] == pytest.approx(1000 / r["img_per_s"], rel=1e-9)
        f_g, f_d = flops.forward_flops(m, r["res"], r["alpha"])
        assert r["gflop_per_img"] * 1e9 == pytest.approx(4 * f_g + 12 * f_d, rel=1e-12)
    assert [r["vs_baseline"] for r in data["rows"]
            if (r["layout"], r["fused_scale"]) == ("nchw", "never")] == [1.0] * 3
    # Fused vs unfused, side by side: one line per fused row that has an unfused twin. At 8 px
    # the fused network dispatches fewer conv FLOPs (a count, not a timing); at 4 px there is
    # no block to fuse, so the same.
    fused = data["fused"]
    assert [(f["res"], f["point"], f["variant"]) for f in fused] == [
        (res, point, f"ref, fp32, {layout}") for res, point in ((4, "stab"), (8, "stab"),
                                                                 (8, "fade"))
        for layout in ("nchw", "channels_last")]
    for f in fused:
        assert f["speedup"] == pytest.approx(f["never_ms"] / f["fused_ms"])
        if f["res"] == 4:
            assert f["executed_ratio"] == pytest.approx(1.0)
        else:
            assert f["executed_ratio"] > 1.05
    assert "## Fused resampling convolutions vs unfused" in md

    summary = data["summary"]
    assert [(s["res"], s["point"]) for s in summary] == [(4, "stab"), (8, "stab"), (8, "fade")]
    for s in summary:
        here = [r for r in data["rows"] if (r["res"], r["point"]) == (s["res"], s["point"])
                and r["fused_scale"] == "always"]       # the default among those measured
        assert s["default_img_s"] == max(r["img_per_s"] for r in here)
        assert s["default"].endswith("fused always")
        assert s["speedup"] == pytest.approx(s["default_img_s"] / s["baseline_img_s"])

    # The markdown table: the script's columns, one line per row, numbers where numbers go.
    lines = md.splitlines()
    head = "| " + " | ".join(bench.COLUMNS) + " |"
    assert head in lines
    i = lines.index(head)
    body = lines[i + 2:i + 2 + len(data["rows"])]
    assert all(len(line.strip("|").split("|")) == len(bench.COLUMNS) for line in body)
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in ("ms/step", "img/s", "sec/kimg", "peak MiB", "GFLOP/img", "TFLOP/s"):
            assert float(cells[bench.COLUMNS.index(name)]) > 0, (name, line)
    assert "| res | point | baseline img/s (ref, fp32, nchw, fused never) |" in md
    assert proc.stdout.count("| 8 | fade | 0.5 |") == 4              # rows as they are measured


def test_bad_options_are_one_line_errors(capsys):
    bench = _load("train_step")

    def error(*args):
        assert bench.main(list(args)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert error("--device", "cpu", "--impls", "ref,fast") == \
        "benchmarks/train_step.py: --impls 'ref,fast': choose from ref, triton, auto"
    assert error("--device", "cpu", "--fused-scales", "sometimes") == \
        "benchmarks/train_step.py: --fused-scales 'sometimes': choose from never, always, auto"
    assert error("--device", "cpu", "--config", "demo-cpu", "--res", "4,64") == \
        "benchmarks/train_step.py: --res: [64] not stages of this config (4, 8, 16, 32)"
    assert "unknown option model.fmap_bse (did you mean model.fmap_base?)" in error(
        "--device", "cpu", "--set", "model.fmap_bse=8")
    assert "built-in synthetic source has no labels" in error(
        "--device", "cpu", "--set", "model.num_classes=3")
    if not torch.cuda.is_available():
        assert "no CUDA device" in error("--device", "cuda")


def test_lazy_r1_is_timed_in_whole_cycles(tmp_path, capsys):
    bench = _load("train_step")
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # shared cores: see _run
    try:
        assert bench.main([
            "--device", "cpu", "--config", "stylegan-ffhq-1024", "--max-res", "8", "--res", "8",
            "--set", "model.fmap_base=32", "--set", "model.fmap_max=8",
            "--set", "model.latent_dim=8", "--set", "model.w_dim=8",
            "--set", "model.mapping_layers=2", "--set", "schedule.batch_by_res={8: 4}",
            "--layouts", "nchw", "--fused-scales", "never", "--warmup", "1", "--steps", "3",
            "--no-count",
            "--matmul-size", "64", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((out / "train_step.json").read_text())["rows"]
    assert [(r["res"], r["point"]) for r in rows] == [(8, "stab")]
    # R1 every 16 D steps: 3 steps round up to one cycle of 16, so it holds one D_reg step.
    assert rows[0]["timed_steps"] == 16 and len(rows[0]["cycle_ms"]) == 1
    assert rows[0]["executed_ratio"] is None and rows[0]["ms_per_step"] > 0
    assert "in cycles of 16" in capsys.readouterr().out


def test_flops_command_prints_the_preset_table(capsys):
    assert flops.main(["--config", "demo-cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [4, 8, 16, 32]
    from pggan.config import load_preset
    cfg = load_preset("demo-cpu")
    for r in rows:
        res = int(r.split("|")[1])
        assert float(r.split("|")[4]) == pytest.approx(flops.step_flops(cfg, res).total / 1e9,
                                                       rel=1e-3)
    assert flops.main(["--config", "demo-cpu", "--set", "model.fmap_bse=8"]) == 2


def test_executed_step_flops_fused_vs_unfused():
    # FakeTensorMode counts the real step's dispatched convs without arithmetic. A fused block
    # replaces a 9-tap conv at R (G: at the output, D: at the input) by a 16-tap conv at R/2,
    # 2.25x fewer FLOPs on that layer; the rest is unchanged, so the step ratio lies between
    # 1 and 2.25, and at 4 px (no block) it is exactly 1.
    cfg = _cfg(kind="wgan-gp")
    cfg.model = ModelConfig(max_res=16, fmap_base=64, fmap_max=16, latent_dim=8)
    counts = {}
    for setting in ("never", "always"):
        cfg.model.fused_scale = setting
        counts[setting] = [flops.executed_step_flops(cfg, r) for r in (4, 16)]
    assert counts["never"][0] == counts["always"][0] > 0
    assert 1.2 < counts["never"][1] / counts["always"][1] < 2.25
    # The unfused count is torch's own count of a real (non-fake) step of the same phases.
    cfg.model.fused_scale = "never"
    assert counts["never"][1] >= flops.step_flops(cfg, 16).total


def test_paired_turns_of_fused_and_unfused(tmp_path):
    bench = _load("train_step")
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                    # shared cores: see _run
    try:
        assert bench.main(SMOKE[:-1] + ["--res", "8", "--layouts", "nchw", "--no-count",
                                        "--paired", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((out / "train_step.json").read_text())
    paired = data["paired"]
    assert [(p["res"], p["a"], p["b"]) for p in paired] == [
        (8, "ref, fp32, nchw, fused never", "ref, fp32, nchw, fused always")]
    p = paired[0]
    assert p["turns"] == 4 and len(p["a_ms_all"]) == len(p["b_ms_all"]) == 4
    ratios = sorted(a / b for a, b in zip(p["a_ms_all"], p["b_ms_all"]))
    assert p["ratio_median"] == pytest.approx((ratios[1] + ratios[2]) / 2)
    assert p["ratio_min"] == pytest.approx(min(p["a_ms_all"]) / min(p["b_ms_all"]))
    assert "## Paired turns" in (out / "train_step.md").read_text()
