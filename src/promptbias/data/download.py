"""Downloads with retries, HTTP Range resume and checksum verification (pooch underneath).

    lock = ChecksumLock(Path("data/checksums.lock.json"))
    path = download_file(["https://a/x.tgz", "https://mirror/x.tgz"], Path("data/downloads/ds/x.tgz"),
                         known_hash="md5:…", lock=lock, lock_key="ds/x.tgz")

``pooch.retrieve`` drives each attempt and checks ``known_hash``; our downloader streams into a stable
``<name>.part`` file, so a cut connection — in this run or a previous one — resumes with a ``Range``
request. Whatever the registry says, the file's sha256 is compared with the lock file
(``data/checksums.lock.json``, versioned by DVC); a file never seen before has its sha256 recorded there
(trust on first use) and is verified against it from then on. A mismatch raises UserError and leaves
nothing in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from promptbias.errors import UserError
from promptbias.io import write_json

_CHUNK = 1 << 20
_STREAM_CHUNK = 1 << 16


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(path: Path, known_hash: str) -> bool:
    """``known_hash`` in pooch format ("sha256:…", "md5:…", or a bare sha256)."""
    import pooch

    return pooch.file_hash(str(path), alg=_alg(known_hash)) == known_hash.split(":")[-1].lower()


def _alg(known_hash: str) -> str:
    return known_hash.split(":")[0].lower() if ":" in known_hash else "sha256"


class ChecksumLock:
    """``{"<dataset>/<file>": {"sha256": …, "size": …}}``; read-modify-write under an flock.

    The flock is taken on the lock file's folder itself (no guard file is left behind).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            data = self.read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before and (data or self.path.exists()):
                write_json(self.path, dict(sorted(data.items())))
        finally:
            os.close(guard)  # closing the descriptor releases the flock

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{self.path}: not valid JSON — restore it from git/DVC or delete it") from None

    def forget(self, keys: set[str]) -> None:
        """Drop ``keys`` (entries a failed fetch recorded); the file is removed when nothing is left."""
        if not keys or not self.path.is_file():
            return
        with self._locked() as data:
            for key in keys:
                data.pop(key, None)
            if not data:
                self.path.unlink()
                data.clear()

    def get(self, key: str) -> str | None:
        entry = self.read().get(key)
        return entry.get("sha256") if entry else None

    def verify_or_record(self, key: str, path: Path) -> str:
        """Compare ``path``'s sha256 with the lock entry; record it when there is none."""
        digest = sha256_file(path)
        with self._locked() as data:
            entry = data.get(key)
            if entry is None:
                data[key] = {"sha256": digest, "size": path.stat().st_size}
            elif entry.get("sha256") != digest:
                where = f"{path} (a link to {path.resolve()})" if path.is_symlink() else str(path)
                raise UserError(
                    f"{where}: sha256 {digest[:16]}… is not the {entry['sha256'][:16]}… recorded for {key} — if "
                    f'this file is the one you want, delete the "{key}" entry from {self.path} and fetch again; '
                    "otherwise put the recorded file back"
                )
        return digest


def _progress(total: int | None, initial: int, desc: str) -> Any:
    """Bytes, unit-scaled: a bar on a terminal, periodic lines in a log (:mod:`promptbias.progress`)."""
    from promptbias.progress import progress_bar

    return progress_bar(total, desc, "B", initial=initial, unit_scale=True)


