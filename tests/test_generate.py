"""pggan-generate: the real CLI in a subprocess writes the right files, at the right size, with
the network's images; bad inputs end with one line and exit status 2."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pggan.config import ModelConfig
from pggan.generate import have_ffmpeg, latents_from_seeds, main, parse_seeds, to_uint8
from pggan.nets import build_generator
from pggan.snapshot import load_snapshot, save_snapshot

REPO = Path(__file__).resolve().parent.parent


def tiny(arch: str, **kw) -> ModelConfig:
    base = dict(arch=arch, max_res=16, latent_dim=16, fmap_base=64, fmap_max=16, w_dim=16,
                mapping_layers=2)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def snaps(tmp_path_factory):
    d = tmp_path_factory.mktemp("snaps")
    torch.manual_seed(0)
    sg_cfg = tiny("stylegan")
    G = build_generator(sg_cfg)
    G.train()
    G.mapping(torch.randn(64, 16))                                  # a non-zero w_avg
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    save_snapshot(d / "sg.pt", G.eval(), sg_cfg, res=8, alpha=0.5, cur_nimg=5000)
    pg_cfg = tiny("pggan", num_classes=3)
    save_snapshot(d / "pg.pt", build_generator(pg_cfg), pg_cfg, res=16, alpha=1.0, cur_nimg=9000)
    return d


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pggan.generate", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_parse_seeds():
    assert parse_seeds("0-3,12,7-8") == [0, 1, 2, 3, 12, 7, 8]
    for bad in ("1-x", "5-2", "", "-3"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_images_subprocess_match_the_network(snaps, tmp_path, capsys):
    out = tmp_path / "imgs"
    r = cli("images", snaps / "sg.pt", "--seeds", "0-2,7", "--outdir", out, "--batch", "3")
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    # res / alpha default to the snapshot's (8, 0.5); the PNGs hold exactly G's images
    G, _ = load_snapshot(snaps / "sg.pt")
    with torch.no_grad():
        expect = to_uint8(G(latents_from_seeds([0, 1, 2, 7], 16), res=8, alpha=0.5,
                            noise_mode="const"))
    for name, img in zip(files, expect):
        arr = png(out / name)
        assert arr.shape == (8, 8, 3)
        assert np.array_equal(arr, img.permute(1, 2, 0).numpy())
    # never overwrite without --overwrite: refused, file untouched; with it, replaced
    before = (out / "seed0001.png").read_bytes()
    assert main(["images", str(snaps / "sg.pt"), "--seeds", "1", "--outdir", str(out),
                 "--trunc", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "seed0001.png").read_bytes() == before
    assert main(["images", str(snaps / "sg.pt"), "--seeds", "1", "--outdir", str(out),
                 "--trunc", "0", "--overwrite"]) == 0
    assert (out / "seed0001.png").read_bytes() != before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_truncation_zero_gives_one_image(snaps, tmp_path):
    assert main(["grid", str(snaps / "sg.pt"), "--seeds", "0-5", "--cols", "3", "--res", "16",
                 "--trunc", "0", "--out", str(tmp_path / "g.png")]) == 0
    g = png(tmp_path / "g.png")
    assert g.shape == (32, 48, 3)                                   # 2 rows x 3 cols of 16 px
    tiles = [g[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] for r in range(2) for c in range(3)]
    assert all(np.array_equal(t, tiles[0]) for t in tiles)
    assert main(["grid", str(snaps / "sg.pt"), "--seeds", "0-5", "--cols", "3", "--res", "16",
                 "--out", str(tmp_path / "g1.png")]) == 0
    g1 = png(tmp_path / "g1.png")
    assert not np.array_equal(g1[:16, :16], g1[:16, 16:32])       # psi = 1: seeds differ


def test_conditional_pggan_grid(snaps, tmp_path):
    assert main(["grid", str(snaps / "pg.pt"), "--seeds", "0-4", "--class", "2", "--out",
                 str(tmp_path / "grid.png"), "--cols", "3"]) == 0
    g = png(tmp_path / "grid.png")
    assert g.shape == (32, 48, 3)                                   # res 16 from the snapshot
    assert (g[16:, 32:] == 0).all()                                 # 6th cell empty
    G, _ = load_snapshot(snaps / "pg.pt")
    with torch.no_grad():
        expect = to_uint8(G(latents_from_seeds([4], 16), torch.tensor([2]), res=16))[0]
    assert np.array_equal(g[16:, 16:32], expect.permute(1, 2, 0).numpy())


def test_video(snaps, tmp_path, monkeypatch, capsys):
    n_seeds, frames = 3, 4
    if have_ffmpeg():
        out = tmp_path / "v.mp4"
        r = cli("video", snaps / "sg.pt", "--seeds", "0-2", "--frames", frames, "--out", out)
        assert r.returncode == 0, r.stderr
        import imageio.v3 as iio
        assert iio.imread(out).shape == (n_seeds * frames, 8, 8, 3)
    else:
        r = cli("video", snaps / "sg.pt", "--seeds", "0-2", "--frames", frames, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        with Image.open(tmp_path / "interp.gif") as im:
            assert (im.n_frames, im.size) == (n_seeds * frames, (8, 8))
    # without imageio-ffmpeg: an mp4 request is a clear error, the default name is a GIF
    import pggan.generate
    monkeypatch.setattr(pggan.generate, "have_ffmpeg", lambda: False)
    assert main(["video", str(snaps / "sg.pt"), "--seeds", "0-2",
                 "--out", str(tmp_path / "w.mp4")]) == 2
    assert "imageio-ffmpeg" in capsys.readouterr().err
    sub = tmp_path / "default"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert main(["video", str(snaps / "sg.pt"), "--seeds", "0,1", "--frames", "2"]) == 0
    assert [p.name for p in sub.iterdir()] == ["interp.gif"]
    # GIF: one frame per step of the closed loop through the seeds; first frame is seed 0
    out = tmp_path / "v.gif"
    assert main(["video", str(snaps / "pg.pt"), "--seeds", "3,5", "--frames", str(frames),
                 "--class", "0", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert (im.n_frames, im.size) == (2 * frames, (16, 16))
    assert main(["images", str(snaps / "pg.pt"), "--seeds", "3", "--class", "0",
                 "--outdir", str(tmp_path)]) == 0
    with Image.open(out) as im:
        first = np.asarray(im.convert("RGB")).astype(int)
    ref = png(tmp_path / "seed0003-class0.png").astype(int)
    assert np.abs(first - ref).mean() < 12                          # GIF palette quantisation


def test_style_mix_grid(snaps, tmp_path):
    out = tmp_path / "mix.png"
    assert main(["style-mix", str(snaps / "sg.pt"), "--row-seeds", "0-2", "--col-seeds", "5,6",
                 "--res", "16", "--styles", "0-2", "--out", str(out)]) == 0
    g = png(out)
    assert g.shape == (4 * 16, 3 * 16, 3)                          # (3+1) rows x (2+1) cols
    assert (g[:16, :16] == 0).all()
    G, _ = load_snapshot(snaps / "sg.pt")
    with torch.no_grad():
        ws_r = G.mapping(latents_from_seeds([1], 16))
        ws_c = G.mapping(latents_from_seeds([6], 16))
        ws = torch.cat([ws_c[:, :3], ws_r[:, 3:]], dim=1)         # styles 0-2 from column
        expect = to_uint8(G.synthesis(ws, res=16, noise_mode="const"))[0]
    assert np.array_equal(g[2 * 16:3 * 16, 2 * 16:3 * 16], expect.permute(1, 2, 0).numpy())


def test_bad_inputs_one_line_exit_2(snaps, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((snaps / "sg.pt").read_bytes()[:2000])
    r = cli("images", corrupt, "--seeds", "0", "--outdir", tmp_path / "o")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "corrupt.pt" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())

    # a snapshot whose config names one architecture but holds another's weights
    data = torch.load(snaps / "pg.pt", weights_only=True)
    data["model"]["arch"] = "stylegan"
    torch.save(data, tmp_path / "mixed.pt")
    # an architecture this version does not know
    data["model"]["arch"] = "stylegan3"
    torch.save(data, tmp_path / "future.pt")

    pg, sg = str(snaps / "pg.pt"), str(snaps / "sg.pt")
    o = str(tmp_path / "o")
    cases = [
        (["images", str(tmp_path / "mixed.pt"), "--seeds", "0", "--outdir", o],
         "weights do not match"),
        (["images", str(tmp_path / "future.pt"), "--seeds", "0", "--outdir", o], "future.pt"),
        (["images", str(tmp_path / "missing.pt"), "--seeds", "0", "--outdir", o], "not found"),
        (["style-mix", pg, "--row-seeds", "0", "--col-seeds", "1", "--out", o + "/m.png"],
         "needs a StyleGAN snapshot"),
        (["images", pg, "--seeds", "0", "--class", "1", "--trunc", "0.7", "--outdir", o],
         "StyleGAN-only"),
        (["images", pg, "--seeds", "0", "--outdir", o], "pass --class"),
        (["images", pg, "--seeds", "0", "--class", "3", "--outdir", o], "out of range"),
        (["images", sg, "--seeds", "0", "--class", "0", "--outdir", o], "not class-conditional"),
        (["images", sg, "--seeds", "0", "--res", "32", "--outdir", o], "--res 32"),
        (["images", sg, "--seeds", "0", "--alpha", "1.5", "--outdir", o], "--alpha"),
        (["video", sg, "--seeds", "4", "--out", o + "/v.gif"], "at least two seeds"),
        (["style-mix", sg, "--row-seeds", "0", "--col-seeds", "1", "--styles", "0-9",
          "--out", o + "/m.png"], "layer 4 does not exist"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, (argv, err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
