"""A real Slurm cluster on this one machine, for the integration tests (and for trying the scripts).

Debian's ``slurm-wlm`` (slurmctld + slurmd) and ``munge``, installed when missing, started by hand
(no systemd): one controller and N emulated nodes ``node1..nodeN`` (8 by default, the most any test
session needs at once), in partitions (`PARTITIONS`): ``debug``, the default, ``node[1-2]`` (what a
2-node test submits to); ``three``, ``node[1-3]`` (the preflight's 3 nodes); ``five``, ``node[1-5]``
(a 2-node job that loses a node three times and moves on each time); ``spare``, ``node[6-8]``, beside
``five`` (a 2-node crash loop that can spare one node and no more, then a healthy 2-node run, while
the faulted run goes on: tests/fault_scenario.py); ``all``, every node. Idle emulated nodes cost next
to nothing: they share this machine's cores.
Each ``slurmd -N nodeK`` runs in its own UTS and mount namespace (``unshare -u -m``) with hostname
``nodeK`` and a hosts file that names every node, and its own ``/dev/shm`` (real nodes never share
one; streaming keys its shared memory by name there), so jobs see a real multi-node allocation
(``SLURM_JOB_NODELIST=node[1-2]``, ``SLURM_NODEID``, ``hostname``) while all nodes share this
machine's network stack and cores.

Every node declares ``GPUS_PER_NODE`` GPUs as GRES (``Gres=gpu:4``; gres.conf's ``File=`` names
character devices of NVIDIA's major number made under ``WORKDIR/dev``, enough for Slurm's
bookkeeping: no driver answers them), so a job that asks for them (``--gpus-per-node``) gets what a
GPU cluster gives it: ``SLURM_GPUS_ON_NODE``, ``CUDA_VISIBLE_DEVICES``, and no two jobs share a GPU.

Every daemon this module starts is recorded by PID in ``WORKDIR/pids.json`` and ended by PID on
`LocalSlurmCluster.stop` after all jobs are cancelled and their ``slurmstepd`` processes are gone.
Only this cluster's step daemons are waited for or killed: those whose environment holds this
cluster's ``SLURM_CONF`` (slurmd passes its own environment on), never another cluster's or a real
node's. `LocalSlurmCluster.start` is idempotent: a cluster already running from the same folder with
the same slurm.conf is reused.

The test session starts one cluster and shares it between every Slurm module (`session_cluster`;
`LocalSlurmCluster.settle` between modules); a cluster already started by hand with ``up`` is reused
and left running, which is what ``make test-slurm`` relies on.

    python -m tests.local_slurm up [--nodes 3] [--workdir DIR]   # prints: export SLURM_CONF=...
    python -m tests.local_slurm down [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge", "iptables")  # iptables: `slowed_link`
DEFAULT_WORKDIR = Path("/tmp/mpt-suite-slurm")
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1, writable on these machines
UNIFIED_CGROUP = Path("/sys/fs/cgroup/unified")  # the cgroup v2 hierarchy beside it: what iptables' cgroup match reads
CTLD_PORT = 16817
# name: (first, last) node number (``debug`` is the default); ``all`` has every node
PARTITIONS = {"debug": (1, 2), "three": (1, 3), "five": (1, 5), "spare": (6, 8)}
NODE_PORT_BASE = 17000
GPUS_PER_NODE = 4  # GRES per emulated node (module docstring); 4 ranks' /dev/shm share fits a node's 1 GiB
NVIDIA_MAJOR = 195  # the character-device major number of /dev/nvidia<N>
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


class SlurmError(RuntimeError):
    """The local cluster could not be installed, started or used."""


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if out.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (PID 1 here may reap late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# what a recorded PID runs: slurmd after ``unshare`` and ``sh`` exec it; munged under ``runuser``
DAEMON_PROGRAMS = {
    "slurmctld": {"slurmctld"},
    "node": {"unshare", "sh", "slurmd"},
    "munged": {"runuser", "munged"},
}


def _runs(pid: int, programs: set[str]) -> bool:
    """True when ``pid`` is alive and its command name is one of ``programs``."""
    try:
        return pid_alive(pid) and Path(f"/proc/{pid}/comm").read_text().strip() in programs
    except OSError:
        return False


def _processes_named(name: str, environ: str | None = None) -> list[int]:
    """PIDs of live processes whose command name is ``name`` (and, when given, whose environment
    holds the entry ``environ``, e.g. ``SLURM_CONF=/tmp/x/slurm.conf``)."""
    pids = []
    wanted = None if environ is None else environ.encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() != name or not pid_alive(int(proc.name)):
                    continue
                if wanted is None or wanted in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def install_packages() -> None:
    """Install slurm-wlm, munge and iptables with apt when missing, without letting packages start services."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "iptables")):
        return
    if os.geteuid() != 0:
        raise SlurmError("slurm-wlm, munge or iptables is missing and installing them needs root")
    policy = Path("/usr/sbin/policy-rc.d")
    had_policy = policy.exists()
    if not had_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-q"], env=env, timeout=600)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], env=env, timeout=900)
    finally:
        if not had_policy:
            policy.unlink(missing_ok=True)


