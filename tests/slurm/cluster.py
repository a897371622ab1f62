"""A one-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd from the Debian
packages (``apt-get install slurm-wlm munge``), with every file in one folder.

Also a command line: ``python -m tests.slurm.cluster DIR`` starts the same cluster and prints the
``SLURM_CONF`` to export; Ctrl-C or ``kill PID`` stops it (jobs cancelled, daemons stopped).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "srun")


def missing() -> str | None:
    """Why a cluster cannot start here (None when it can)."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} absent; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster's slurmd runs as root"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


def slurm_conf(root: Path, cpus: int, memory_mb: int) -> str:
    """slurm.conf of the one-node cluster: one ``debug`` partition with ``cpus`` CPUs, no accounting."""
    return "\n".join([
        "ClusterName=llm4rec",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge/munge.socket",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        f"PlugStackConfig={root}/plugstack.conf",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "KillWait=5",
        "MinJobAge=600",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    """A running one-node cluster; ``env`` is the environment its clients (sbatch, squeue) need."""

    root: Path
    cpus: int
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> str:
        """Output of a SLURM client command (``squeue ...``) against this cluster."""
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r.stdout

    def stop(self) -> None:
        """Cancel the cluster's jobs, wait for their processes to end, then stop the daemons this
        cluster started (by their process ids).

        A job step's ``slurmstepd`` is a daemon of its own (parent 1): stopping slurmd would leave it
        and the job's processes behind, so jobs are cancelled while slurmd still runs.
        """
        if self.procs and all(p.poll() is None for p in self.procs):
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.time() + 60
            while time.time() < deadline:
                queued = self.run("squeue", "-h", "-o", "%i", check=False).split()
                if not queued and not self.step_sockets():
                    break
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def step_sockets(self) -> list[Path]:
        """The sockets of the job steps running on the node (one per live ``slurmstepd``)."""
        spool = self.root / "spool"
        return [p for p in spool.iterdir() if p.is_socket()] if spool.is_dir() else []

    def logs(self) -> str:
        """The tails of the daemons' logs (for failure messages)."""
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munge/munged.log"):
            p = self.root / name
            if p.exists():
                out.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)


def start(root: Path, cpus: int | None = None, timeout: float = 60.0) -> Cluster:
    """Start munged, slurmctld and slurmd with all state under ``root``; wait until the node is idle."""
    cpus = cpus or os.cpu_count() or 1
    root.mkdir(parents=True, exist_ok=True)
    for d in ("munge", "state", "spool"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    subprocess.run([_exe("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, cpus, max(1024, _memory_mb() - 512)))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, cpus, env)
    sock = root / "munge" / "munge.socket"
    try:
        cluster.procs.append(subprocess.Popen(
            [_exe("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
             f"--log-file={root}/munge/munged.log", f"--pid-file={root}/munge/munged.pid",
             f"--seed-file={root}/munge/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.time() + timeout
        while not sock.exists():
            if time.time() > deadline or cluster.procs[0].poll() is not None:
                raise RuntimeError("munged did not start")
            time.sleep(0.1)
        for cmd in ([_exe("slurmctld"), "-D", "-c", "-f", str(conf)], [_exe("slurmd"), "-D", "-N", "localhost", "-f", str(conf)]):
            cluster.procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                  start_new_session=True))
            time.sleep(0.5)
        while True:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()
            if state.startswith("idle"):
                return cluster
            if any(p.poll() is not None for p in cluster.procs) or time.time() > deadline:
                raise RuntimeError(f"the SLURM node did not come up (state {state!r})\n{cluster.logs()}")
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.slurm.cluster DIR")
    why = missing()
    if why:
        sys.exit(why)
    import signal

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the daemons as Ctrl-C does
    c = start(Path(sys.argv[1]).resolve())
    print(f"export SLURM_CONF={c.root / 'slurm.conf'}   # then: sinfo; Ctrl-C here stops the cluster", flush=True)
    try:
        while all(p.poll() is None for p in c.procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
