"""Generated hostile inputs shared by tests/faults and benchmarks/faults.py: bad --set values
and YAML presets for pggan-train, hostile zip/tar archives for data_prep."""
from __future__ import annotations

import io
import random
import tarfile
import zipfile
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

# (option, bad values): wrong type, range or shape for fields of every kind.
BAD_SETS = {
    "data.num_workers": ["99999999999999999999", "-1", "1.5", "abc", "[]", "{}", "true", "1e400",
                         "257", "null", "Auto", "''"],
    "data.shuffle_buffer": ["-5", "1e30", "x", "[1]", "10000001"],
    "model.fir_filter": ["[]", "[a, b]", "[-1, 2]", "[0, 0]", "[.nan, 1]", "[.inf]", "5", "x",
                         "[true, 1]", "[[1]]", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]"],
    "model.max_res": ["1000", "0", "-8", "2048", "99999999999999999999", "8.5", "abc", "[8]"],
    "model.img_channels": ["2", "0", "4", "x"],
    "model.latent_dim": ["0", "-1", "1e99", "x"],
    "model.arch": ["gan", "1", "[]", "null"],
    "model.mbstd_group": ["-1", "x"],
    "model.style_mixing_prob": ["2", "-0.1", ".nan", "x"],
    "schedule.lr": ["0", "-1", ".inf", ".nan", "x", "[]", "1e999"],
    "schedule.fade_kimg": ["-1", ".nan", "x"],
    "schedule.batch_by_res": ["{3: 8}", "{4: 0}", "{4: x}", "{x: 4}", "[]", "5"],
    "schedule.batch_default": ["0", "x", "-4"],
    "schedule.start_res": ["3", "2048", "x"],
    "optim.beta1": ["1", "-0.5", "x", ".nan"],
    "optim.beta2": ["1.5", "x"],
    "loss.kind": ["wgan", "", "1"],
    "loss.r1_interval": ["-1", "x", "1.5"],
    "ema.ema_kimg": ["-1", "x", ".inf"],
    "augment.mode": ["on", "1"],
    "augment.p": ["2", "-1", "x"],
    "train.total_kimg": ["0", "-1", ".inf", ".nan", "x"],
    "train.keep_last": ["0", "-1", "x"],
    "train.tick_kimg": ["0", "x"],
    "train.snapshot_kimg": ["0", "-1"],
    "train.on_nonfinite": ["ignore", "1", "[]"],
    "train.nonfinite_max_skips": ["0", "-1", "x"],
    "train.compile": ["fast", "1", "true", "[]", "null", "on"],
    "train.seed": ["99999999999999999999", "x", "1.5"],
    "train.mixed_precision": ["fp8", "1"],
    "train.engine": ["horovod"],
    "train.zero_stage": ["3", "-1"],
    "metrics.names": ["[fid2]", "x", "[1]"],
    "nosuchsection.x": ["1"],
    "model.nosuchkey": ["1"],
    "model": ["1"],
}
BAD_FLAGS = [["--max-res", "1000"], ["--max-res", "x"], ["--total-kimg", "nan"],
             ["--total-kimg", "-1"], ["--num-workers", "-1"],
             ["--num-workers", "99999999999999999999"], ["--config", "no-such-preset"],
             ["--config", "/nonexistent/x.yaml"], ["--engine", "x"], ["--zero-stage", "9"],
             ["--arch", "x"], ["--loss", "x"], ["--metrics", "bogus"], ["--set", "noequals"],
             ["--set", "model.max_res=[unclosed"], ["--batch-per-gpu", "-1"],
             ["--augment", "maybe"], ["--resume-res", "x"], ["--mirror", "sometimes"],
             ["--mirror", ""]]
