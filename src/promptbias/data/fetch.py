"""Put one dataset in place — download, link an existing copy, or generate — and normalise its split.

    fetch_dataset(registry.get("eurosat"), Path("data"))                  # download + verify + extract
    fetch_dataset(registry.get("eurosat"), Path("data"), source="/DATA")  # verify + link /DATA/eurosat

Output: ``<root>/raw/<ds>/`` (the CoOp layout) and ``<root>/raw/<ds>.json`` (the normalised split). The
json is set aside first and written last, atomically, only after every file was verified and every image
the split names exists — so an interrupted fetch never looks complete. Every entry of the source split
is checked first (:mod:`promptbias.data.split_check`: labels, names, relative paths), and every image it
names must resolve, links included, inside the dataset folder. A fetch that fails (UserError)
puts the previous json back when every image it names is still there, so a working dataset stays usable.
Archives are downloaded to ``<root>/downloads/<ds>/`` and deleted after extraction unless
``keep_archives``. A file that cannot be downloaded produces one line saying which file to place where.
Files that CoOp reads only to build a missing split (``RemoteFile.split_source``) are not demanded once
the split json is in place: a trimmed copy (split json + images) links without any download. A file that
is the same as another fetched dataset's (``RemoteFile.same_as``: an ImageNet variant's classnames.txt) is
copied from there before any download.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from pathlib import Path

from promptbias import paths
from promptbias.data import split_check
from promptbias.data.archive import DEFAULT_MAX_BYTES, extract_nested, safe_extract
from promptbias.data.download import ChecksumLock, DownloadFailed, download_file, hash_matches
from promptbias.data.layouts import load_layout
from promptbias.data.registry import DatasetSpec, RemoteFile
from promptbias.errors import UserError
from promptbias.io import atomic_path, read_json, write_json

LOCK_FILE = "checksums.lock.json"


def fetch_dataset(
    spec: DatasetSpec,
    root: Path | str,
    source: Path | str | None = None,
    *,
    keep_archives: bool = False,
    demo_seed: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 5,
    backoff: float = 1.0,
) -> Path:
    """Fetch ``spec`` under ``root``; return the path of the normalised split json."""
    root = Path(root)
    target = paths.raw_dir(root, spec.name)
    done = paths.raw_json(root, spec.name)
    lock = ChecksumLock(root / LOCK_FILE)
    downloads = root / "downloads" / spec.name
    new_dirs = [d for d in (root, root / "raw", target, root / "downloads", downloads) if not d.exists()]
    recorded = {key for key in lock.read() if key.startswith(f"{spec.name}/")}
    if spec.generator is None and source is not None:
        _source_folder(spec, Path(source))  # a wrong --from fails before anything is touched
    previous = done.with_name(f".{done.name}.prev")  # if we are killed, the next fetch's bind_job sweeps it
    if done.exists():
        os.replace(done, previous)
    try:
        out = _fetch(
            spec, root, target, done, lock, source, keep_archives, demo_seed, max_bytes, retries, backoff
        )
    except UserError:
        _roll_back(spec, target, lock, recorded, new_dirs)
        _restore(previous, done, target)
        raise
    previous.unlink(missing_ok=True)
    return out


def _restore(previous: Path, done: Path, target: Path) -> None:
    """Put the json of the last successful fetch back when the folder still holds every image it names."""
    if not previous.is_file():
        return
    fix = f"rerun `promptbias fetch {target.name}`"
    try:
        old = split_check.check_split(read_json(previous), done, fix)
        usable = not split_check.check_files(target, old, done, fix)
    except (OSError, ValueError, KeyError, TypeError, UserError):
        usable = False
    if usable:
        os.replace(previous, done)
    else:
        previous.unlink(missing_ok=True)


def _roll_back(
    spec: DatasetSpec, target: Path, lock: ChecksumLock, recorded: set[str], new_dirs: list[Path]
) -> None:
    """After a failed fetch, remove what it created: a dataset folder that did not exist before (links,
    partial extraction), lock entries it recorded, and folders left empty. Downloads (resumable) stay."""
    if target in new_dirs:
        shutil.rmtree(target, ignore_errors=True)  # symlinks are unlinked, never followed
    added = {key for key in lock.read() if key.startswith(f"{spec.name}/")} - recorded
    lock.forget(added)
    for folder in reversed(new_dirs):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def _fetch(
    spec: DatasetSpec,
    root: Path,
    target: Path,
    done: Path,
    lock: ChecksumLock,
    source: Path | str | None,
    keep_archives: bool,
    demo_seed: int,
    max_bytes: int,
    retries: int,
    backoff: float,
) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    if spec.generator is not None:
        _generate(spec, target, demo_seed)
    elif source is not None:
        link_copy(spec, Path(source), target)
    needed = [rf for rf in spec.files if not rf.split_source]
    for rf in needed:  # the split json among them: in place before the split-building files are looked at
        _ensure(spec, rf, root, target, lock, keep_archives, max_bytes, retries, backoff)
    has_split = spec.split_file is not None and (target / spec.split_file).is_file()
    for rf in spec.files:
        if not rf.split_source:
            continue
        if has_split and not all((target / p).exists() for p in rf.present_paths):
            continue  # CoOp reads it only to build a missing split: nothing to demand or download
        _ensure(spec, rf, root, target, lock, keep_archives, max_bytes, retries, backoff)
    split = load_layout(spec, target)  # every entry checked (promptbias.data.split_check)
    missing = split_check.check_files(
        target, split, f"the {spec.name} split", f"rerun `promptbias fetch {spec.name}`"
    )
    if missing:
        raise UserError(
            f"{spec.name}: {len(missing)} image(s) named by the split are missing, e.g. {target / missing[0]} "
            "— complete the dataset folder (or fetch again) and rerun"
        )
    write_json(done, split)
    return done


def _generate(spec: DatasetSpec, target: Path, seed: int) -> None:
    assert spec.generator is not None
    module, _, attr = spec.generator.partition(":")
    getattr(importlib.import_module(module), attr)(spec.name, target, seed)


def link_copy(spec: DatasetSpec, source: Path, target: Path) -> Path:
    """Symlink each top-level entry of an existing copy (``source/<folder>`` or ``source``) into target."""
    folder = _source_folder(spec, source)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name in ("split_fewshot", "preprocessed.pkl"):
            continue
        dst = target / entry.name
        if dst.is_symlink():
            dst.unlink()
        elif dst.exists():
            continue  # a real file/folder already there (e.g. a previous download) wins
        os.symlink(entry.resolve(), dst, target_is_directory=entry.is_dir())
    return folder


def _source_folder(spec: DatasetSpec, source: Path) -> Path:
    """The dataset's folder inside an existing CoOp copy (``source/<folder>`` or ``source`` itself)."""
    folder = source / spec.folder
    if folder.is_dir():
        return folder
    if source.is_dir() and source.name == spec.folder:
        return source
    raise UserError(
        f"{source}: no {spec.folder}/ folder there — point --from / data.source_root at a CoOp DATA "
        f"folder that contains {spec.folder}/"
    )


