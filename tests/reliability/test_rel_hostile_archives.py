"""Case 5 — hostile archives through the whole fetch path (download → verify → extract → layout).

Each archive is served on 127.0.0.1 as a dataset's download and fetched with ``fetch_dataset``. Every
one must be refused with a one-line UserError, nothing may appear outside the dataset folder (the
whole tree around the data root is snapshotted; only the resumable download itself may stay under
``downloads/<ds>/``), the escape targets must not exist, and the failed fetch leaves no dataset folder,
no split json and no checksum-lock entry behind.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from promptbias.data.fetch import fetch_dataset
from promptbias.data.registry import DatasetSpec, RemoteFile
from promptbias.errors import UserError
from tests.loopback import LoopbackServer
from tests.reliability.helpers import describe_diff, snapshot

LIMIT = 1 << 20  # the decompression-bomb limit passed to fetch_dataset (1 MiB)


def _tar(members: list[tuple[str, dict]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, kw in members:
            data = kw.pop("data", b"x")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in kw.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _zip(name: str, data: bytes, mode: int | None = None, lie_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    raw = bytearray(buf.getvalue())
    if lie_size is not None:  # a header that under-states the uncompressed size (local + central)
        struct.pack_into("<I", raw, 22, lie_size)
        central = raw.find(b"PK\x01\x02")
        struct.pack_into("<I", raw, central + 24, lie_size)
    return bytes(raw)


def _cases(outside: Path) -> dict[str, tuple[Callable[[], bytes], str, str]]:
    """id → (archive bytes, file name, what the refusal must say)."""
    abs_target = str(outside / "abs-escape.txt")
    return {
        "dotdot-path": (lambda: _tar([("pics/../../escape.txt", {})]), "evil.tar", "'..'"),
        "absolute-path": (lambda: _tar([(abs_target, {})]), "evil.tar", "absolute"),
        "symlink-outside": (
            lambda: _tar([("pics", {"type": tarfile.SYMTYPE, "linkname": "../../outside"})]),
            "evil.tar",
            "symbolic link",
        ),
        "symlink-absolute": (
            lambda: _tar([("pics", {"type": tarfile.SYMTYPE, "linkname": str(outside)})]),
            "evil.tar",
            "symbolic link",
        ),
        "symlink-chain": (  # every link looks inside on its own; together they point out
            lambda: _tar(
                [
                    ("d", {"type": tarfile.DIRTYPE}),
                    ("d/s", {"type": tarfile.SYMTYPE, "linkname": ".."}),
                    ("d/s/s2", {"type": tarfile.SYMTYPE, "linkname": ".."}),
                    ("d/s/s2/chain-escape.txt", {"data": b"pwned"}),
                ]
            ),
            "evil.tar",
            "refused",
        ),
        "hardlink-outside": (
            lambda: _tar([("pics", {"type": tarfile.LNKTYPE, "linkname": "../outside/secret"})]),
            "evil.tar",
            "hard link",
        ),
        "hardlink-absolute": (
            lambda: _tar([("pics", {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"})]),
            "evil.tar",
            "hard link",
        ),
        "char-device": (
            lambda: _tar([("pics", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})]),
            "evil.tar",
            "device",
        ),
        "fifo": (lambda: _tar([("pics", {"type": tarfile.FIFOTYPE})]), "evil.tar", "FIFO"),
        "tar-gz-bomb": (
            lambda: _tar([("pics/zeros.bin", {"data": b"\0" * (3 * LIMIT)})], mode="w:gz"),
            "bomb.tar.gz",
            "exceeds",
        ),
        "zip-dotdot": (lambda: _zip("../escape.txt", b"x"), "evil.zip", "'..'"),
        "zip-symlink": (lambda: _zip("pics", b"../../outside", mode=0o120777), "evil.zip", "symbolic link"),
        "zip-bomb": (lambda: _zip("pics/zeros.bin", b"\0" * (3 * LIMIT)), "bomb.zip", "exceeds"),
        "zip-bomb-lying-header": (
            lambda: _zip("pics/zeros.bin", b"\0" * (3 * LIMIT), lie_size=10),
            "bomb.zip",
            "damaged zip archive (Bad CRC-32",  # never more than the declared 10 bytes are read
        ),
    }


CASE_IDS = list(_cases(Path("/x")))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_hostile_archive_is_refused_end_to_end(server: LoopbackServer, tmp_path: Path, case_id: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not touch")
    root = tmp_path / "work" / "data"
    root.mkdir(parents=True)
    make, name, why = _cases(outside)[case_id]
    spec = DatasetSpec(
        name="evil",
        display_name="Evil",
        folder="evil",
        template="a photo of a {}.",
        image_dir="pics",
        split_file="split_evil.json",
        files=(
            RemoteFile(name=name, urls=(server.add(f"/{name}", make()),), kind="archive", provides=("pics",)),
        ),
    )
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        fetch_dataset(spec, root, max_bytes=LIMIT, retries=0, backoff=0)
    msg = str(err.value)
    assert "\n" not in msg and why in msg and name in msg, msg
    after = snapshot(tmp_path)
    download = str((root / "downloads" / "evil").relative_to(tmp_path))
    changed = {k for k in set(after) | set(before) if after.get(k) != before.get(k)}
    stray = sorted(k for k in changed if not (k == download or k.startswith(download + "/")))
    for parent in ("work/data/downloads", download):
        if parent in stray:
            stray.remove(parent)  # the download folder itself (holds the archive for inspection/resume)
    assert not stray, f"written outside the download folder: {describe_diff(before, after)}"
    for escaped in ("escape.txt", "chain-escape.txt", "abs-escape.txt"):
        assert not list(tmp_path.rglob(escaped)), f"{escaped} was written"
    assert (outside / "secret").read_text() == "do not touch"
    assert not (root / "raw" / "evil").exists() and not (root / "raw" / "evil.json").exists()
    assert not (root / "checksums.lock.json").exists()