BAD_YAML = ["model: [1, 2", "just a string", "- a\n- list", "model: 5",
            "model: {max_res: x}", "base: no-such-preset", "model: {fir_filter: []}",
            "data: {num_workers: 99999999999999999999}", "train: {total_kimg: .nan}",
            "schedule: {lr_by_res: {4: -1}}", "\x00\x01binary", "model: {max_res: 16}\n" * 3 +
            "model: {unknown: 1}", "train: {seed: 1e400}", "{{{", "model:\n  max_res: 16\n"
            "  fmap_base: 0"]


def bad_set_args() -> List[List[str]]:
    return [["--set", f"{k}={v}"] for k, vals in BAD_SETS.items() for v in vals]


def random_bad_set_args(rng: random.Random, n: int) -> List[List[str]]:
    """`n` more: random fields with random junk (type confusion, huge/negative numbers)."""
    # Invalid for every field of BAD_SETS whatever its type (an empty list or mapping, or a
    # string, would be valid for some).
    junk = ["99999999999999999999", "-99999999999999999999", ".nan", "-.inf", "[[[]]]",
            "!!binary AA==", "0x" + "f" * 40, "[.nan]"]
    keys = list(BAD_SETS)
    out = []
    for _ in range(n):
        key = rng.choice(keys)
        out.append(["--set", f"{key}={rng.choice(junk + BAD_SETS[key])}"])
    return out


# ---- archives ----------------------------------------------------------------------------


def png_bytes(seed: int, size: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind=tarfile.REGTYPE,
             linkname: str = "", size=None) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


HOSTILE_NAMES = ["/tmp/pggan-fuzz-abs-{tag}.png", "../pggan-fuzz-up-{tag}.png",
                 "a/../../pggan-fuzz-up2-{tag}.png", "./../pggan-fuzz-{tag}.png",
                 "C:/pggan-fuzz-{tag}.png", "..\\pggan-fuzz-{tag}.png", "ok/{tag}.png",
                 "x" * 300 + ".png", "uni\u00e9\u2603-{tag}.png", "sp ace {tag}.PNG"]


def hostile_archive(path: Path, rng: random.Random, tag: str, max_member: int) -> str:
    """Write one random hostile zip or tar to `path`; -> a short description."""
    kind = rng.choice(["zip", "tar", "tgz", "garbage", "truncated-zip", "truncated-tar"])
    names = rng.sample(HOSTILE_NAMES, 4)
    names = [n.format(tag=tag) for n in names]
    bomb = rng.random() < 0.3
    if kind in ("zip", "truncated-zip"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for i, n in enumerate(names):
                zf.writestr(n, png_bytes(i))
            if bomb:
                zf.writestr(f"bomb-{tag}.png", b"\0" * (max_member + 1))
            if rng.random() < 0.5:
                link = zipfile.ZipInfo(f"link-{tag}.png")
                link.external_attr = (0o120777 << 16)
                zf.writestr(link, "/etc/passwd")
        data = buf.getvalue()
        if kind == "truncated-zip":
            data = data[:rng.randrange(1, len(data))]
        path.write_bytes(data)
    elif kind in ("tar", "tgz", "truncated-tar"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz" if kind == "tgz" else "w") as tf:
            for i, n in enumerate(names):
                _tar_add(tf, n, png_bytes(i))
            _tar_add(tf, f"sym-{tag}.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
            _tar_add(tf, f"hard-{tag}.png", kind=tarfile.LNKTYPE, linkname=names[0])
            _tar_add(tf, f"../evil-dir-{tag}", kind=tarfile.DIRTYPE)
            _tar_add(tf, f"fifo-{tag}.png", kind=tarfile.FIFOTYPE)
            _tar_add(tf, f"dev-{tag}.png", kind=tarfile.CHRTYPE)
            if bomb:
                _tar_add(tf, f"bomb-{tag}.png", b"\0" * (max_member + 1))
        data = buf.getvalue()
        if kind == "truncated-tar":
            data = data[:rng.randrange(1, len(data))]
        path.write_bytes(data)
    else:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2000))))
    return f"{kind}{' +bomb' if bomb else ''}"
