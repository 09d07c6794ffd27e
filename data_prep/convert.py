"""One source image -> the encoded square image at every resolution 4 .. max_res.

Steps, in order (each problem either converted, with a note, or skipped, with a reason):
  open        zero-byte, unrecognised and over-large (decompression bomb) files are skipped
  load        corrupt or truncated pixel data is skipped
  frame       animated images (GIF, APNG, WebP) keep their first frame
  orient      the EXIF orientation tag is applied (ImageOps.exif_transpose)
  pixels      -> 8-bit RGB (or L): CMYK via PIL's conversion, 16-bit samples keep their high byte
              (v >> 8; PIL's own I;16 -> L conversion would clip everything above 255 to white),
              transparency (RGBA, LA, palette + tRNS) composited on --background
  square      centre crop (default) or pad with --pad-color to a square; a square side smaller
              than max_res is skipped (--small skip) or upscaled (--small upscale)
  resize      square -> max_res, then every lower resolution:
                box:     (default) PIL's Lanczos-3 to max_res, then each lower resolution the
                         exact 2x2 mean of the one above, rounded half up in integers
                         (pggan/data/pyramid.py): the box pyramid PGGAN's fade-in assumes, so
                         at alpha = 0 D sees exactly the previous stage's reals;
                area:    PIL's BOX (area-weighted average) to max_res, then the same pyramid;
                lanczos: PIL's Lanczos-3 from the max_res image to every resolution (windowed
                         sinc, low-passes before decimating: sharpest per level, but a level
                         is not the 2x2 mean of the next, so the fade-in of reals is not exact).
  encode      PNG (lossless, default), JPEG (4:4:4 chroma) or WebP with a quality, per resolution
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pggan.data.pyramid import box_pyramid_uint8

FORMATS = ("png", "jpeg", "webp")
# filter -> PIL resampling to max_res; box and area continue with the exact box pyramid.
FILTERS = {"box": Image.Resampling.LANCZOS, "area": Image.Resampling.BOX,
           "lanczos": Image.Resampling.LANCZOS}
PYRAMID_FILTERS = ("box", "area")


class SkipImage(Exception):
    """This image cannot be used; args = (category, one-line reason)."""

    def __init__(self, category: str, reason: str):
        super().__init__(category, reason)
        self.category, self.reason = category, reason


@dataclass(frozen=True)
class ImageFormat:
    name: str                       # png | jpeg | webp
    quality: Optional[int] = None   # jpeg / webp: 1..100; png: None

    def spec(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"


@dataclass(frozen=True)
class ConvertSettings:
    max_res: int
    channels: int = 3                               # 3: RGB, 1: L (grayscale)
    square: str = "crop"                            # crop | pad
    filter: str = "box"                             # box | area | lanczos
    small: str = "skip"                             # skip | upscale
    background: Tuple[int, int, int] = (255, 255, 255)   # under transparent pixels
    pad_color: Tuple[int, int, int] = (0, 0, 0)
    max_pixels: int = 89_478_485                    # decompression-bomb guard (PIL's default)
    formats: Tuple[Tuple[int, ImageFormat], ...] = ()   # (res, format) for every resolution
    png_level: int = 6                              # zlib level: size vs. prep speed only

    @property
    def resolutions(self) -> List[int]:
        return [4 << i for i in range(int(math.log2(self.max_res)) - 1)]

    def format_at(self, res: int) -> ImageFormat:
        return dict(self.formats).get(res, ImageFormat("png"))


@dataclass
class Converted:
    """Result for one image: encoded bytes per resolution, or a skip; notes on conversions."""
    encoded: Optional[Dict[int, bytes]] = None
    skip_category: Optional[str] = None
    skip_reason: Optional[str] = None
    notes: List[str] = field(default_factory=list)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _damage_category(e: BaseException) -> str:
    return "truncated" if "truncat" in str(e).lower() else "corrupt"


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> an opened (not yet decoded) PIL image, or SkipImage."""
    if len(data) == 0:
        raise SkipImage("empty", "empty file (0 bytes)")
    with warnings.catch_warnings():
        # Our own max_pixels check below replaces PIL's warning; its hard error stays a skip.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise SkipImage("too-large", f"decompression bomb refused ({_first_line(e)})")
        except UnidentifiedImageError:
            raise SkipImage("corrupt", "not a recognisable image (unknown format or damaged "
                                       "header)") from None
        except Exception as e:                      # damaged headers raise many types
            raise SkipImage(_damage_category(e), f"cannot open: {_first_line(e)}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise SkipImage("too-large", f"{w}x{h} = {w * h} pixels exceeds --max-pixels "
                                     f"{max_pixels} (decompression-bomb guard)")
    if w < 1 or h < 1:
        raise SkipImage("corrupt", f"invalid size {w}x{h}")
    return img


