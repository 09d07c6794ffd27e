"""data_prep.convert: square handling, downsampling filters, pixel-mode fixes, encodings."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from data_prep.convert import ConvertSettings, ImageFormat, convert_array, convert_image

from .sample_files import (bomb_png, encode, png_bytes_16bit, quadrant_image, smooth_image)


def decoded(conv, res):
    arr = np.asarray(Image.open(io.BytesIO(conv.encoded[res])))
    return arr[:, :, None] if arr.ndim == 2 else arr


def settings(**kw) -> ConvertSettings:
    kw.setdefault("max_res", 32)
    return ConvertSettings(**kw)


# ---------------------------------------------------------------------------- downsampling


@pytest.mark.parametrize("filt", ["box", "area"])
def test_box_pyramid_levels_are_the_rounded_2x2_mean_of_the_next(filt):
    rng = np.random.RandomState(1)
    top = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
    conv = convert_array(top, settings(filter=filt))
    assert conv.encoded is not None and sorted(conv.encoded) == [4, 8, 16, 32]
    np.testing.assert_array_equal(decoded(conv, 32), top)
    for res in (16, 8, 4):
        above = decoded(conv, 2 * res).astype(np.int64)
        block = above.reshape(res, 2, res, 2, 3).sum(axis=(1, 3))
        np.testing.assert_array_equal(decoded(conv, res), (block + 2) // 4)


def lanczos_ref(a: np.ndarray, out: int) -> np.ndarray:
    """Separable Lanczos-3 resize of float [H, W, C] (square) to out x out, window widened by
    the scale factor, weights renormalised at the borders (the textbook antialiased form);
    like PIL, the horizontal pass is stored as 8-bit before the vertical one."""
    def matrix(n_in: int) -> np.ndarray:
        scale = n_in / out
        support = 3.0 * max(scale, 1.0)
        m = np.zeros((out, n_in))
        for i in range(out):
            centre = (i + 0.5) * scale
            lo, hi = max(0, int(math.floor(centre - support))), min(n_in, int(math.ceil(
                centre + support)))
            x = (np.arange(lo, hi) + 0.5 - centre) / max(scale, 1.0)
            w = np.sinc(x) * np.sinc(x / 3.0) * (np.abs(x) < 3.0)
            m[i, lo:hi] = w / w.sum()
        return m
    m = matrix(a.shape[0])
    rows = np.clip(np.round(np.einsum("jw,hwc->hjc", m, a)), 0, 255)   # horizontal pass, 8 bit
    return np.einsum("ih,hwc->iwc", m, rows)


def test_lanczos_matches_a_reference_lanczos3_within_one_level():
    top = np.asarray(smooth_image(64, 64, 7)).copy()
    rng = np.random.RandomState(2)
    top = np.clip(top.astype(int) + rng.randint(-40, 41, top.shape), 0, 255).astype(np.uint8)
    conv = convert_array(top, settings(max_res=64, filter="lanczos"))
    for res in (32, 16, 8, 4):
        ref = np.clip(np.round(lanczos_ref(top.astype(np.float64), res)), 0, 255)
        got = decoded(conv, res).astype(np.float64)
        # PIL's fixed-point weights: at most one level apart.
        assert np.abs(got - ref).max() <= 1.0, res


def test_lanczos_low_passes_where_decimation_aliases():
    # A 1-px checkerboard is the Nyquist frequency of the 32-px image: it must vanish at 16 px.
    yy, xx = np.mgrid[0:32, 0:32]
    board = np.where((yy + xx) % 2 == 0, 255, 0).astype(np.uint8)
    top = np.repeat(board[:, :, None], 3, axis=2)
    conv = convert_array(top, settings(filter="lanczos"))
    inner = decoded(conv, 16)[3:-3, 3:-3].astype(int)
    assert inner.min() >= 126 and inner.max() <= 129          # flat grey, no pattern
    assert (top[::2, ::2] == 255).all()       # naive decimation aliases it to solid white


def test_constant_image_stays_constant_at_every_resolution():
    top = np.full((32, 32, 3), (12, 200, 99), np.uint8)
    for filt in ("lanczos", "area"):
        conv = convert_array(top, settings(filter=filt))
        for res in (4, 8, 16, 32):
            assert (decoded(conv, res) == (12, 200, 99)).all(), (filt, res)


# ---------------------------------------------------------------------------- square handling


def test_centre_crop_and_pad_geometry():
    img = quadrant_image(96, 48)                  # left red, right blue, top green stripe
    data = encode(img, "PNG")
    crop = decoded(convert_image(data, settings(max_res=16, filter="area")), 16)
    # Crop keeps x in [24, 72): columns 0..7 red, 8..15 blue; the 6-px stripe -> 2 rows.
    assert (crop[4:, :7] == (255, 0, 0)).all() and (crop[4:, 9:] == (0, 0, 255)).all()
    assert (crop[:2] == (0, 255, 0)).all()
    pad = decoded(convert_image(data, settings(max_res=16, filter="area", square="pad",
                                               pad_color=(1, 2, 3))), 16)
    # Pad: 96x96 with the picture in rows [24, 72) -> rows 0..3 and 12..15 are border.
    assert (pad[:4] == (1, 2, 3)).all() and (pad[12:] == (1, 2, 3)).all()
    assert (pad[6:12, :7] == (255, 0, 0)).all() and (pad[6:12, 9:] == (0, 0, 255)).all()


def test_small_images_are_skipped_or_upscaled():
    data = encode(smooth_image(20, 24, 0), "PNG")
    skip = convert_image(data, settings(max_res=32))
    assert skip.encoded is None and skip.skip_category == "too-small"
    assert "20x24" in skip.skip_reason and "--small upscale" in skip.skip_reason
    up = convert_image(data, settings(max_res=32, small="upscale"))
    assert up.notes == ["upscaled"] and decoded(up, 32).shape == (32, 32, 3)


# ---------------------------------------------------------------------------- pixel modes


def test_16bit_grayscale_keeps_the_high_byte():
    vals = np.array([[65535, 32768], [256, 255]], np.uint16)
    a = np.kron(vals, np.ones((16, 16), np.uint16))            # 32 x 32 blocks
    conv = convert_image(png_bytes_16bit(a), settings(max_res=32, channels=1, filter="area"))
    assert conv.notes == ["16-bit"]
    out = decoded(conv, 32)[:, :, 0]
    # PIL's own convert("L") would clip all four blocks to 255.
    assert out[0, 0] == 255 and out[0, 31] == 128 and out[31, 0] == 1 and out[31, 31] == 0


def test_16bit_rgb_is_reduced_to_8bit():
    a = np.stack([np.full((32, 32), v, np.uint16) for v in (65535, 32768, 1000)], -1)
    conv = convert_image(png_bytes_16bit(a), settings(filter="area"))
    assert conv.notes == ["16-bit"]
    assert (decoded(conv, 32) == (255, 128, 3)).all()


def test_cmyk_is_converted_to_rgb():
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=100)
    conv = convert_image(data, settings(filter="area"))
    assert conv.notes == ["cmyk"]
    px = decoded(conv, 32).reshape(-1, 3).astype(int)
    assert (np.abs(px - (255, 0, 0)) <= 3).all()               # pure red


def test_transparency_is_composited_on_the_background():
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.paste(0, (0, 0, 16, 32))                               # left half transparent
    data = encode(pal, "PNG", transparency=0)
    conv = convert_image(data, settings(filter="area", background=(0, 0, 250)))
    out = decoded(conv, 32)
    assert conv.notes == ["transparency"]
    assert (out[:, :16] == (0, 0, 250)).all() and (out[:, 16:] == (200, 10, 10)).all()
    la = Image.fromarray(np.dstack([np.full((32, 32), 90, np.uint8),
                                    np.full((32, 32), 0, np.uint8)]), "LA")
    out = decoded(convert_image(encode(la, "PNG"), settings(filter="area")), 32)
    assert (out == 255).all()                                  # default white background


def test_grayscale_is_replicated_to_rgb_or_kept_as_one_channel():
    data = encode(Image.new("L", (32, 32), 77), "PNG")
    rgb = convert_image(data, settings(filter="area"))
    assert rgb.notes == ["grayscale"] and (decoded(rgb, 32) == 77).all()
    assert decoded(rgb, 32).shape == (32, 32, 3)
    one = convert_image(data, settings(filter="area", channels=1))
    assert one.notes == [] and decoded(one, 8).shape == (8, 8, 1)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6                                           # display rotated 90 deg CW
    data = encode(quadrant_image(64, 32), "JPEG", quality=95, exif=exif.tobytes())
    conv = convert_image(data, settings(filter="area"))
    assert conv.notes == ["exif-rotated"]
    out = decoded(conv, 32).astype(int)
    # Rotated CW: the green top stripe becomes the right edge, left (red) half becomes the top.
    assert (np.abs(out[:, -2:] - (0, 255, 0)) <= 40).all()
    assert (np.abs(out[2:14, 4:24] - (255, 0, 0)) <= 40).all()
    assert (np.abs(out[18:30, 4:24] - (0, 0, 255)) <= 40).all()


def test_animated_images_keep_their_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])   # APNG
    conv = convert_image(buf.getvalue(), settings(filter="area"))
    assert "animated" in conv.notes
    assert (decoded(conv, 32) == (250, 0, 0)).all()


# ---------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("data,category,words", [
    (b"", "empty", "0 bytes"),
    (b"\x00\x01 not an image at all" * 50, "corrupt", "not a recognisable image"),
    (bomb_png(), "too-large", "decompression bomb"),
])
def test_bad_bytes_are_skipped_with_a_one_line_reason(data, category, words):
    conv = convert_image(data, settings())
    assert conv.encoded is None and conv.skip_category == category
    assert words in conv.skip_reason and "\n" not in conv.skip_reason


def test_truncated_and_oversized_images_are_skipped():
    jpeg = encode(smooth_image(256, 256, 3), "JPEG", quality=90)
    for keep in (0.3, 0.9):                     # cut in the headers / in the pixel data
        cut = convert_image(jpeg[: int(len(jpeg) * keep)], settings())
        assert cut.skip_category == "truncated" and "runcated" in cut.skip_reason, keep
    big = encode(Image.new("RGB", (1100, 1000)), "PNG")
    over = convert_image(big, settings(max_pixels=1_000_000))
    assert over.skip_category == "too-large" and "1100x1000" in over.skip_reason


# ---------------------------------------------------------------------------- formats


def test_formats_per_resolution_and_quality():
    top = np.asarray(smooth_image(32, 32, 9))
    fmts = ((4, ImageFormat("png")), (8, ImageFormat("png")), (16, ImageFormat("jpeg", 50)),
            (32, ImageFormat("webp", 90)))
    conv = convert_array(top, settings(formats=fmts))
    assert conv.encoded[8][:8] == b"\x89PNG\r\n\x1a\n"
    assert conv.encoded[16][:3] == b"\xff\xd8\xff"
    assert conv.encoded[32][:4] == b"RIFF" and conv.encoded[32][8:12] == b"WEBP"
    hi = convert_array(top, settings(formats=((16, ImageFormat("jpeg", 98)),)))
    lo_err = np.abs(decoded(conv, 16).astype(int) - decoded(hi, 16).astype(int)).mean()
    assert len(hi.encoded[16]) > len(conv.encoded[16]) and lo_err > 0.5
    again = convert_array(top, settings(formats=fmts))
    assert again.encoded == conv.encoded                       # deterministic bytes
