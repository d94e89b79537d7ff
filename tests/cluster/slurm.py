"""A one-node SLURM cluster for tests: Debian's slurm-wlm and munge, started here, stopped afterwards.

    with SlurmCluster(tmp_path / "slurm") as cluster:   # or pytest.skip(reason) when this machine can't
        cluster.requeue(job_id)
        ...

Needs root and Debian's packages (as in CI): the packages are installed when missing. The daemons run
from a throw-away folder (state, spool, logs, pid files); the only file written outside it is
``/etc/slurm/slurm.conf`` (where ``srun`` inside a job looks; SLURM_CONF does not reach it), which is
removed again. A machine that already has a SLURM configuration or a running slurmctld is left alone
(the tests skip). No accounting daemon: the SLURM executor plugin is asked to use ``squeue`` for job
states (``--slurm-status-command squeue``), which sees finished jobs for MinJobAge seconds.

The node has no GPU (no GRES): a job that asks for one is refused by sbatch, so a profile that asks for a
GPU under ``device: cpu`` fails the DAG.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by promptbias tests/cluster — removed when the test ends"
PACKAGES = ("slurm-wlm", "munge")


class Unavailable(Exception):
    """This machine cannot host the test cluster (the reason says why)."""


def _run(*argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()[-800:]}")
    return res


def _pids(name: str) -> list[int]:
    res = _run("pgrep", "-x", name, check=False)
    return [int(p) for p in res.stdout.split()]


def ensure_packages() -> None:
    """Install slurm-wlm and munge with apt-get when missing (root only); Unavailable if that can't be."""
    if os.name != "posix" or os.geteuid() != 0:
        raise Unavailable("needs root: the test installs and starts SLURM and munge daemons")
    if all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if shutil.which("apt-get") is None:
        raise Unavailable("SLURM is not installed and there is no apt-get to install Debian's slurm-wlm")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    res = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
    if res.returncode != 0:  # a stale package index: refresh it once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=900, check=False)
        res = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
    if res.returncode != 0:
        raise Unavailable(f"apt-get could not install {' '.join(PACKAGES)}: {res.stderr.strip()[-300:]}")


class SlurmCluster:
    """munged + slurmctld + slurmd for one node (this machine), state under ``folder``."""

    def __init__(self, folder: Path, mem_mb: int | None = None) -> None:
        self.folder = folder
        self.node = socket.gethostname().split(".")[0]
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.mem_mb = mem_mb or int(total_mb * 0.8)
        self.cpus = os.cpu_count() or 1
        self._started_munge = False

    # -- set-up and tear-down ----------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        ensure_packages()
        if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
            raise Unavailable(
                f"{SLURM_CONF} exists: a SLURM installation is configured here; not touching it"
            )
        if _pids("slurmctld") or _pids("slurmd"):
            raise Unavailable("a slurmctld or slurmd is already running on this machine; not touching it")
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge()
            SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
            SLURM_CONF.write_text(self._config())
            _run("slurmctld")
            _run("slurmd")
            self._wait(lambda: self.node_state() == "idle", 120, "the node to come up idle")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_munge(self) -> None:
        if _pids("munged"):
            return
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            _run("runuser", "-u", "munge", "--", "mungekey", "--create")
        _run("runuser", "-u", "munge", "--", "munged")
        self._started_munge = True
        self._wait(lambda: _run("munge", "-n", check=False).returncode == 0, 30, "munged")

    def _config(self) -> str:
        f = self.folder
        return f"""{MARKER}
ClusterName=promptbias-ci
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd.pid
SlurmdSpoolDir={f}/spool
StateSaveLocation={f}/state
SlurmctldLogFile={f}/slurmctld.log
SlurmdLogFile={f}/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
KillWait=5
NodeName={self.node} CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN
PartitionName=ci Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def stop(self) -> None:
        """Cancel every job, stop the daemons this cluster started, remove slurm.conf; leave no process."""
        if SLURM_CONF.exists() and MARKER in SLURM_CONF.read_text():
            _run("scancel", "--user", "root", check=False, timeout=30)
            _run("scontrol", "shutdown", check=False, timeout=30)
            self._wait(lambda: not (_pids("slurmctld") or _pids("slurmd")), 30, None)
            for name in ("slurmctld", "slurmd", "slurmstepd"):
                for pid in _pids(name):
                    _kill(pid)
            SLURM_CONF.unlink()
        if self._started_munge:
            for pid in _pids("munged"):
                _kill(pid, signal.SIGTERM)
            self._started_munge = False

    # -- queries and actions -----------------------------------------------------------------
    def node_state(self) -> str:
        return _run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as key → value (JobState, Restarts, …)."""
        out = _run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def requeue(self, job_id: str) -> None:
        """``scontrol requeue`` a running job, then let it start again at once: SLURM holds a requeued job
        for two minutes (its BeginTime), which only slows the test down."""
        _run("scontrol", "requeue", job_id)
        self._wait(lambda: self.job(job_id).get("JobState") == "PENDING", 60, f"job {job_id} to be requeued")
        _run("scontrol", "update", f"jobid={job_id}", "StartTime=now")

    @staticmethod
    def _wait(predicate, timeout: float, what: str | None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        if what is not None:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def processes_under(folder: Path) -> list[int]:
    """Pids of processes whose working directory lies in ``folder`` (a job's, after the test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(int(entry.name))
    return found


def job_id_of(pid: int) -> str:
    """The SLURM job a process runs in (its SLURM_JOB_ID)."""
    environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    for item in environ:
        if item.startswith(b"SLURM_JOB_ID="):
            return item.split(b"=", 1)[1].decode()
    raise RuntimeError(f"process {pid} runs outside SLURM (no SLURM_JOB_ID)")
