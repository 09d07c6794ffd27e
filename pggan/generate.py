"""Images, grids, latent-interpolation videos and style-mixing grids from a network snapshot.

  pggan-generate images    SNAPSHOT --seeds 0-7,12 --outdir out/      one PNG per seed
  pggan-generate grid      SNAPSHOT --seeds 0-15 --out grid.png        one PNG, --cols wide
  pggan-generate video     SNAPSHOT --seeds 0-3 --out interp.mp4       loops through the seeds
  pggan-generate style-mix SNAPSHOT --row-seeds 0-3 --col-seeds 10-13 --out mix.png

Latents are a pure function of the seed (torch.Generator seeded with it, on the CPU), so a seed
gives the same image on CPU and GPU and in every subcommand. --res / --alpha default to the
stage the snapshot was taken at. Truncation (--trunc, --trunc-cutoff), noise modes and style
mixing are StyleGAN-only; --class selects the label of a class-conditional model. On a GPU the
networks run under bf16 autocast (--precision). Every file is written to a temporary name and
renamed, and an existing file is only replaced with --overwrite. Errors in the input (a corrupt
snapshot, a bad option) end with a one-line message and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .config import ConfigError
from .files import atomic_write, save_png
from .snapshot import SnapshotError, load_snapshot

PROG = "pggan-generate"


class GenerateError(ValueError):
    """A problem with the command line or its inputs, worded as one line."""


# --------------------------------------------------------------------------------------------
# Parsing helpers.


def parse_seeds(text: str, option: str = "--seeds") -> List[int]:
    """'0-7,12' -> [0, 1, ..., 7, 12] (ranges inclusive, order kept)."""
    seeds: List[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise GenerateError(f"{option} {text!r}: expected comma-separated seeds or ranges such "
                            f"as 0-7,12") from None
    if any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise GenerateError(f"{option} {text!r}: seeds must be in [0, 2^32)")
    return seeds


def parse_layers(text: str, num_ws: int) -> List[int]:
    layers = parse_seeds(text, "--styles")
    bad = [i for i in layers if i >= num_ws]
    if bad:
        raise GenerateError(f"--styles {text!r}: layer {bad[0]} does not exist at this "
                            f"resolution (layers 0..{num_ws - 1})")
    return sorted(set(layers))


def latents_from_seeds(seeds: Sequence[int], latent_dim: int) -> torch.Tensor:
    """[len(seeds), latent_dim] float32 on the CPU, each row a pure function of its seed."""
    rows = [torch.randn(latent_dim, generator=torch.Generator().manual_seed(int(s)))
            for s in seeds]
    return torch.stack(rows)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, C, H, W] on the CPU (PGGAN's value mapping)."""
    return (img.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).cpu()


def to_pil(img_uint8: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] -> PIL image ('L' for 1 channel, 'RGB' for 3)."""
    arr = img_uint8.permute(1, 2, 0).numpy()                       # [H, W, C]
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def tile(images: torch.Tensor, cols: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [C, rows*H, cols*W], row-major, empty cells black."""
    n, c, h, w = images.shape
    rows = max(1, math.ceil(n / cols))
    grid = torch.zeros(c, rows * h, cols * w, dtype=images.dtype)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid


# --------------------------------------------------------------------------------------------
# Output files: atomic, never replacing a file without --overwrite.


def check_targets(paths: Sequence[Path], overwrite: bool) -> None:
    for p in paths:
        if p.exists() and not overwrite:
            raise GenerateError(f"{p} already exists (pass --overwrite to replace it)")
        if p.exists() and not p.is_file():
            raise GenerateError(f"{p} exists and is not a file")


