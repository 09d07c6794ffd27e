"""pggan.data.tar_reader: the shard reader agrees with Python's tarfile and rejects damage."""
from __future__ import annotations

import io
import tarfile

import pytest

from pggan.data.tar_reader import ShardReadError, expand_shards, tar_members


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            if data is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LONG = "deep/" * 30 + "00000003.png"          # > 100 characters: pax / GNU long-name headers
MEMBERS = [("00000000.png", b"a" * 513), ("00000000.cls", b"4"), ("dir", None),
           ("00000001.png", b""), ("sub/00000002.png", bytes(range(256)) * 9),
           (LONG, b"long"), ("00000004.tar.gz", b"zz")]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_members_match_tarfile(fmt):
    members = [m for m in MEMBERS if fmt != tarfile.USTAR_FORMAT or len(m[0]) < 100]
    data = make_tar(members, fmt)
    expect = [(n, d) for n, d in members if d is not None]
    assert list(tar_members(io.BytesIO(data), "x.tar")) == expect


def test_samples_are_grouped_by_key(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(make_tar(MEMBERS))
    samples = list(expand_shards(iter([{"url": str(path)}])))
    assert [s["__key__"] for s in samples] == ["00000000", "00000001", "sub/00000002",
                                                LONG[:-4], "00000004"]
    assert samples[0]["png"] == b"a" * 513 and samples[0]["cls"] == b"4"
    assert samples[4]["tar.gz"] == b"zz" and samples[1]["png"] == b""
    assert all(s["__url__"] == str(path) for s in samples)


def test_damage_is_detected():
    data = bytearray(make_tar(MEMBERS))
    with pytest.raises(ShardReadError, match="end of data"):
        list(tar_members(io.BytesIO(bytes(data[:1100])), "x.tar"))
    data[5] ^= 0xFF                                     # a flipped byte in the first header
    with pytest.raises(ShardReadError, match="checksum mismatch"):
        list(tar_members(io.BytesIO(bytes(data)), "x.tar"))


def test_handler_decides_whether_to_go_on(tmp_path):
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    good.write_bytes(make_tar(MEMBERS[:2]))
    bad.write_bytes(make_tar(MEMBERS[:2])[:600])
    seen = []

    def keep_going(exn):
        seen.append(exn)
        return True
    urls = [{"url": str(bad)}, {"url": str(good)}]
    samples = list(expand_shards(iter(urls), keep_going))
    assert [s["__url__"] for s in samples] == [str(good)]
    assert len(seen) == 1 and seen[0].args[-1] == str(bad)
    with pytest.raises(ShardReadError):
        list(expand_shards(iter(urls)))


def test_local_shards_are_mapped_and_large_members_not_copied(tmp_path):
    big = bytes(range(256)) * 400                       # 100 KiB: handed out as a view
    members = [("00000000.png", big), ("00000000.cls", b"7"), ("00000001.png", b"b" * 700),
               ("00000002.png", big[::-1])]
    path = tmp_path / "m.tar"
    path.write_bytes(make_tar(members))
    for url in (str(path), path.as_uri()):              # a plain path and a file: URL
        samples = list(expand_shards(iter([{"url": url}])))
        assert [bytes(s["png"]) for s in samples] == [big, b"b" * 700, big[::-1]]
        assert isinstance(samples[0]["png"], memoryview) and samples[0]["png"].readonly
        assert isinstance(samples[1]["png"], bytes) and samples[0]["cls"] == b"7"
    # The views keep the mapping alive after the reader has moved on.
    first = samples[0]["png"]
    del samples
    assert bytes(first[:512]) == big[:512]
    del first                       # (rewriting a mapped file in place is what data_prep avoids)
    # A truncated local shard is the same error as a truncated stream.
    path.write_bytes(make_tar(members)[:70_000])
    with pytest.raises(ShardReadError, match="end of data in a tar member"):
        list(expand_shards(iter([{"url": str(path)}])))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    assert list(expand_shards(iter([{"url": str(empty)}]))) == []


def test_a_filesystem_that_cannot_map_files_is_read_normally(tmp_path, monkeypatch):
    import errno
    import mmap

    def no_mmap(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")
    monkeypatch.setattr(mmap, "mmap", no_mmap)
    big = bytes(range(256)) * 400
    path = tmp_path / "m.tar"
    path.write_bytes(make_tar([("00000000.png", big), ("00000000.cls", b"7")]))
    samples = list(expand_shards(iter([{"url": str(path)}])))
    assert samples[0]["png"] == big and isinstance(samples[0]["png"], bytes)
    with pytest.raises(FileNotFoundError):              # a missing shard is not "unmappable"
        list(expand_shards(iter([{"url": str(tmp_path / "missing.tar")}])))