def _is_16bit(img: Image.Image) -> bool:
    return img.mode.startswith("I;16") or any(
        isinstance(t.args, str) and ";16" in t.args for t in (getattr(img, "tile", None) or []))


def to_8bit(img: Image.Image, settings: ConvertSettings, notes: List[str],
            was_16bit: bool = False) -> Image.Image:
    """Any PIL mode -> 'RGB' or 'L' (settings.channels), appending what was done to `notes`.
    `was_16bit`: the file stored 16-bit samples that PIL already reduced (16-bit RGB PNG)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if mode == "I" and arr.max(initial=0) > 65535:
            raise SkipImage("unsupported", "32-bit integer pixels are not supported")
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), "L")
        notes.append("16-bit")
    elif was_16bit:
        notes.append("16-bit")                      # PIL already kept the high byte
    if img.mode == "F":
        raise SkipImage("unsupported", "32-bit float pixels are not supported")
    if img.mode == "CMYK":
        notes.append("cmyk")
        img = img.convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info) or (
        img.mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        notes.append("transparency")
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(settings.background) + (255,))
        img = Image.alpha_composite(base, rgba).convert("RGB")
    elif img.mode == "P":
        notes.append("palette")
        img = img.convert("RGB")
    elif img.mode in ("1", "L"):
        if settings.channels == 3:
            notes.append("grayscale")
        img = img.convert("L")
    elif img.mode != "RGB":
        img = img.convert("RGB")                    # YCbCr, LAB, HSV, ...
    target = "RGB" if settings.channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def make_square(img: Image.Image, settings: ConvertSettings) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    if settings.square == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))
    s = max(w, h)
    fill = tuple(settings.pad_color) if img.mode == "RGB" else int(
        round(0.299 * settings.pad_color[0] + 0.587 * settings.pad_color[1]
              + 0.114 * settings.pad_color[2]))
    out = Image.new(img.mode, (s, s), fill)
    out.paste(img, ((s - w) // 2, (s - h) // 2))
    return out


def box_pyramid(top: np.ndarray, resolutions: List[int]) -> Dict[int, np.ndarray]:
    """uint8 [R, R, C] -> {res: uint8 [res, res, C]}: each level the exact 2x2 mean of the
    one above, rounded half up (pggan.data.pyramid, the one rounding training uses too)."""
    levels = box_pyramid_uint8(torch.from_numpy(np.array(top)).permute(2, 0, 1),
                               resolutions)
    return {res: np.ascontiguousarray(x.permute(1, 2, 0).numpy()) for res, x in levels.items()}


def resize_all(square: Image.Image, settings: ConvertSettings) -> Dict[int, np.ndarray]:
    """Square image -> {res: uint8 [res, res, C]} for res in 4 .. max_res."""
    R = settings.max_res
    resample = FILTERS[settings.filter]
    top = square if square.size[0] == R else square.resize((R, R), resample)
    if settings.filter in PYRAMID_FILTERS:
        arr = np.asarray(top)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return box_pyramid(arr, settings.resolutions)
    out = {}
    for res in settings.resolutions:
        im = top if res == R else top.resize((res, res), resample)
        arr = np.asarray(im)
        out[res] = arr[:, :, None] if arr.ndim == 2 else arr
    return out


def encode(arr: np.ndarray, fmt: ImageFormat, png_level: int) -> bytes:
    """uint8 [H, W, C] -> file bytes. Deterministic: no timestamps or other metadata."""
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    if fmt.name == "png":
        img.save(buf, format="PNG", compress_level=png_level)
    elif fmt.name == "jpeg":
        img.save(buf, format="JPEG", quality=fmt.quality, subsampling=0)
    elif fmt.name == "webp":
        img.save(buf, format="WEBP", quality=fmt.quality, method=4)
    else:
        raise ValueError(f"unknown image format {fmt.name!r}")
    return buf.getvalue()


def convert_pixels(img: Image.Image, settings: ConvertSettings,
                   notes: List[str]) -> Dict[int, np.ndarray]:
    """Opened PIL image -> {res: uint8 [res, res, C]} (raises SkipImage)."""
    if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
        notes.append("animated")                    # the first frame is used
        img.seek(0)
    w, h = img.size
    side = min(w, h) if settings.square == "crop" else max(w, h)
    if side < settings.max_res and settings.small == "skip":
        raise SkipImage("too-small", f"{w}x{h} gives a {side} px square, smaller than max-res "
                                     f"{settings.max_res} (use --small upscale to keep it)")
    if img.format == "JPEG" and side >= 2 * settings.max_res:
        # Decode large JPEGs at a reduced DCT scale that still leaves >= max_res px per side.
        img.draft(img.mode, (math.ceil(w * settings.max_res / side),
                             math.ceil(h * settings.max_res / side)))
    was_16bit = _is_16bit(img)                      # the tile list is gone after load()
    try:
        img.load()
    except Exception as e:
        raise SkipImage(_damage_category(e), f"cannot decode pixel data: {_first_line(e)}") \
            from None
    orientation = img.getexif().get(0x0112, 1)
    if orientation not in (None, 1):
        notes.append("exif-rotated")
        img = ImageOps.exif_transpose(img)
    img = to_8bit(img, settings, notes, was_16bit)
    square = make_square(img, settings)
    if square.size[0] < settings.max_res:
        notes.append("upscaled")
    return resize_all(square, settings)


def convert_image(data: bytes, settings: ConvertSettings) -> Converted:
    """Encoded file bytes -> Converted (never raises for a bad image: it becomes a skip)."""
    notes: List[str] = []
    try:
        with open_image(data, settings.max_pixels) as img:
            pixels = convert_pixels(img, settings, notes)
    except SkipImage as s:
        return Converted(skip_category=s.category, skip_reason=s.reason, notes=notes)
    except (MemoryError, Image.DecompressionBombError) as e:
        return Converted(skip_category="too-large", skip_reason=_first_line(e), notes=notes)
    except Exception as e:                          # any other decoder failure: skip, go on
        return Converted(skip_category="corrupt",
                         skip_reason=f"{type(e).__name__}: {_first_line(e)}", notes=notes)
    return encode_all(pixels, settings, notes)


def convert_array(arr: np.ndarray, settings: ConvertSettings) -> Converted:
    """uint8 [H, W] or [H, W, 3|4] pixels (built-in sources) -> Converted."""
    mode = {2: "L"}.get(arr.ndim) or {3: "RGB", 4: "RGBA", 1: "L"}[arr.shape[2]]
    img = Image.fromarray(arr if arr.ndim == 2 or arr.shape[2] != 1 else arr[:, :, 0], mode)
    notes: List[str] = []
    try:
        pixels = convert_pixels(img, settings, notes)
    except SkipImage as s:
        return Converted(skip_category=s.category, skip_reason=s.reason, notes=notes)
    return encode_all(pixels, settings, notes)


def encode_all(pixels: Dict[int, np.ndarray], settings: ConvertSettings,
               notes: List[str]) -> Converted:
    encoded = {res: encode(a, settings.format_at(res), settings.png_level)
               for res, a in pixels.items()}
    return Converted(encoded=encoded, notes=notes)