@dataclass
class LocalSlurmCluster:
    """A controller and ``nodes`` emulated nodes whose state lives under ``workdir``."""

    workdir: Path = DEFAULT_WORKDIR
    nodes: int = 8
    cpus_per_node: int = 1
    # s without an answer from a node's slurmd before Slurm marks it down. 10 s lets the killed-slurmd
    # test see its node marked down about 30 s after the kill; a slurmd throttled to a tenth of a core
    # (the preflight's slow node; the acceptance's has a quarter) still answers every ping well inside it.
    slurmd_timeout: int = 10
    extra_config: tuple[str, ...] = ()  # slurm.conf lines added for a while (`configured`)
    # the environment its client commands and daemons start from: os.environ at each call when None;
    # a copy taken once for a thread that runs beside tests that change os.environ (`pinned`)
    environ: dict[str, str] | None = None

    def pinned(self) -> LocalSlurmCluster:
        """The same cluster, its commands run with os.environ as it is now, whatever changes it later."""
        return replace(self, environ=dict(os.environ))

    @property
    def conf(self) -> Path:
        """slurm.conf of this cluster."""
        return self.workdir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm client commands (sbatch, squeue, scontrol)."""
        return dict(os.environ if self.environ is None else self.environ, SLURM_CONF=str(self.conf))

    @property
    def node_names(self) -> list[str]:
        """node1 ... nodeN."""
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    def _pids_file(self) -> Path:
        return self.workdir / "pids.json"

    def _pids(self) -> dict[str, int]:
        """The daemons recorded in ``pids.json`` that still run the program they were started as: a
        file left by a run that crashed may name PIDs the system has since given to others."""
        try:
            recorded = {k: int(v) for k, v in json.loads(self._pids_file().read_text()).items()}
        except (OSError, ValueError):
            return {}
        return {name: pid for name, pid in recorded.items() if _runs(pid, DAEMON_PROGRAMS[name.rstrip("0123456789")])}

    def _save_pid(self, name: str, pid: int) -> None:
        pids = self._pids()
        pids[name] = pid
        partial = self._pids_file().with_name(f"pids.json.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(pids))
        partial.replace(self._pids_file())  # whole or not at all: a thread beside the tests may read it

    def running(self) -> bool:
        """True when the controller and every node daemon recorded here are alive, started from the
        slurm.conf this object would write."""
        pids = self._pids()
        wanted = ["slurmctld", *self.node_names]
        try:
            same = self.conf.read_text() == self.config_text()
        except OSError:
            return False
        return same and all(name in pids and pid_alive(pids[name]) for name in wanted)

    def write_config(self) -> None:
        """slurm.conf and the hosts file the nodes see."""
        w = self.workdir
        for sub in ("state", "log", "spool"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config_text())
        devices = w / "dev"
        devices.mkdir(exist_ok=True)
        for i in range(GPUS_PER_NODE):
            if not (devices / f"nvidia{i}").exists():
                os.mknod(devices / f"nvidia{i}", 0o600 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, i))
        (w / "gres.conf").write_text(f"Name=gpu File={devices}/nvidia[0-{GPUS_PER_NODE - 1}]\n")
        hosts = Path("/etc/hosts").read_text()
        extra = "".join(f"127.0.1.{i} {name}\n" for i, name in enumerate(self.node_names, start=1))
        (w / "hosts").write_text(hosts.rstrip("\n") + "\n" + extra)

    def config_text(self) -> str:
        """The slurm.conf of this cluster."""
        w = self.workdir
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=mptsuite",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={CTLD_PORT}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "AuthInfo=cred_expire=10",
            f"StateSaveLocation={w}/state",
            f"SlurmdSpoolDir={w}/spool/%n",
            f"SlurmctldPidFile={w}/slurmctld.pid",
            f"SlurmdPidFile={w}/slurmd-%n.pid",
            f"SlurmctldLogFile={w}/log/slurmctld.log",
            f"SlurmdLogFile={w}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SlurmdParameters=config_overrides",
            "GresTypes=gpu",
            "MailProg=/bin/true",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "SlurmctldTimeout=30",
            f"SlurmdTimeout={self.slurmd_timeout}",
            "MinJobAge=600",
            "KillWait=12",  # the training script waits up to KillWait - 2 s for its step before its end line
        ]
        for i, name in enumerate(self.node_names, start=1):
            lines.append(
                f"NodeName={name} NodeHostname={name} NodeAddr=127.0.1.{i} Port={NODE_PORT_BASE + i} "
                f"CPUs={self.cpus_per_node} RealMemory=2000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
            )
        for name, nodes in self.partitions().items():
            default = " Default=YES" if name == "debug" else ""
            lines.append(f"PartitionName={name} Nodes={','.join(nodes)}{default} MaxTime=INFINITE State=UP")
        return "\n".join([*lines, *self.extra_config]) + "\n"

    @contextlib.contextmanager
    def configured(self, *lines: str) -> Iterator[None]:
        """slurm.conf with ``lines`` added while the block runs: written, then ``scontrol reconfigure``
        (the controller and every slurmd read it again); the usual file is back, and read, after."""
        self.extra_config = lines
        try:
            self.conf.write_text(self.config_text())
            _run(["scontrol", "reconfigure"], env=self.env)
            yield
        finally:
            self.extra_config = ()
            self.conf.write_text(self.config_text())
            _run(["scontrol", "reconfigure"], env=self.env)

    def _start_munge(self) -> None:
        if Path("/run/munge/munge.socket.2").exists() and _processes_named("munged"):
            return
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        for sub in ("/var/log/munge", "/var/lib/munge"):
            Path(sub).mkdir(parents=True, exist_ok=True)
            shutil.chown(sub, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            _run(["runuser", "-u", "munge", "--", "/usr/sbin/mungekey", "--create"])
        proc = subprocess.Popen(
            ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--foreground"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._save_pid("munged", proc.pid)
        self._wait(lambda: Path("/run/munge/munge.socket.2").exists(), 20, "munged did not create its socket")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.workdir / "log" / f"{name}.console").open("ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, start_new_session=True)
        self._save_pid(name, proc.pid)

    @staticmethod
    def _wait(cond: object, timeout: float, message: str) -> None:
        assert callable(cond)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.5)
        raise SlurmError(message)

    def _nodes_idle(self, only_idle: bool = False) -> bool:
        """Every node up: idle, mixed or allocated (``only_idle``: idle)."""
        try:
            out = _run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, timeout=10)
        except (SlurmError, subprocess.TimeoutExpired):
            return False
        states = dict(line.split() for line in out.splitlines() if line.strip())
        if only_idle:  # and responding ("idle*" is a node whose slurmd does not answer)
            return all(states.get(n) == "idle" for n in self.node_names)
        return all(states.get(n, "").rstrip("*") in {"idle", "mix", "alloc"} for n in self.node_names)

    def start(self, timeout: float = 60) -> LocalSlurmCluster:
        """Install if needed, write the config, start munged, slurmctld and the nodes; wait for idle."""
        if self.running() and self._nodes_idle():
            return self
        self.stop()
        install_packages()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._start_munge()
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
        for name in self.node_names:
            self.start_node(name)
        try:
            self._wait(self._nodes_idle, timeout, "nodes did not become idle")
        except SlurmError as err:
            logs = "\n".join(p.read_text()[-2000:] for p in sorted((self.workdir / "log").glob("*")))
            self.stop()
            raise SlurmError(f"{err}; daemon logs:\n{logs}") from err
        return self

    def start_node(self, name: str) -> None:
        """Start ``name``'s slurmd in a namespace of its own: its hostname, its /etc/hosts, its /dev/shm.
        The PID recorded is slurmd's (``unshare`` and ``sh`` exec it)."""
        inner = (
            f"hostname {name} && mount --bind {self.workdir}/hosts /etc/hosts && "
            f"mount -t tmpfs -o size=1g tmpfs /dev/shm && exec slurmd -D -N {name} -f {self.conf}"
        )
        self._spawn(name, ["unshare", "-u", "-m", "sh", "-c", inner])

    def partitions(self) -> dict[str, list[str]]:
        """Each partition's nodes (`PARTITIONS`, cut to the cluster's size; one beyond it left out)."""
        cut = {name: self.node_names[first - 1 : last] for name, (first, last) in PARTITIONS.items()}
        return {name: nodes for name, nodes in cut.items() if nodes} | {"all": self.node_names}

    def node_state(self, name: str) -> str:
        """``sinfo``'s long state of ``name`` (``idle``, ``allocated``, ``down*``, ...)."""
        out = _run(["sinfo", "-h", "-N", "-n", name, "-o", "%T"], env=self.env, timeout=10)
        return out.split()[0] if out.split() else ""  # a line per partition the node is in

    def step_daemons(self) -> list[int]:
        """PIDs of this cluster's ``slurmstepd`` processes: those started by its slurmds, whose
        environment holds its ``SLURM_CONF`` (never another cluster's, or a real node's)."""
        return _processes_named("slurmstepd", environ=f"SLURM_CONF={self.conf}")

    def end_jobs(self, timeout: float = 60) -> None:
        """Cancel every job, wait up to ``timeout`` s for this cluster's step daemons to end, then
        SIGKILL those left (by PID)."""
        pids = self._pids()
        if "slurmctld" in pids and pid_alive(pids["slurmctld"]):
            subprocess.run(
                ["scancel", "--full", "--quiet", "--state=RUNNING"],
                env=self.env,
                capture_output=True,
                check=False,
                timeout=30,
            )
            subprocess.run(
                ["scancel", "--quiet", "--state=PENDING"], env=self.env, capture_output=True, check=False, timeout=30
            )
            deadline = time.monotonic() + timeout
            while self.step_daemons() and time.monotonic() < deadline:
                time.sleep(0.5)
        for stepd in self.step_daemons():
            with contextlib.suppress(ProcessLookupError):
                os.kill(stepd, signal.SIGKILL)

    def settle(self, timeout: float = 120) -> None:
        """Between two test modules: no job left (cancelled, step daemons gone), every node idle.
        Raises `SlurmError` naming the nodes that are not (a fault a test did not undo)."""
        self.end_jobs()
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                ["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True, check=False, timeout=30
            ).stdout.strip()
            if not out and self._nodes_idle(only_idle=True):
                return
            if time.monotonic() > deadline:
                states = _run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, timeout=10).split()
                raise SlurmError(f"the cluster did not settle in {timeout:.0f} s: jobs {out!r}, nodes {states}")
            time.sleep(0.5)

    def stop(self, timeout: float = 60) -> None:
        """Cancel jobs, wait for their step daemons, end every daemon started here; leave nothing."""
        pids = self._pids()
        if not pids:
            return
        self.end_jobs(timeout)
        order = [n for n in pids if n.startswith("node")] + ["slurmctld", "munged"]
        for name in order:
            pid = pids.get(name)
            if pid and pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 20
        for name in order:
            pid = pids.get(name)
            while pid and pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid and pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        self._pids_file().unlink(missing_ok=True)

    def sbatch(self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """Submit a job; return its id."""
        out = subprocess.run(
            ["sbatch", "--parsable", *args],
            capture_output=True,
            text=True,
            env=dict(self.env, **(env or {})),
            cwd=cwd,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise SlurmError(f"sbatch {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    @contextlib.contextmanager
    def cpu_quota(self, node: str, fraction: float, running_too: bool = False) -> Iterator[None]:
        """``node``'s slurmd (and every job step it starts from now on) limited to ``fraction`` of a
        core (a cgroup v1 ``cpu`` group of its own); everything in it is moved back after.

        ``running_too``: the processes already running on the node (its namespace's: the job steps
        and ranks) too, so that a job is throttled after its start-up and not during it."""
        group = CPU_CGROUP / f"mpt-suite-test-{node}-{os.getpid()}"
        group.mkdir()
        try:
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text(str(int(100000 * fraction)))
            slurmd = self._pids()[node]
            for pid in self.node_processes(node) if running_too else [slurmd]:
                with contextlib.suppress(OSError):  # one that ended meanwhile
                    (group / "cgroup.procs").write_text(str(pid))
            yield
        finally:
            for left in (group / "cgroup.procs").read_text().split():  # slurmd, and anything still running
                with contextlib.suppress(OSError):
                    (CPU_CGROUP / "cgroup.procs").write_text(left)
            group.rmdir()

    @contextlib.contextmanager
    def slowed_link(self, a: str, b: str, mbit: int) -> Iterator[None]:
        """The traffic between nodes ``a`` and ``b``, and only theirs, limited to ``mbit`` Mbit/s.

        The nodes share one network stack and gloo connects from 127.0.0.1, so addresses alone
        cannot tell this pair's packets from others': the sender can. Each node's slurmd (and every
        job step it starts from now on) goes into a cgroup v2 folder of its own; iptables' ``cgroup
        --path`` match gives the packets that ``a``'s processes send to ``b``'s address, and ``b``'s to
        ``a``'s, an HTB class of ``mbit`` on ``lo`` (CLASSIFY); other traffic is not shaped. Undone
        after: the rules and the qdisc deleted, the processes moved back, the folders removed."""
        pids = self._pids()
        address = {name: f"127.0.1.{i}" for i, name in enumerate(self.node_names, start=1)}
        folders = {n: UNIFIED_CGROUP / f"mpt-suite-link-{n}-{os.getpid()}" for n in (a, b)}
        rules = [
            [
                "OUTPUT",
                "-m",
                "cgroup",
                "--path",
                folders[x].name,
                "-d",
                address[y],
                "-j",
                "CLASSIFY",
                "--set-class",
                "1:23",
            ]
            for x, y in ((a, b), (b, a))
        ]
        qdisc = False
        try:
            for node, folder in folders.items():
                folder.mkdir()
                (folder / "cgroup.procs").write_text(str(pids[node]))
            _run(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb"])
            qdisc = True
            _run(["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:23", "htb", "rate", f"{mbit}mbit"])
            for rule in rules:
                _run(["iptables", "-t", "mangle", "-A", *rule])
            yield
        finally:
            for rule in rules:
                subprocess.run(["iptables", "-t", "mangle", "-D", *rule], capture_output=True, check=False)
            if qdisc:
                subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True, check=False)
            for folder in folders.values():
                if folder.is_dir():
                    for left in (folder / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):  # one that ended meanwhile
                            (UNIFIED_CGROUP / "cgroup.procs").write_text(left)
                    folder.rmdir()

    def node_of(self, pid: int) -> str:
        """The emulated node process ``pid`` runs on: the node whose slurmd shares its UTS namespace."""
        ns = os.readlink(f"/proc/{pid}/ns/uts")
        pids = self._pids()
        for name in self.node_names:
            with contextlib.suppress(OSError, KeyError):
                if os.readlink(f"/proc/{pids[name]}/ns/uts") == ns:
                    return name
        raise SlurmError(f"process {pid} runs on no node of this cluster")

    def node_processes(self, node: str) -> list[int]:
        """PIDs of every process on ``node``: its slurmd and all that share its UTS namespace (the
        job steps it started and their processes), by the namespace's identity, not by name."""
        own = os.readlink(f"/proc/{self._pids()[node]}/ns/uts")
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "ns" / "uts") == own and pid_alive(int(proc.name)):
                        pids.append(int(proc.name))
        return pids

    def shm_remove(self, node: str, name: str) -> None:
        """``/dev/shm/<name>`` removed from ``node``'s own /dev/shm (its slurmd's mount namespace), if there."""
        pid = str(self._pids()[node])
        subprocess.run(["nsenter", "-t", pid, "-m", "rm", "-f", f"/dev/shm/{name}"], check=True)

    @contextlib.contextmanager
    def shm_filled(self, node: str, megabytes: int) -> Iterator[None]:
        """A file of ``megabytes`` MiB in ``node``'s own /dev/shm (its slurmd's mount namespace), removed after."""
        pid = str(self._pids()[node])
        fill = [
            "nsenter",
            "-t",
            pid,
            "-m",
            "dd",
            "if=/dev/zero",
            "of=/dev/shm/test-fill",
            "bs=1M",
            f"count={megabytes}",
        ]
        subprocess.run(fill, check=True, capture_output=True)
        try:
            yield
        finally:
            self.shm_remove(node, "test-fill")

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, NodeList, Restarts, ...)."""
        out = _run(["scontrol", "show", "job", "-o", job_id], env=self.env, timeout=30)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, timeout: float = 600, until: set[str] | None = None) -> dict[str, str]:
        """Poll until the job reaches one of ``until`` (default: any final state); return its info."""
        until = until or FINAL_STATES
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in until:
                return info
            time.sleep(1)
        raise SlurmError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s")


def rank_pids(job: str, rank: int, restart: int | None = None) -> list[int]:
    """PIDs of global rank ``rank`` of ``job`` now (of its start ``restart`` when given): the
    processes running llm-foundry's entry point with that ``RANK`` in their environment (Composer's
    launcher sets it) and the job's ``SLURM_RESTART_COUNT`` (absent at the first start)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if b"test_case.training.foundry_train" not in cmdline:
            continue
        if not {f"SLURM_JOB_ID={job}".encode(), f"RANK={rank}".encode()} <= environ:
            continue
        count = next((e.split(b"=", 1)[1] for e in environ if e.startswith(b"SLURM_RESTART_COUNT=")), b"0")
        if (restart is None or count == str(restart).encode()) and pid_alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def rank_pid(job: str, rank: int, timeout: float = 120, restart: int | None = None) -> int:
    """The PID of `rank_pids`, waiting up to ``timeout`` seconds for it to start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pids := rank_pids(job, rank, restart):
            return pids[0]
        time.sleep(0.2)
    raise SlurmError(f"no rank {rank} of job {job} after {timeout} s")


def session_cluster(workdir: Path = DEFAULT_WORKDIR) -> Iterator[LocalSlurmCluster]:
    """The one cluster of a test session (its ``scope="session"`` fixture yields from this).

    A cluster already running in ``workdir`` with the same slurm.conf (``python -m tests.local_slurm
    up``) is reused and left running; otherwise one is started, then stopped at the end, checking that
    no daemon and none of its ``slurmstepd`` outlived it. Skips without root."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("starting a local Slurm cluster needs root (slurmd, munged, unshare); CI runs as root")
    cluster = LocalSlurmCluster(workdir=workdir)
    reused = cluster.running() and cluster._nodes_idle()
    cluster.start()
    pids = dict(cluster._pids())
    yield cluster
    if reused:
        cluster.end_jobs()
        return
    cluster.stop()
    assert not any(pid_alive(p) for p in pids.values()), "a daemon outlived stop()"
    assert not cluster.step_daemons(), "a slurmstepd of the cluster outlived stop()"


def main(argv: list[str] | None = None) -> int:
    """``up`` / ``down`` for trying the sbatch scripts by hand."""
    parser = argparse.ArgumentParser(prog="python -m tests.local_slurm")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--nodes", type=int, default=LocalSlurmCluster.nodes, help="the tests' shape by default")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args(argv)
    cluster = LocalSlurmCluster(args.workdir, args.nodes)
    if args.action == "up":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
        parts = "; ".join(f"{name} {','.join(nodes)}" for name, nodes in cluster.partitions().items())
        print(f"# partitions (debug is the default): {parts}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