class ResumingDownloader:
    """A pooch downloader: streams into a stable ``.part`` file, resuming with Range after failures."""

    def __init__(self, part: Path, retries: int = 5, timeout: float = 60.0, backoff: float = 1.0) -> None:
        self.part, self.retries, self.timeout, self.backoff = Path(part), retries, timeout, backoff

    def __call__(
        self, url: str, output_file: str, pooch: Any = None, check_only: bool = False
    ) -> bool | None:
        import requests

        if check_only:
            try:
                return requests.head(url, timeout=self.timeout, allow_redirects=True).ok
            except requests.RequestException:
                return False
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                self._attempt(url)
                os.replace(self.part, output_file)
                return None
            except _Fatal as exc:
                raise RuntimeError(str(exc)) from None
            except (requests.RequestException, OSError, _Incomplete) as exc:
                last = exc
                if attempt < self.retries:
                    time.sleep(self.backoff * (2**attempt) if self.backoff else 0)
        raise RuntimeError(f"gave up after {self.retries + 1} attempts: {last}")

    def _attempt(self, url: str) -> None:
        import requests

        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(
            url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True
        ) as resp:
            if resp.status_code == 416:  # nothing left to send (or a stale part): start over
                self.part.unlink(missing_ok=True)
                raise _Incomplete("range not satisfiable; restarting")
            if resp.status_code >= 400:
                raise _Fatal(f"HTTP {resp.status_code} {resp.reason}")
            if "text/html" in resp.headers.get("Content-Type", "") and not url.endswith((".html", ".htm")):
                raise _Fatal("got an HTML page instead of the file (login, quota or dead link)")
            if have and resp.status_code != 206:  # server ignored Range: start from zero
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            mode = "ab" if have else "wb"
            with (
                open(self.part, mode) as fh,
                _progress(total, have, self.part.name.removesuffix(".part")) as bar,
            ):
                for chunk in resp.iter_content(_STREAM_CHUNK):  # small: a cut loses at most one chunk
                    fh.write(chunk)
                    bar.update(len(chunk))
            size = self.part.stat().st_size
            if total is not None and size != total:
                raise _Incomplete(f"got {size} of {total} bytes")


class _Incomplete(Exception):
    pass


class _Fatal(Exception):
    pass


def download_file(
    urls: Sequence[str],
    dest: Path,
    known_hash: str | None = None,
    lock: ChecksumLock | None = None,
    lock_key: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Fetch ``dest`` from the first URL that works; verify ``known_hash`` and the lock entry."""
    import pooch

    pooch.get_logger().setLevel("WARNING")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    locked = None
    if known_hash is None and lock is not None and lock_key is not None:
        locked = lock.get(lock_key)
        known_hash = f"sha256:{locked}" if locked else None
    errors: list[str] = []
    for url in urls:
        downloader = ResumingDownloader(part, retries=retries, timeout=timeout, backoff=backoff)
        try:
            pooch.retrieve(
                url,
                known_hash=known_hash,
                fname=dest.name,
                path=dest.parent,
                downloader=downloader,
                progressbar=False,
            )
        except ValueError:  # pooch: hash mismatch (the download is already deleted)
            part.unlink(missing_ok=True)
            if locked and lock is not None:
                raise UserError(
                    f"{dest.name}: checksum mismatch for the file from {url} (not the sha256 {locked[:16]}… "
                    f'recorded for {lock_key}) — if the source changed on purpose, delete the "{lock_key}" entry '
                    f"from {lock.path} and fetch again; otherwise place the recorded file at {dest}"
                ) from None
            raise UserError(
                f"{dest.name}: checksum mismatch for the file from {url} (expected {known_hash}) — "
                f"the source changed or is corrupt; try another mirror or place a verified copy at {dest}"
            ) from None
        except Exception as exc:
            errors.append(f"{url}: {exc}")
            continue
        if lock is not None and lock_key is not None:
            try:
                lock.verify_or_record(lock_key, dest)
            except UserError:
                dest.unlink(missing_ok=True)
                raise
        return dest
    raise DownloadFailed(dest.name, errors)


class DownloadFailed(Exception):
    """No source worked; the caller turns this into a 'place the file here' message."""

    def __init__(self, name: str, errors: list[str]) -> None:
        super().__init__(f"{name}: " + "; ".join(errors) if errors else f"{name}: no download source")
        self.errors = errors
