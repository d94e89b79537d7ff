"""Case 7 — disk full while writing a checkpoint or the image cache.

The ``PROMPTBIAS_FAULT=<target>:enospc[:n]`` hook of ``promptbias.io.atomic_path`` makes the n-th write
of a target fail with ``OSError(ENOSPC)`` as a full disk would; where the machine allows mounting a
tmpfs, a real 64 KiB file system is filled as well. In every case: exit code 2 and one line saying "no
space left on device … free space … rerun", the previous checkpoint intact, no temporary left, and the
rerun resumes (training) or rebuilds (cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import promptbias.io
from tests.reliability.helpers import assert_outputs_parse, is_atomic_temp
from tests.workspace import Workspace

TRAIN = ["train", "--dataset", "demo_shapes", "--method", "bias", "--seed", "1"]
RUN = Path("runs/demo_shapes/bias/seed1")


def _main(ws: Workspace, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The console entry in-process, in the workspace: (exit code, stderr)."""
    from promptbias.cli import main

    capfd.readouterr()
    old = os.getcwd()
    os.chdir(ws.path)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["--params", str(ws.params), *args])
    finally:
        os.chdir(old)
    return int(exit_.value.code or 0), capfd.readouterr().err


def _disk_full_line(err: str, target: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and target in lines[0], lines[0]
    assert "no space left on device" in lines[0] and "free space" in lines[0] and "rerun" in lines[0], lines[
        0
    ]


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Set PROMPTBIAS_FAULT for in-process commands (the n-th-write counter starts at zero)."""

    def arm(spec: str | None) -> None:
        monkeypatch.setattr(promptbias.io, "_fault_hits", 0)
        if spec is None:
            monkeypatch.delenv(promptbias.io.FAULT_ENV, raising=False)
        else:
            monkeypatch.setenv(promptbias.io.FAULT_ENV, spec)

    yield arm
    monkeypatch.delenv(promptbias.io.FAULT_ENV, raising=False)


def test_disk_full_while_writing_a_checkpoint(
    base_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str], fault: object
) -> None:
    import torch

    straight = base_ws.copy(tmp_path / "straight")
    straight.cli(*TRAIN)
    ws = base_ws.copy(tmp_path / "full")
    fault("checkpoint.pt:enospc:2")  # epoch 1 is checkpointed, the disk fills up during epoch 2's
    code, err = _main(ws, capfd, *TRAIN)
    assert code == 2, err
    _disk_full_line(err, "checkpoint.pt")
    state = torch.load(ws.path / RUN / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0  # the previous checkpoint is intact (epoch index 0 = first epoch)
    assert not [p for p in (ws.path / RUN).iterdir() if is_atomic_temp(p)]
    assert not (ws.path / RUN / "params.safetensors").exists() and not (ws.path / RUN / "train.json").exists()
    assert_outputs_parse(ws.path)

    fault(None)  # space freed: the rerun resumes and ends where an uninterrupted run ends
    out = ws.cli(*TRAIN)
    assert "resuming" in out
    assert (ws.path / RUN / "params.safetensors").read_bytes() == (
        straight.path / RUN / "params.safetensors"
    ).read_bytes()
    mode = (ws.path / RUN / "params.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)  # outputs are not left private (mkstemp's 0600)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_disk_full_while_writing_the_image_cache(
    base_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str], fault: object
) -> None:
    ws = base_ws.copy(tmp_path / "cache")
    fault("images_32.npy:enospc")
    code, err = _main(ws, capfd, "cache", "demo_shapes")
    assert code == 2, err
    _disk_full_line(err, "images_32.npy")
    folder = ws.path / "data/cache/demo_shapes"
    assert not folder.exists() or not any(folder.iterdir())
    fault(None)
    ws.cli("cache", "demo_shapes")
    assert (folder / "images_32.json").is_file() and (folder / "images_32.npy").is_file()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs (skipped where mounting is not allowed)."""
    mnt = tmp_path / "tiny_fs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_file_system_while_caching(
    base_ws: Workspace, tmp_path: Path, capfd: pytest.CaptureFixture[str], tiny_fs: Path
) -> None:
    """A real ENOSPC (the cache is ~1.5 MB, the file system 64 KiB): no SIGBUS, one line, exit 2."""
    ws = base_ws.copy(tmp_path / "cache")
    (ws.path / "data/cache").symlink_to(tiny_fs, target_is_directory=True)
    code, err = _main(ws, capfd, "cache", "demo_shapes")
    assert code == 2, err
    _disk_full_line(err, "images_32.npy")
    assert not list(tiny_fs.rglob("*.npy")) and not list(tiny_fs.rglob(".*"))  # the temporary is gone


# ----------------------------------------------------------- aggregate, probe and render writes (issue 27)
PROBE = ["probe", "attention_stats", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1"]


def _exit_of(ws: Workspace, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The console entry in-process: (exit code, stderr), a command that returns normally included."""
    from promptbias.cli import main

    capfd.readouterr()
    old = os.getcwd()
    os.chdir(ws.path)
    try:
        main(["--params", str(ws.params), *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        os.chdir(old)
    return code, capfd.readouterr().err


def _no_temps(root: Path, folder: str) -> None:
    base = root / folder
    left = [p for p in base.rglob("*") if is_atomic_temp(p)] if base.exists() else []
    assert not left, left


@pytest.mark.parametrize(
    ("case", "target", "args", "folder"),
    [
        ("aggregate", "metrics/summary", ["aggregate"], "metrics"),
        ("probe", "attention_stats", PROBE, "probes"),
        ("render", "results/", ["render"], "results"),
    ],
)
def test_disk_full_while_aggregating_probing_or_rendering(
    base_ws: Workspace,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    fault: object,
    case: str,
    target: str,
    args: list[str],
    folder: str,
) -> None:
    """Exit 2, one stderr line, no temporary and no half-written output; the rerun completes and writes
    what a run on a disk with space writes."""
    ws = base_ws.copy(tmp_path / case)
    straight = base_ws.copy(tmp_path / f"{case}-straight")
    for w in (ws, straight):
        w.cli("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")
    code, err = _exit_of(straight, capfd, *args)
    assert code == 0, err
    fault(f"{target}:enospc")
    code, err = _exit_of(ws, capfd, *args)
    assert code == 2, err
    _disk_full_line(err, target)
    _no_temps(ws.path, folder)
    assert_outputs_parse(ws.path, (folder,) if folder != "results" else ())
    fault(None)
    code, err = _exit_of(ws, capfd, *args)
    assert code == 0, err
    written = sorted(p.relative_to(ws.path) for p in (ws.path / folder).rglob("*") if p.is_file())
    assert written == sorted(
        p.relative_to(straight.path) for p in (straight.path / folder).rglob("*") if p.is_file()
    )
    _no_temps(ws.path, folder)
