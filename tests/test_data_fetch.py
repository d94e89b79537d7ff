"""fetch: downloads against a loopback HTTP server, checksums, resume, safe extraction, --from linking."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from promptbias.data import registry
from promptbias.data.archive import safe_extract
from promptbias.data.download import ChecksumLock, DownloadFailed, download_file
from promptbias.data.fetch import fetch_dataset
from promptbias.data.registry import DatasetSpec, RemoteFile
from promptbias.errors import UserError
from tests.loopback import LoopbackServer

REPO = Path(__file__).resolve().parents[1]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- downloads


def test_download_verifies_and_records_sha256(server: LoopbackServer, tmp_path: Path) -> None:
    body = bytes(range(256)) * 300
    url = server.add("/f.bin", body)
    lock = ChecksumLock(tmp_path / "checksums.lock.json")
    out = download_file(
        [url], tmp_path / "dl" / "f.bin", known_hash=f"sha256:{_sha(body)}", lock=lock, lock_key="ds/f.bin"
    )
    assert out.read_bytes() == body
    assert json.loads(lock.path.read_text())["ds/f.bin"] == {"sha256": _sha(body), "size": len(body)}
    assert not out.with_name("f.bin.part").exists()


def test_lock_verifies_later_downloads(server: LoopbackServer, tmp_path: Path) -> None:
    lock = ChecksumLock(tmp_path / "checksums.lock.json")
    url = server.add("/g.bin", b"first version")
    download_file([url], tmp_path / "a" / "g.bin", lock=lock, lock_key="ds/g.bin")  # trust on first use
    server.add("/g.bin", b"tampered version")
    with pytest.raises(UserError, match="checksum mismatch"):
        download_file([url], tmp_path / "b" / "g.bin", lock=lock, lock_key="ds/g.bin")
    assert not (tmp_path / "b" / "g.bin").exists()


def _follow_lock_advice(message: str) -> None:
    """Do what a checksum-lock mismatch says: delete the entry it names from the lock file it names."""
    found = re.search(r'delete the "([^"]+)" entry from (\S+) and fetch again', message)
    assert found, message
    lock = Path(found.group(2))
    entries = json.loads(lock.read_text())
    del entries[found.group(1)]
    lock.write_text(json.dumps(entries))


def test_lock_mismatch_on_download_names_the_entry_to_delete(server: LoopbackServer, tmp_path: Path) -> None:
    lock = ChecksumLock(tmp_path / "checksums.lock.json")
    url = server.add("/h.bin", b"first version")
    download_file([url], tmp_path / "a" / "h.bin", lock=lock, lock_key="ds/h.bin", retries=0)
    server.add("/h.bin", b"the source changed on purpose")
    with pytest.raises(UserError) as err:
        download_file([url], tmp_path / "b" / "h.bin", lock=lock, lock_key="ds/h.bin", retries=0)
    assert "\n" not in str(err.value)
    _follow_lock_advice(str(err.value))
    out = download_file([url], tmp_path / "b" / "h.bin", lock=lock, lock_key="ds/h.bin", retries=0)
    assert out.read_bytes() == b"the source changed on purpose"
    assert lock.get("ds/h.bin") == _sha(b"the source changed on purpose")


def test_cut_connection_resumes_with_range(server: LoopbackServer, tmp_path: Path) -> None:
    body = bytes(i % 251 for i in range(300_000))
    url = server.add("/big.bin", body)
    server.cut.add("/big.bin")
    out = download_file([url], tmp_path / "big.bin", known_hash=f"sha256:{_sha(body)}", backoff=0)
    assert out.read_bytes() == body
    ranges = [r for p, r in server.requests if p == "/big.bin"]
    assert len(ranges) == 2 and ranges[0] is None
    start = int(ranges[1].removeprefix("bytes=").removesuffix("-"))  # resumed from what was on disk
    assert 0 < start <= len(body) // 2


def test_partial_file_from_an_earlier_run_is_resumed(server: LoopbackServer, tmp_path: Path) -> None:
    body = b"x" * 1000 + b"y" * 1000
    url = server.add("/p.bin", body)
    (tmp_path / "p.bin.part").write_bytes(body[:1500])
    download_file([url], tmp_path / "p.bin", known_hash=f"sha256:{_sha(body)}", backoff=0)
    assert (tmp_path / "p.bin").read_bytes() == body
    assert server.requests == [("/p.bin", "bytes=1500-")]


def test_falls_back_to_the_next_mirror_and_rejects_html(server: LoopbackServer, tmp_path: Path) -> None:
    bad = server.add("/login", b"<html>sign in</html>", ctype="text/html")
    good = server.add("/m.bin", b"payload")
    out = download_file([server.url("/missing"), bad, good], tmp_path / "m.bin", retries=0)
    assert out.read_bytes() == b"payload"
    with pytest.raises(DownloadFailed, match="HTML page"):
        download_file([bad], tmp_path / "n.bin", retries=0)


# ------------------------------------------------------------------------------------ whole datasets


def _toy_spec(server: LoopbackServer, archive_hash: str | None) -> DatasetSpec:
    png = _tiny_png()
    archive = _tar_gz({f"toy/pics/{c}/{i}.png": png for c in ("cat", "dog") for i in range(3)})
    split = {
        "train": [[f"{c}/{i}.png", lab, c] for lab, c in enumerate(("cat", "dog")) for i in range(2)],
        "val": [],
        "test": [[f"{c}/2.png", lab, c] for lab, c in enumerate(("cat", "dog"))],
    }
    return DatasetSpec(
        name="toy",
        display_name="Toy",
        folder="toy",
        template="a photo of a {}.",
        image_dir="pics",
        split_file="split_toy.json",
        files=(
            RemoteFile(
                name="toy.tar.gz",
                urls=(server.add("/toy.tar.gz", archive),),
                hash=archive_hash if archive_hash != "auto" else f"sha256:{_sha(archive)}",
                kind="archive",
                strip="toy/",
                provides=("pics",),
            ),
            RemoteFile(name="split_toy.json", urls=(server.add("/split.json", json.dumps(split).encode()),)),
        ),
    )


def test_fetch_downloads_extracts_and_writes_split_last(server: LoopbackServer, tmp_path: Path) -> None:
    spec = _toy_spec(server, "auto")
    out = fetch_dataset(spec, tmp_path, backoff=0)
    split = json.loads(out.read_text())
    assert out == tmp_path / "raw" / "toy.json"
    assert split["classnames"] == ["cat", "dog"] and len(split["train"]) == 4 and len(split["test"]) == 2
    assert split["train"][0] == ["pics/cat/0.png", 0, "cat"]
    assert (tmp_path / "raw" / "toy" / "pics" / "dog" / "2.png").is_file()
    assert not (tmp_path / "downloads" / "toy" / "toy.tar.gz").exists()  # archive removed after extraction
    assert set(json.loads((tmp_path / "checksums.lock.json").read_text())) == {
        "toy/toy.tar.gz",
        "toy/split_toy.json",
    }


def test_fetch_with_wrong_checksum_marks_nothing_complete(server: LoopbackServer, tmp_path: Path) -> None:
    spec = _toy_spec(server, "sha256:" + "0" * 64)
    with pytest.raises(UserError, match=r"toy\.tar\.gz: checksum mismatch") as err:
        fetch_dataset(spec, tmp_path, backoff=0)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "raw" / "toy.json").exists()
    assert not (tmp_path / "raw" / "toy" / "pics").exists()
    assert not list((tmp_path / "downloads" / "toy").glob("toy.tar.gz*"))


def test_unreachable_file_says_which_file_to_place_where(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        fetch_dataset(registry.get("imagenet"), tmp_path)
    msg = str(err.value)
    assert "image-net.org" in msg and str(tmp_path / "raw" / "imagenet" / "images" / "train") in msg
    assert "\n" not in msg and not (tmp_path / "raw" / "imagenet.json").exists()


def _coop_eurosat(data: Path) -> dict:
    png = _tiny_png()
    items = {"train": [], "val": [], "test": []}
    for label, (folder, name) in enumerate((("AnnualCrop", "Annual Crop Land"), ("SeaLake", "Sea or Lake"))):
        for i, split in enumerate(("train", "train", "val", "test")):
            rel = f"{folder}/{folder}_{i + 1}.jpg"
            (data / "eurosat" / "2750" / folder).mkdir(parents=True, exist_ok=True)
            (data / "eurosat" / "2750" / rel).write_bytes(png)
            items[split].append([rel, label, name])
    (data / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(items))
    return items


def test_from_links_an_existing_copy_and_verifies_it(tmp_path: Path) -> None:
    data = tmp_path / "DATA"
    _coop_eurosat(data)
    root = tmp_path / "data"
    out = fetch_dataset(registry.get("eurosat"), root, source=data)
    split = json.loads(out.read_text())
    assert split["classnames"] == ["Annual Crop Land", "Sea or Lake"]
    assert split["template"] == "a centered satellite photo of {}."
    assert (root / "raw" / "eurosat" / "2750").is_symlink()
    assert "eurosat/split_zhou_EuroSAT.json" in json.loads((root / "checksums.lock.json").read_text())
    # an image named by the split disappears: the copy no longer verifies, nothing is marked complete
    (data / "eurosat" / "2750" / "SeaLake" / "SeaLake_4.jpg").unlink()
    with pytest.raises(UserError, match="SeaLake_4.jpg"):
        fetch_dataset(registry.get("eurosat"), root, source=data)
    assert not out.exists()


def test_lock_mismatch_keeps_the_working_split_and_its_advice_works(tmp_path: Path) -> None:
    data, root, spec = tmp_path / "DATA", tmp_path / "data", registry.get("eurosat")
    items = _coop_eurosat(data)
    out = fetch_dataset(spec, root, source=data)
    working = out.read_bytes()
    split_file = data / "eurosat" / "split_zhou_EuroSAT.json"
    recorded = split_file.read_bytes()
    new_version = json.dumps({**items, "val": items["val"][:1]})
    split_file.write_text(new_version)  # the copy's split file is not the one recorded in the lock
    with pytest.raises(UserError) as err:
        fetch_dataset(spec, root, source=data)
    assert "\n" not in str(err.value) and f"(a link to {split_file})" in str(err.value)
    assert out.read_bytes() == working  # the failed fetch left the working split in place
    # advice, first branch: put the recorded file back
    split_file.write_bytes(recorded)
    assert fetch_dataset(spec, root, source=data).read_bytes() == working
    # advice, second branch: the new version is the one wanted — delete the lock entry the message names
    split_file.write_text(new_version)
    with pytest.raises(UserError) as err:
        fetch_dataset(spec, root, source=data)
    _follow_lock_advice(str(err.value))
    assert len(json.loads(fetch_dataset(spec, root, source=data).read_text())["val"]) == 1


def test_from_a_folder_without_the_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no eurosat/ folder there"):
        fetch_dataset(registry.get("eurosat"), tmp_path / "data", source=tmp_path)


def test_cli_fetch_and_split_from_a_local_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from promptbias.cli import main

    data = tmp_path / "DATA"
    _coop_eurosat(data)
    base = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    main([*base, "fetch", "eurosat", "--from", str(data)])
    main([*base, "split", "eurosat", "--shots", "1", "--seed", "1"])
    few = json.loads((tmp_path / "data" / "splits" / "eurosat" / "shot1_seed1.json").read_text())
    assert few["shots"] == 1 and len(few["train"]) == 2 and len(few["val"]) == 2
    main([*base, "cache", "eurosat", "--image-size", "8"])
    index = json.loads((tmp_path / "data" / "cache" / "eurosat" / "images_8.json").read_text())
    assert index["count"] == 4 and index["skipped"] == []  # test + val images, once each
    with pytest.raises(SystemExit) as exit_:
        main([*base, "split", "dtd", "--seed", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "promptbias fetch dtd" in err[-1]


# ------------------------------------------------------------------------------------ hostile archives


def _tar_with(tmp_path: Path, build: object) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        build(tar)  # type: ignore[operator]
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x", **kw: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


@pytest.mark.parametrize(
    ("case", "why"),
    [
        (lambda t: _add(t, "../escape.txt"), "'..'"),
        (lambda t: _add(t, "/tmp/promptbias-abs.txt"), "absolute"),
        (lambda t: _add(t, "link", type=tarfile.SYMTYPE, linkname="../../outside"), "symbolic link"),
        (lambda t: _add(t, "link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (lambda t: _add(t, "hard", type=tarfile.LNKTYPE, linkname="../outside"), "hard link"),
        (lambda t: _add(t, "dev", type=tarfile.CHRTYPE), "device"),
        (lambda t: _add(t, "big.bin", b"0" * 5000), "exceeds"),
    ],
)
def test_hostile_tar_is_refused(tmp_path: Path, case: object, why: str) -> None:
    archive = _tar_with(tmp_path, case)
    dest = tmp_path / "out"
    with pytest.raises(UserError, match=why):
        safe_extract(archive, dest, max_bytes=4096)
    assert (
        not (tmp_path / "escape.txt").exists()
        and not (dest / "link").exists()
        and not (dest / "big.bin").exists()
    )


def _zip_with(tmp_path: Path, name: str, data: bytes = b"x", mode: int | None = None) -> Path:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("name", "data", "mode", "why"),
    [
        ("../escape.txt", b"x", None, "'..'"),
        ("/abs.txt", b"x", None, "absolute"),
        ("link", b"../../outside", 0o120777, "symbolic link"),
        ("bomb.bin", b"\0" * 200_000, None, "exceeds"),
    ],
)
def test_hostile_zip_is_refused(tmp_path: Path, name: str, data: bytes, mode: int | None, why: str) -> None:
    archive = _zip_with(tmp_path, name, data, mode)
    with pytest.raises(UserError, match=why):
        safe_extract(archive, tmp_path / "out", max_bytes=100_000)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "bomb.bin").exists()


def test_benign_archives_extract_with_prefix_strip(tmp_path: Path) -> None:
    tar = _tar_with(tmp_path, lambda t: (_add(t, "pkg/data/a.txt", b"A"), _add(t, "pkg/README", b"skip")))
    safe_extract(tar, tmp_path / "t", strip="pkg/data/")
    assert (tmp_path / "t" / "a.txt").read_bytes() == b"A" and not (tmp_path / "t" / "README").exists()
    zp = _zip_with(tmp_path, "2750/Forest/Forest_1.jpg", b"J")
    safe_extract(zp, tmp_path / "z")
    assert (tmp_path / "z" / "2750" / "Forest" / "Forest_1.jpg").read_bytes() == b"J"


def test_generated_dataset_is_normalised_like_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptbias.demo import world as demo

    calls: list[tuple[str, Path, int]] = []

    def fake_generate(name: str, target_dir: Path, seed: int) -> None:  # the generator's contract
        calls.append((name, target_dir, seed))
        (target_dir / "images" / "red_circle").mkdir(parents=True)
        items = {}
        for split, image in (("train", "b.png"), ("val", "c.png"), ("test", "a.png")):  # an image once
            (target_dir / "images" / "red_circle" / image).write_bytes(_tiny_png())
            items[split] = [[f"images/red_circle/{image}", 0, "red_circle"]]
        (target_dir / f"split_{name}.json").write_text(json.dumps(items))

    monkeypatch.setattr(demo, "generate_dataset", fake_generate)
    out = fetch_dataset(registry.get("demo_shapes"), tmp_path, demo_seed=7)
    assert calls == [("demo_shapes", tmp_path / "raw" / "demo_shapes", 7)]
    split = json.loads(out.read_text())
    assert split["classnames"] == ["red circle"] and split["test"] == [
        ["images/red_circle/a.png", 0, "red_circle"]
    ]