def write_png(path: Path, img_uint8: torch.Tensor) -> None:
    """uint8 [C, H, W] -> PNG at `path` (atomic; pggan.files.save_png), its directory made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, img_uint8.permute(1, 2, 0))                     # [H, W, C]


def have_ffmpeg() -> bool:
    return (importlib.util.find_spec("imageio") is not None
            and importlib.util.find_spec("imageio_ffmpeg") is not None)


def write_video(path: Path, frames: List[torch.Tensor], fps: float) -> None:
    """uint8 [C, H, W] frames -> mp4 (imageio-ffmpeg, H.264) or GIF (imageio, else Pillow)."""
    if path.suffix.lower() == ".mp4":
        import imageio.v2 as iio

        def write(tmp: Path) -> None:
            with iio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264",
                                macro_block_size=1, quality=8) as w:
                for f in frames:
                    arr = f.permute(1, 2, 0).numpy()                 # [H, W, C]
                    w.append_data(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)
    else:
        duration_ms = 1000.0 / fps
        pil_frames = [to_pil(f) for f in frames]

        def write(tmp: Path) -> None:
            pil_frames[0].save(tmp, format="GIF", save_all=True, append_images=pil_frames[1:],
                               duration=duration_ms, loop=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write, fsync=False)     # an output a rerun recreates: no fsync wait


# --------------------------------------------------------------------------------------------
# Running the network.


class Runner:
    """A loaded snapshot plus the options every subcommand shares."""

    def __init__(self, args: argparse.Namespace, need_stylegan: Optional[str] = None):
        self.device = self._pick_device(args.device)
        try:
            self.G, snap = load_snapshot(args.snapshot, device=self.device)
        except (SnapshotError, ConfigError) as e:
            raise GenerateError(str(e)) from None
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            # e.g. an architecture this version does not know, or a damaged weights dict.
            raise GenerateError(f"{args.snapshot}: cannot build its network "
                                f"({str(e).splitlines()[0][:160]})") from None
        self.cfg = self.G.cfg
        self.arch = self.cfg.arch
        if need_stylegan and self.arch != "stylegan":
            raise GenerateError(f"{need_stylegan} needs a StyleGAN snapshot ({args.snapshot} is "
                                f"arch={self.arch})")
        snap_res, snap_alpha = int(snap.get("res", self.cfg.max_res)), float(snap.get("alpha", 1.0))
        self.res = snap_res if args.res is None else int(args.res)
        if self.res < 4 or self.res > self.cfg.max_res or 2 ** int(math.log2(self.res)) != self.res:
            raise GenerateError(f"--res {self.res}: must be a power of two in "
                                f"[4, {self.cfg.max_res}] for this snapshot")
        if self.res > snap_res:
            print(f"{PROG}: warning: --res {self.res} is above the stage this snapshot was "
                  f"trained to ({snap_res}); its layers are untrained", file=sys.stderr)
        # The snapshot's alpha belongs to its own stage; lower stages finished fading in.
        default_alpha = snap_alpha if self.res == snap_res else 1.0
        self.alpha = default_alpha if args.alpha is None else float(args.alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise GenerateError(f"--alpha {self.alpha}: must be in [0, 1]")
        self.psi, self.cutoff, self.noise_mode = args.trunc, args.trunc_cutoff, args.noise_mode
        if self.arch != "stylegan" and (self.psi != 1.0 or self.cutoff is not None):
            raise GenerateError(f"--trunc/--trunc-cutoff are StyleGAN-only (this snapshot is "
                                f"arch={self.arch}); drop them")
        self.label = self._check_class(args.class_label)
        self.batch = args.batch
        if self.batch < 1:
            raise GenerateError(f"--batch {self.batch}: must be >= 1")
        precision = args.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.bf16 = precision == "bf16"

    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise GenerateError(f"--device {name}: no CUDA device available (use --device cpu)")
        try:
            return torch.device(name)
        except RuntimeError:
            raise GenerateError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") \
                from None

    def _check_class(self, label: Optional[int]) -> Optional[int]:
        k = self.cfg.num_classes
        if k == 0:
            if label is not None:
                raise GenerateError(f"--class {label}: this snapshot is not class-conditional")
            return None
        if label is None:
            raise GenerateError(f"this snapshot is class-conditional ({k} classes): pass "
                                f"--class in 0..{k - 1}")
        if not 0 <= label < k:
            raise GenerateError(f"--class {label}: out of range, this snapshot has {k} classes "
                                f"(0..{k - 1})")
        return label

    def labels(self, n: int) -> Optional[torch.Tensor]:
        if self.label is None:
            return None
        return torch.full([n], self.label, dtype=torch.long, device=self.device)

    def _batches(self, n: int):
        for i in range(0, n, self.batch):
            yield slice(i, min(n, i + self.batch))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 \
            else nullcontext()

    @torch.no_grad()
    def iter_images_from_z(self, z: torch.Tensor):
        """z [N, latent] (CPU) -> uint8 [B, C, res, res] batches of at most --batch images."""
        for sl in self._batches(z.shape[0]):
            zb = z[sl].to(self.device)
            with self._autocast():
                if self.arch == "stylegan":
                    img = self.G(zb, self.labels(zb.shape[0]), res=self.res, alpha=self.alpha,
                                 truncation_psi=self.psi, truncation_cutoff=self.cutoff,
                                 noise_mode=self.noise_mode)
                else:
                    img = self.G(zb, self.labels(zb.shape[0]), res=self.res, alpha=self.alpha)
            yield to_uint8(img)

    def images_from_z(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(self.iter_images_from_z(z)))

    @torch.no_grad()
    def ws_from_z(self, z: torch.Tensor) -> torch.Tensor:
        """StyleGAN: z [N, latent] -> truncated ws [N, num_ws, w_dim] (float32, on device)."""
        zd = z.to(self.device)
        return self.G.mapping(zd, self.labels(zd.shape[0]), self.psi, self.cutoff).float()

    @torch.no_grad()
    def images_from_ws(self, ws: torch.Tensor) -> torch.Tensor:
        out = []
        for sl in self._batches(ws.shape[0]):
            with self._autocast():
                img = self.G.synthesis(ws[sl], res=self.res, alpha=self.alpha,
                                       noise_mode=self.noise_mode)
            out.append(to_uint8(img))
        return torch.cat(out)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of latents a, b [D] at t [F] -> [F, D] (norms interpolated)."""
    na, nb = a.norm(), b.norm()
    ua, ub = a / na, b / nb
    omega = torch.acos((ua * ub).sum().clamp(-1.0, 1.0))
    t = t[:, None]
    if omega < 1e-6:
        direction = torch.lerp(ua, ub, t)
    else:
        direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    return direction * torch.lerp(na, nb, t)


