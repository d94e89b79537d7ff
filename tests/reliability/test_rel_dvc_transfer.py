"""A SIGKILL during ``dvc push`` / ``dvc pull`` to a local remote (a folder): nothing half-written is taken
as complete, and the rerun completes with identical bytes.

The transfer is killed provably mid-file, whatever the machine's load: the real DVC command runs with its
file copy (``dvc_objects.fs.utils.copyfile``) wrapped so that its n-th copy writes half the file, writes
a mark and waits; the test then SIGKILLs it. Afterwards every object in the cache and in the remote must
hash to its own name (a half-written object under an object path would be served as complete by every
later pull), and the rerun must end with the cache and the remote in sync and the workspace's files
byte-identical to the originals.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.reliability.helpers import sub_env, wait_for
from tests.workspace import Workspace

TRACKED = "data/raw"  # the fetched demo dataset: a few hundred small files

_HELD_DVC = r"""
import os, signal, sys
from pathlib import Path
import dvc_objects.fs.local as local
import dvc_objects.fs.utils as utils

mark, nth = Path(sys.argv[1]), int(sys.argv[2])
real, calls = utils.copyfile, [0]

def copyfile(src, dest, *args, **kwargs):
    calls[0] += 1
    if calls[0] != nth:
        return real(src, dest, *args, **kwargs)
    data = Path(src).read_bytes()
    with open(dest, "wb") as fh:  # half of the file, on disk, where DVC was writing it
        fh.write(data[: max(1, len(data) // 2)])
        fh.flush()
        os.fsync(fh.fileno())
    Path(str(mark) + ".tmp").write_text(f"{os.getpid()}\n{dest}\n")
    os.replace(str(mark) + ".tmp", mark)
    while True:
        signal.pause()  # until the test's SIGKILL

utils.copyfile = local.copyfile = copyfile
from dvc.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=ws,
        env=sub_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res


def _killed_mid_file(ws: Path, mark: Path, *args: str) -> Path:
    """Run ``dvc args`` with its 3rd file copy held half-written, then SIGKILL it; the half-written file."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HELD_DVC, str(mark), "3", *args, "--jobs", "1"],
        cwd=ws,
        env=sub_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(mark.exists, proc), proc.communicate()
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    half = Path(mark.read_text().split("\n")[1])
    assert half.is_file() and half.stat().st_size > 0  # provably mid-file when it died
    return half


def _objects_hash_to_their_names(store: Path) -> int:
    """Every object file of a DVC cache/remote (``files/md5/xx/yyyy…``) has the md5 its path names."""
    root = store / "files" / "md5"
    count = 0
    for path in root.rglob("*") if root.exists() else []:
        if not path.is_file() or len(path.parent.name) != 2 or path.name.startswith("."):
            continue
        name = path.parent.name + path.name
        if name.endswith(".dir"):  # a directory listing: its md5 is of its JSON bytes too
            name = name[: -len(".dir")]
        if len(name) != 32:
            continue  # a temporary of DVC's (…tmp): not under an object name, never served
        assert hashlib.md5(path.read_bytes()).hexdigest() == name, f"{path} is half-written"
        count += 1
    return count


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tracked_workspace(base_ws: Workspace, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    ws = base_ws.copy(tmp_path / "ws").path
    remote = tmp_path / "remote"
    _dvc(ws, "add", TRACKED)
    _dvc(ws, "remote", "add", "-d", "local", str(remote))
    return ws, remote, _files(ws / TRACKED)


def test_a_kill_during_dvc_push_leaves_no_object_that_a_pull_would_take_as_complete(base_ws, tmp_path):
    ws, remote, original = _tracked_workspace(base_ws, tmp_path)
    half = _killed_mid_file(ws, tmp_path / "mark", "push")
    assert remote in half.parents
    _objects_hash_to_their_names(remote)  # the half-written copy sits under a temporary name only
    _dvc(ws, "push")  # the rerun completes
    assert "in sync" in _dvc(ws, "status", "--cloud").stdout
    assert _objects_hash_to_their_names(remote) > len(original) // 2
    clone = tmp_path / "clone"  # a fresh checkout pulls exactly the original bytes
    clone.mkdir()
    for name in (".dvc/config", f"{TRACKED}.dvc", ".dvcignore"):
        if (ws / name).exists():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes((ws / name).read_bytes())
    _dvc(clone, "pull")
    assert _files(clone / TRACKED) == original


def test_a_kill_during_dvc_pull_leaves_nothing_half_written_and_the_rerun_restores_the_bytes(
    base_ws, tmp_path
):
    ws, _remote, original = _tracked_workspace(base_ws, tmp_path)
    _dvc(ws, "push")
    cache = ws / ".dvc" / "cache"
    for path in sorted((ws / TRACKED).rglob("*"), reverse=True):  # the workspace as a fresh clone has it
        path.unlink() if path.is_file() else path.rmdir()
    (ws / TRACKED).rmdir()
    _remove_tree(cache)
    half = _killed_mid_file(ws, tmp_path / "mark", "pull")
    assert cache in half.parents  # (DVC writes a pulled object to a temporary beside its name)
    _objects_hash_to_their_names(cache)
    if (ws / TRACKED).exists():  # whatever the killed pull checked out is whole
        for rel, data in _files(ws / TRACKED).items():
            assert data == original[rel], f"{rel} is half-written"
    _dvc(ws, "pull")  # the rerun completes
    assert _files(ws / TRACKED) == original
    status = _dvc(ws, "status")
    assert "up to date" in status.stdout, status.stdout
    assert _objects_hash_to_their_names(cache) > len(original) // 2


def _remove_tree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            Path(dirpath, name).unlink()
        for name in dirnames:
            Path(dirpath, name).rmdir()
    path.rmdir()
