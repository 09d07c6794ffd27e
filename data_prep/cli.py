"""Command line: `python -m data_prep` / `pggan-prep`.

Examples:
  python -m data_prep --source photos/ --out data/photos --max-res 256 --labels folders
  python -m data_prep --source faces.zip --out data/faces --max-res 1024 \\
      --format png --format-at 512=jpeg:95 --shard-mb 512
  python -m data_prep --source fashion-mnist --out data/fmnist --max-res 32
  python -m data_prep --source emoji --out data/emoji --max-res 128
  python -m data_prep --source synthetic --out data/synth --max-res 64 --num-images 10000
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .errors import PrepError
from .prepare import PrepOptions, prepare, summary_lines


def _rgb(text: str):
    try:
        v = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R,G,B integers (got {text!r})") from None
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"expected three values R,G,B (got {text!r})")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="data_prep", description="Images -> one webdataset shard set per resolution "
        "(4 .. max-res) + dataset.json, for pggan training.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    a = p.add_argument
    a("--verify", metavar="DIR", help="check every shard of the dataset in DIR against "
      "dataset.json's sizes and sha256 and exit (0 all good, 1 damaged shards listed); no "
      "--source/--out needed")
    a("--source", help="folder (recursive), .zip, .tar[.gz|.bz2|.xz], IDX file, "
      "or a built-in source: synthetic | fashion-mnist | emoji")
    a("--out", help="output folder (must be new, empty, or --overwrite)")
    a("--max-res", type=int, help="largest resolution, power of two 4..1024 (built-in sources "
      "default to synthetic 64, fashion-mnist 32, emoji 128)")
    a("--channels", type=int, choices=(1, 3), help="3: RGB, 1: grayscale (default: the "
      "source's own; fashion-mnist 1, else 3)")
    a("--square", choices=("crop", "pad"), default="crop",
      help="non-square images: centre crop (default) or pad with --pad-color")
    a("--filter", choices=("box", "area", "lanczos"), default="box",
      help="downsampling: box (default: Lanczos-3 to max-res, then each resolution the exact "
           "2x2 mean of the next, so the fade-in of reals is exact), area (box average to "
           "max-res, then the same pyramid) or lanczos (Lanczos-3 to every resolution)")
    a("--small", choices=("skip", "upscale"), help="images whose square side is below "
      "max-res: skip (default for folders/archives) or upscale (default for built-ins)")
    a("--labels", help="class labels: 'folders' (sub-folder names) or a .csv/.json file")
    a("--format", default="png", help="image format: png (lossless, default), jpeg[:Q] or "
      "webp[:Q] (quality 1..100, default 95)")
    a("--format-at", action="append", default=[], metavar="RES=FMT",
      help="format from resolution RES upwards, e.g. --format-at 256=jpeg:95 (repeatable)")
    a("--png-level", type=int, default=6, help="PNG zlib level 0..9 (size vs. speed; "
      "default 6)")
    a("--shard-mb", type=float, default=256.0, help="target shard size in MB (default 256)")
    a("--shard-images", type=int, default=2048, help="at most this many images per shard "
      "(default 2048), so small resolutions still have several shards to shuffle")
    a("--background", type=_rgb, default=(255, 255, 255), metavar="R,G,B",
      help="colour under transparent pixels (default 255,255,255)")
    a("--pad-color", type=_rgb, default=(0, 0, 0), metavar="R,G,B",
      help="colour of --square pad borders (default 0,0,0)")
    a("--max-pixels", type=int, default=89_478_485, help="skip images with more pixels than "
      "this (decompression-bomb guard; default 89478485)")
    a("--num-images", type=int, help="synthetic: how many (default 10000); other sources: "
      "stop after this many images")
    a("--seed", type=int, default=0, help="synthetic source seed (default 0)")
    a("--source-dir", help="where the fashion-mnist IDX files or NotoColorEmoji.ttf are "
      "(default: the Debian package paths)")
    a("--workers", type=int, default=0, help="worker processes (default: all cores; 1: "
      "in this process)")
    a("--overwrite", action="store_true", help="replace a dataset already in --out")
    a("--quiet", action="store_true", help="no progress bar or per-file messages")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        from .verify import main_verify
        return main_verify(args.verify)
    if not args.source or not args.out:
        parser.error("--source and --out are required (or --verify DIR)")
    opts = PrepOptions(source=args.source, out=args.out, max_res=args.max_res,
                       channels=args.channels, square=args.square, filter=args.filter,
                       small=args.small, background=args.background, pad_color=args.pad_color,
                       max_pixels=args.max_pixels, format=args.format, format_at=args.format_at,
                       png_level=args.png_level, shard_mb=args.shard_mb,
                       shard_images=args.shard_images, labels=args.labels,
                       source_dir=args.source_dir, num_images=args.num_images, seed=args.seed,
                       workers=args.workers, overwrite=args.overwrite,
                       progress=not args.quiet)
    if opts.workers < 0:
        print("data_prep: error: --workers must be >= 0", file=sys.stderr)
        return 2
    try:
        meta = prepare(opts)
    except PrepError as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        return 130 if str(e).startswith("interrupted") else 2
    for line in summary_lines(meta, args.out):
        print(line)
    return 0