# --------------------------------------------------------------------------------------------
# Subcommands.


def cmd_images(args: argparse.Namespace) -> List[Path]:
    seeds = parse_seeds(args.seeds)
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise GenerateError(f"--outdir {outdir}: exists and is not a directory")
    suffix = "" if args.class_label is None else f"-class{args.class_label}"
    paths = [outdir / f"seed{s:04d}{suffix}.png" for s in seeds]
    if len(set(paths)) != len(paths):
        raise GenerateError(f"--seeds {args.seeds!r}: a seed is listed twice")
    check_targets(paths, args.overwrite)
    run = Runner(args)
    pending = iter(paths)
    for batch in run.iter_images_from_z(latents_from_seeds(seeds, run.cfg.latent_dim)):
        for img in batch:                                           # saved as each batch ends
            write_png(next(pending), img)
    return paths


def cmd_grid(args: argparse.Namespace) -> List[Path]:
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    check_targets([out], args.overwrite)
    cols = args.cols or math.ceil(math.sqrt(len(seeds)))
    if cols < 1:
        raise GenerateError(f"--cols {cols}: must be >= 1")
    run = Runner(args)
    imgs = run.images_from_z(latents_from_seeds(seeds, run.cfg.latent_dim))
    write_png(out, tile(imgs, cols))
    return [out]


def cmd_video(args: argparse.Namespace) -> List[Path]:
    seeds = parse_seeds(args.seeds)
    if len(seeds) < 2:
        raise GenerateError("video: --seeds needs at least two seeds to interpolate between")
    if args.frames < 1 or args.fps <= 0:
        raise GenerateError("video: --frames must be >= 1 and --fps positive")
    out = Path(args.out) if args.out else Path("interp.mp4" if have_ffmpeg() else "interp.gif")
    ext = out.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise GenerateError(f"--out {out}: the video must be .mp4 or .gif")
    if ext == ".mp4" and not have_ffmpeg():
        raise GenerateError(f"--out {out}: mp4 needs imageio and imageio-ffmpeg "
                            f"(pip install imageio imageio-ffmpeg), or name a .gif")
    check_targets([out], args.overwrite)
    run = Runner(args)
    z = latents_from_seeds(seeds, run.cfg.latent_dim)              # [K, latent]
    t = torch.arange(args.frames, dtype=torch.float32) / args.frames   # [F] in [0, 1)
    keys = list(range(len(seeds))) + [0]                           # closed loop
    if run.arch == "stylegan":
        # Linear in w: the space the mapping network makes (more) linear (StyleGAN sec. 4).
        ws = run.ws_from_z(z)                                      # [K, num_ws, w_dim]
        path = torch.cat([torch.lerp(ws[a][None], ws[b][None], t.to(ws.device)[:, None, None])
                          for a, b in zip(keys[:-1], keys[1:])])
        frames = run.images_from_ws(path)
    else:
        # Spherical in z: z ~ N(0, I) lives near a sphere, which a straight line leaves.
        path = torch.cat([slerp(z[a], z[b], t) for a, b in zip(keys[:-1], keys[1:])])
        frames = run.images_from_z(path)
    write_video(out, list(frames), args.fps)
    return [out]


