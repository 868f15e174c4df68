"""A real single-node Slurm cluster for tests, started without systemd in a temporary folder.

``SlurmCluster(folder).start()`` creates a munge key, starts ``munged`` on its own socket, writes
a minimal ``slurm.conf`` (node = this host at 127.0.0.1, no cgroups: proctrack/linuxproc,
task/none, no accounting), starts ``slurmctld -D`` and ``slurmd -D`` in the background as the
current user, and waits until ``sinfo`` shows the node idle. ``stop()`` cancels what is left and
kills the three daemons (only the processes it started). ``missing()`` names binaries that are
not installed (``scripts/setup.sh test`` installs Debian's slurm-wlm and munge).
"""
from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin") / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.host = socket.gethostname().split(".")[0]

    # ---------------------------------------------------------------- set-up

    def _munge(self) -> None:
        d = self.folder / "munge"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o711)  # clients need to reach the socket inside; munged warns about less
        key = d / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o600)
        self.munge_socket = d / "munge.sock"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
                               f"--log-file={self.folder / 'log' / 'munged.log'}", f"--seed-file={d / 'seed'}"])
        self._wait(lambda: self.munge_socket.exists(), 15, "munged's socket")

    def write_conf(self) -> Path:
        user = getpass.getuser()
        cpus = os.cpu_count() or 1
        ctld_port, slurmd_port = _free_port(), _free_port()
        for sub in ("state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=cxrtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.folder / 'munge' / 'munge.sock'}
StateSaveLocation={self.folder / 'state'}
SlurmdSpoolDir={self.folder / 'spool'}
SlurmctldPidFile={self.folder / 'slurmctld.pid'}
SlurmdPidFile={self.folder / 'slurmd.pid'}
SlurmctldLogFile={self.folder / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.folder / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=5
MessageTimeout=5
InactiveLimit=0
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")
        return self.conf

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "log").mkdir(exist_ok=True)
        self.write_conf()
        self._munge()
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf)])

        def idle() -> bool:
            out = self.cmd("sinfo", "-h", "-o", "%t", check=False)
            return out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mix")
        self._wait(idle, timeout, "the node to show idle in sinfo")
        return self

    # ---------------------------------------------------------------- helpers

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def cmd(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        out = subprocess.run(list(args), capture_output=True, text=True, env=self.env(), timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {out.stderr or out.stdout}")
        return out

    def logs(self) -> str:
        parts = []
        for f in sorted((self.folder / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"== {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.folder / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env(), start_new_session=True)
        out.close()

    def _wait(self, predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}:\n{self.logs()}")
            if predicate():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.logs()}")

    # ---------------------------------------------------------------- tear-down

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                out = self.cmd("squeue", "-h", "-o", "%i", check=False, timeout=10)
                ids = out.stdout.split()
                if ids:
                    self.cmd("scancel", "--signal=KILL", "--full", *ids, check=False, timeout=10)
                    self.cmd("scancel", *ids, check=False, timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()
