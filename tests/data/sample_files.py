"""Test inputs built at test time (good and bad image files) and an independent shard reader."""
from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.prepare import PrepOptions, prepare


def png_bytes_16bit(arr: np.ndarray) -> bytes:
    """uint16 [H, W] (grayscale) or [H, W, 3] (RGB) -> a 16-bit PNG, written chunk by chunk
    (PIL cannot write 16-bit RGB PNGs)."""
    h, w = arr.shape[:2]
    color_type = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return _png(w, h, 16, color_type, zlib.compress(raw))


def _png(w: int, h: int, depth: int, color_type: int, idat: bytes) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth,
                                                              color_type, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def bomb_png() -> bytes:
    """A 100 kB-free 'decompression bomb': the header claims 100000 x 100000 RGB pixels."""
    return _png(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 1024))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def quadrant_image(w: int, h: int) -> Image.Image:
    """RGB image: left half red, right half blue, top rows a green stripe (orientation mark)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2:] = (0, 0, 255)
    a[: h // 8] = (0, 255, 0)
    return Image.fromarray(a)


def smooth_image(w: int, h: int, seed: int) -> Image.Image:
    """A smooth random RGB image (gradients), distinct per seed."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([(rng.rand() * xx / w + rng.rand() * yy / h) * 127 + rng.rand() * 128
                  for _ in range(3)], axis=-1)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


# Every bad-input case of the issue, with the category (skips) or note (conversions) it gives.
BAD_SKIPS = {
    "bad/corrupt.jpg": "corrupt",          # random bytes with an image extension
    "bad/fake.png": "corrupt",             # a text file named .png
    "bad/truncated.jpg": "truncated",      # JPEG cut in half
    "bad/truncated.png": "truncated",      # PNG cut in half
    "bad/empty.png": "empty",              # zero bytes
    "bad/notes.txt": "not-image",          # not an image at all
    "bad/bomb.png": "too-large",           # header claims 10^10 pixels
    "bad/huge.png": "too-large",           # over --max-pixels
    "bad/small.png": "too-small",          # 16 px < max-res 32 (--small skip)
    "bad/dangling.png": "unreadable",      # a symlink to nowhere
}
BAD_CONVERTS = {
    "ok/cmyk.jpg": ["cmyk"],
    "ok/gray16.png": ["16-bit", "grayscale"],
    "ok/rgb16.png": ["16-bit"],
    "ok/palette_alpha.png": ["transparency"],
    "ok/gray.png": ["grayscale"],
    "ok/exif_rotated.jpg": ["exif-rotated"],
    "ok/animated.gif": ["animated", "palette"],
    "ok/rgba.png": ["transparency"],
    "ok/plain.png": [],
    "ok/plain.bmp": [],
    "ok/wide.jpg": [],
}


def write_bad_folder(root: Path) -> Path:
    """A folder with every bad-input case (BAD_SKIPS) and every convertible oddity
    (BAD_CONVERTS), all built here; max-res 32 and --max-pixels 1000000 are assumed."""
    (root / "bad").mkdir(parents=True)
    (root / "ok").mkdir()
    rng = np.random.RandomState(0)
    good_jpeg = encode(smooth_image(64, 64, 1), "JPEG", quality=90)
    good_png = encode(smooth_image(64, 64, 2), "PNG")
    files = {
        "bad/corrupt.jpg": rng.bytes(3000),
        "bad/fake.png": b"this is a text file, not a PNG\n" * 10,
        "bad/truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "bad/truncated.png": good_png[: len(good_png) // 2],
        "bad/empty.png": b"",
        "bad/notes.txt": b"some notes\n",
        "bad/bomb.png": bomb_png(),
        "bad/huge.png": encode(Image.new("RGB", (1200, 1000), (9, 9, 9)), "PNG"),
        "bad/small.png": encode(smooth_image(16, 16, 3), "PNG"),
        "ok/cmyk.jpg": encode(Image.new("CMYK", (48, 48), (0, 255, 255, 0)), "JPEG",
                              quality=95),
        "ok/gray16.png": png_bytes_16bit(np.full((40, 40), 32768, np.uint16)),
        "ok/rgb16.png": png_bytes_16bit(np.stack([np.full((40, 40), v, np.uint16) for v in
                                                  (65535, 32768, 256)], -1)),
        "ok/gray.png": encode(Image.new("L", (40, 40), 77), "PNG"),
        "ok/plain.png": good_png,
        "ok/plain.bmp": encode(smooth_image(40, 40, 4), "BMP"),
        "ok/wide.jpg": encode(smooth_image(96, 48, 5), "JPEG", quality=92),
    }
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.paste(0, (0, 0, 20, 40))                     # left half: index 0, transparent
    files["ok/palette_alpha.png"] = encode(pal, "PNG", transparency=0)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 0                                 # fully transparent green
    files["ok/rgba.png"] = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    # EXIF orientation 6: the stored 64x32 picture is shown rotated 90 deg clockwise (32x64).
    exif = Image.Exif()
    exif[0x0112] = 6
    files["ok/exif_rotated.jpg"] = encode(quadrant_image(64, 32), "JPEG", quality=95,
                                          exif=exif.tobytes())
    frames = [Image.new("P", (40, 40), c) for c in (1, 2, 3)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    files["ok/animated.gif"] = buf.getvalue()
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root / "bad" / "dangling.png").symlink_to(root / "bad" / "does-not-exist.png")
    return root


def read_shard_set(root: Path, res: int) -> dict:
    """{global index: (uint8 [res, res, C] decoded with PIL, label or None)} read straight from
    the tar files of one resolution (independent of the loader)."""
    out = {}
    for tar_path in sorted((root / f"res-{res:04d}").glob("shard-*.tar")):
        with tarfile.open(tar_path) as tf:
            members = {}
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for key, sample in members.items():
            img_ext = next(e for e in sample if e in ("png", "jpg", "webp"))
            arr = np.asarray(Image.open(io.BytesIO(sample[img_ext])))
            arr = arr[:, :, None] if arr.ndim == 2 else arr
            label = int(sample["cls"]) if "cls" in sample else None
            out[int(key)] = (arr, label)
    return out


def run_prep(tmp_path: Path, name: str, **kw) -> Path:
    """Run data_prep in this process (no pool: workers=1) and return the output folder."""
    out = tmp_path / name
    prepare(PrepOptions(out=str(out), workers=kw.pop("workers", 1), progress=False, **kw))
    return out