def _manual_error(spec: DatasetSpec, rf: RemoteFile, target: Path, why: str) -> UserError:
    how = rf.manual or (f"download it from {rf.urls[0]}" if rf.urls else "obtain it")
    if rf.kind == "folder":
        place = f"so that {', '.join(str(target / p) for p in rf.present_paths)} exist(s)"
    elif rf.kind == "archive":
        place = (
            f"so that {', '.join(str(target / p) for p in rf.present_paths)} exist(s) "
            f"(or put {rf.name} at {target / rf.name} to have it verified and extracted)"
        )
    else:
        place = f"and place it at {target / rf.target}"
    return UserError(
        f"{spec.name}: {rf.name} is not available ({why}) — {how}, {place}; then rerun "
        f"`promptbias fetch {spec.name}` (or link an existing copy: `promptbias fetch {spec.name} --from DATA`, "
        f"DATA holding {spec.folder}/ in CoOp's layout)"
    )


def _verify(spec: DatasetSpec, rf: RemoteFile, path: Path, lock: ChecksumLock) -> None:
    if rf.hash and not hash_matches(path, rf.hash):
        raise UserError(
            f"{path}: checksum does not match the registry's {rf.hash} — this is not the expected {rf.name}; "
            "replace it with a verified copy"
        )
    lock.verify_or_record(f"{spec.name}/{rf.name}", path)


def _ensure(
    spec: DatasetSpec,
    rf: RemoteFile,
    root: Path,
    target: Path,
    lock: ChecksumLock,
    keep_archives: bool,
    max_bytes: int,
    retries: int,
    backoff: float,
) -> None:
    if rf.kind == "file":
        path = target / rf.target
        if not path.exists() and rf.same_as:
            _copy_same(root, rf.same_as, path)
        if path.exists():
            _verify(spec, rf, path, lock)
            return
        if not rf.urls:
            raise _manual_error(spec, rf, target, "manual download")
        try:
            download_file(
                rf.urls, path, rf.hash, lock, f"{spec.name}/{rf.name}", retries=retries, backoff=backoff
            )
        except DownloadFailed as exc:
            raise _manual_error(spec, rf, target, _short(exc)) from None
        return
    if all((target / p).exists() for p in rf.present_paths):
        return
    if rf.kind == "folder":
        raise _manual_error(spec, rf, target, "manual download")
    placed = target / rf.name
    downloaded = False
    if placed.is_file():
        archive = placed
        _verify(spec, rf, archive, lock)
    else:
        if not rf.urls:
            raise _manual_error(spec, rf, target, "manual download")
        archive = root / "downloads" / spec.name / rf.name
        try:
            download_file(
                rf.urls, archive, rf.hash, lock, f"{spec.name}/{rf.name}", retries=retries, backoff=backoff
            )
        except DownloadFailed as exc:
            raise _manual_error(spec, rf, target, _short(exc)) from None
        downloaded = True
    if rf.nested:
        extract_nested(archive, rf.nested, target, archive.with_name(f".work-{rf.name}"), max_bytes=max_bytes)
    else:
        safe_extract(archive, target / rf.into, strip=rf.strip, max_bytes=max_bytes)
    absent = [p for p in rf.present_paths if not (target / p).exists()]
    if absent:
        raise UserError(
            f"{archive}: extracted, but {absent[0]} is not in it — this is not the expected {rf.name}"
        )
    if downloaded and not keep_archives:
        archive.unlink()


def _copy_same(root: Path, same_as: str, path: Path) -> None:
    """Copy the same file of another fetched dataset (``"imagenet/classnames.txt"``) when it is there."""
    dataset, _, name = same_as.partition("/")
    other = paths.raw_dir(root, dataset) / name
    if other.is_file():
        with atomic_path(path) as tmp:
            shutil.copyfile(other, tmp)


def _short(exc: DownloadFailed) -> str:
    if not exc.errors:
        return "no download source"
    first = " ".join(exc.errors[-1].split())
    return (first[:160] + "…") if len(first) > 160 else first