def cmd_style_mix(args: argparse.Namespace) -> List[Path]:
    row_seeds, col_seeds = parse_seeds(args.row_seeds, "--row-seeds"), \
        parse_seeds(args.col_seeds, "--col-seeds")
    out = Path(args.out)
    check_targets([out], args.overwrite)
    run = Runner(args, need_stylegan="style-mix")
    from .nets.stylegan import num_ws_at
    num_ws = num_ws_at(run.res)
    # Default: the coarse half of the active layers comes from the column seeds.
    layers = parse_layers(args.styles, num_ws) if args.styles else list(range(num_ws // 2))
    ws_row = run.ws_from_z(latents_from_seeds(row_seeds, run.cfg.latent_dim))  # [R, num_ws, w]
    ws_col = run.ws_from_z(latents_from_seeds(col_seeds, run.cfg.latent_dim))  # [C, num_ws, w]
    n_r, n_c = len(row_seeds), len(col_seeds)
    mixed = ws_row[:, None].repeat(1, n_c, 1, 1)                   # [R, C, num_ws, w]
    mixed[:, :, layers] = ws_col[None, :, layers]
    imgs = run.images_from_ws(torch.cat([ws_row, ws_col, mixed.flatten(0, 1)]))
    row_imgs, col_imgs, mix_imgs = imgs[:n_r], imgs[n_r:n_r + n_c], imgs[n_r + n_c:]
    # (R+1) x (C+1) tiles: blank corner, column sources on top, row sources on the left.
    cells = [torch.zeros_like(imgs[0])] + list(col_imgs)
    for r in range(n_r):
        cells += [row_imgs[r]] + list(mix_imgs[r * n_c:(r + 1) * n_c])
    write_png(out, tile(torch.stack(cells), n_c + 1))
    return [out]


# --------------------------------------------------------------------------------------------
# Command line.


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshot", help="network snapshot (network-snapshot-*.pt)")
    p.add_argument("--res", type=int, default=None,
                   help="output resolution (default: the snapshot's stage)")
    p.add_argument("--alpha", type=float, default=None,
                   help="fade-in of the output stage in [0, 1] (default: the snapshot's at its "
                        "own stage, 1 below it)")
    p.add_argument("--trunc", type=float, default=1.0, metavar="PSI",
                   help="truncation psi, StyleGAN only: w = w_avg + psi (w - w_avg) "
                        "(default: 1, off)")
    p.add_argument("--trunc-cutoff", type=int, default=None, metavar="N",
                   help="truncate only the first N style layers (default: all)")
    p.add_argument("--class", dest="class_label", type=int, default=None, metavar="K",
                   help="class label for class-conditional snapshots")
    p.add_argument("--noise-mode", choices=("const", "random", "none"), default="const",
                   help="StyleGAN per-pixel noise: the snapshot's fixed noise, fresh noise, or "
                        "none (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Generate images, grids, interpolation videos and style-mixing "
                               "grids from a pggan network snapshot.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("images", help="one PNG per seed")
    _add_common(p)
    p.add_argument("--seeds", required=True, help="e.g. 0-7,12")
    p.add_argument("--outdir", required=True, help="directory for seedNNNN.png")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("grid", help="one PNG grid of the seeds' images")
    _add_common(p)
    p.add_argument("--seeds", required=True, help="e.g. 0-15")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: ~sqrt(N))")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("video", help="latent interpolation through the seeds (closed loop)")
    _add_common(p)
    p.add_argument("--seeds", required=True, help="key frames, at least two")
    p.add_argument("--out", default=None,
                   help="output .mp4 (needs imageio-ffmpeg) or .gif (default: interp.mp4 when "
                        "imageio-ffmpeg is installed, else interp.gif)")
    p.add_argument("--frames", type=int, default=30, help="frames per transition")
    p.add_argument("--fps", type=float, default=30.0)
    p.set_defaults(func=cmd_video)

    p = sub.add_parser("style-mix", help="StyleGAN style-mixing grid")
    _add_common(p)
    p.add_argument("--row-seeds", required=True, help="sources of all other layers (rows)")
    p.add_argument("--col-seeds", required=True, help="sources of --styles layers (columns)")
    p.add_argument("--styles", default=None,
                   help="style layers taken from the column seeds, e.g. 0-3 (default: the "
                        "coarse half of the layers active at --res)")
    p.add_argument("--out", required=True, help="output .png")
    p.set_defaults(func=cmd_style_mix)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = args.func(args)
    except GenerateError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
