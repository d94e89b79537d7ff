"""Safe extraction of downloaded tar and zip archives.

    safe_extract(Path("downloads/dtd-r1.0.1.tar.gz"), Path("data/raw/dtd"), strip="dtd/")

Every member is checked before anything is written, and the archive is refused (UserError naming the
archive and the member) when a member would land outside the target: absolute paths, ``..``
components, symbolic or hard links pointing out of the target, device files / FIFOs, or when the
uncompressed total exceeds ``max_bytes`` (a decompression bomb). Tar extraction then runs with
``tarfile``'s ``data`` filter as a second line of defence; zip members are streamed with a byte
counter, so a lying header cannot exceed the limit either. ``strip`` drops a leading member prefix
(members outside it are skipped), so ``fgvc-aircraft-2013b/data/`` becomes the dataset folder.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from promptbias.errors import UserError

DEFAULT_MAX_BYTES = 256 * 2**30  # larger than any of the 11 datasets (SUN397 ≈ 37 GB)
_CHUNK = 1 << 20


def safe_extract(archive: Path, dest: Path, strip: str = "", max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """Extract ``archive`` into ``dest`` after checking every member; return the extracted names."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        try:
            return _extract_zip(archive, dest, strip, max_bytes)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise UserError(f"{archive}: damaged zip archive ({exc}) — delete it and fetch again") from None
    try:
        with tarfile.open(archive) as tar:
            return _extract_tar(tar, archive, dest, strip, max_bytes)
    except tarfile.FilterError as exc:  # the data filter's second line of defence (e.g. a symlink chain)
        raise _refuse(archive, getattr(exc.tarinfo, "name", "?"), str(exc)) from None
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise UserError(
            f"{archive}: not a readable tar or zip archive ({exc}) — delete it and fetch again"
        ) from None


def _refuse(archive: Path, member: str, why: str) -> UserError:
    return UserError(
        f"{archive}: refused to extract member {member!r} ({why}) — the archive is unsafe; delete it"
    )


def _stripped(name: str, strip: str) -> str | None:
    """The member name without ``strip`` (None = outside the prefix, skipped)."""
    name = name.replace("\\", "/")
    if strip:
        if not name.startswith(strip):
            return None
        name = name[len(strip) :]
    return name


def _check_name(archive: Path, original: str, name: str) -> str:
    if original.startswith("/") or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(archive, original, "absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise _refuse(archive, original, "'..' path component")
    return posixpath.normpath(name)


def _inside(root: Path, candidate: Path) -> bool:
    root_r, cand_r = root.resolve(), candidate.resolve()
    return cand_r == root_r or root_r in cand_r.parents


def _extract_tar(tar: tarfile.TarFile, archive: Path, dest: Path, strip: str, max_bytes: int) -> list[str]:
    selected: list[tarfile.TarInfo] = []
    total = 0
    for member in tar.getmembers():
        name = _stripped(member.name, strip)
        if name is None or name in ("", "."):
            continue
        name = _check_name(archive, member.name, name)
        if member.isdev() or member.isfifo():
            raise _refuse(archive, member.name, "device or FIFO file")
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            if member.linkname.startswith("/") or not _inside(dest, dest / target):
                raise _refuse(archive, member.name, f"symbolic link to {member.linkname!r} leaves the target")
        updates: dict[str, str] = {"name": name}
        if member.islnk():
            link = _stripped(member.linkname, strip)
            if link is None or link.startswith("/") or ".." in link.split("/"):
                raise _refuse(archive, member.name, f"hard link to {member.linkname!r} leaves the target")
            updates["linkname"] = posixpath.normpath(link)
        total += max(member.size, 0)
        if total > max_bytes:
            raise _refuse(archive, member.name, f"uncompressed size exceeds the limit of {max_bytes} bytes")
        selected.append(member.replace(**updates, deep=False))
    from promptbias.progress import track

    tar.extractall(dest, members=track(selected, desc=f"extract {archive.name}", unit="file"), filter="data")
    return [m.name for m in selected]


def _extract_zip(archive: Path, dest: Path, strip: str, max_bytes: int) -> list[str]:
    names: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        plan: list[tuple[zipfile.ZipInfo, str]] = []
        declared = 0
        for info in zf.infolist():
            name = _stripped(info.filename, strip)
            if name is None or name in ("", "."):
                continue
            name = _check_name(archive, info.filename, name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _refuse(archive, info.filename, "symbolic link")
            if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
                raise _refuse(archive, info.filename, "device or FIFO file")
            if not _inside(dest, dest / name):
                raise _refuse(archive, info.filename, "path leaves the target")
            declared += info.file_size
            if declared > max_bytes:
                raise _refuse(
                    archive, info.filename, f"uncompressed size exceeds the limit of {max_bytes} bytes"
                )
            plan.append((info, name))
        from promptbias.progress import track

        written = 0
        for info, name in track(plan, desc=f"extract {archive.name}", unit="file"):
            out = dest / name
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(out, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise _refuse(
                                archive, info.filename, f"uncompressed size exceeds {max_bytes} bytes"
                            )
                        dst.write(chunk)
            except BaseException:
                out.unlink(missing_ok=True)  # never leave a half member behind
                raise
            names.append(name)
    return names


def extract_nested(
    archive: Path, inner: str, dest: Path, work: Path, max_bytes: int = DEFAULT_MAX_BYTES
) -> None:
    """Extract the archive ``inner`` found inside ``archive`` into ``dest`` (via the folder ``work``)."""
    shutil.rmtree(work, ignore_errors=True)
    try:
        safe_extract(archive, work, max_bytes=max_bytes)
        inner_path = work / inner
        if not inner_path.is_file():
            raise UserError(
                f"{archive}: expected {inner} inside — the archive is not the expected one; delete it"
            )
        safe_extract(inner_path, dest, max_bytes=max_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
