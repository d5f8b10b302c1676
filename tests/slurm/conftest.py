"""A real one-node SLURM cluster on 127.0.0.1 for the SLURM tests (Debian's slurm-wlm + munge).

Everything lives in a private temp dir: its own munge key and socket, a generated slurm.conf with non-default
ports, state and spool dirs. slurmctld, slurmd and munged run in the foreground as children of the test process
and are stopped by pid at the end. `SLURM_CONF` is exported for the session so `sbatch`/`squeue`/`scontrol`
called by emsweep talk to this cluster. Missing binaries are an error, never a skip: CI installs slurm-wlm.

Requeue delay: SLURM holds a requeued job until its launch credential would have expired
(`AuthInfo=...,cred_expire=` seconds, default 120, see `man slurm.conf`); we set it to CRED_EXPIRE so the
preemption test waits seconds, not minutes.

Time limits: slurmctld checks them every 30 s (PERIODIC_TIMEOUT, compiled in) and sends a job's `--signal` at
the first check within 30 s of `time limit - lead time`, so a `--time=2 --signal=B:USR1@5` job gets SIGUSR1
85 to 115 s after it starts (measured on Debian's 22.05). `OverTimeLimit=1` gives a job still saving its
checkpoint when the limit passes a minute's grace (the lead time here is seconds, not a real job's minutes).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
PARTITION = "debug"
CRED_EXPIRE = 10  # seconds a requeued job waits before it may start again


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (p := Path(d) / binary).exists()), None
    )


@dataclass
class SlurmCluster:
    """Handle on the running test cluster: its dir, conf, env, and helpers to run clients and wait on jobs."""

    root: Path
    conf: Path
    partition: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def jobcomp(self) -> Path:
        return self.root / "log" / "jobcomp.txt"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check)

    def queue(self) -> list[str]:
        out = self.run("squeue", "-h", "-o", "%i %T %r").stdout
        return [line for line in out.splitlines() if line.strip()]

    def wait_empty(self, timeout: float = 300, job_ids: list[str] | None = None) -> None:
        """Wait until the queue holds none of `job_ids` (all jobs if None); fail with the logs if it doesn't."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.queue()
            if job_ids is not None:
                lines = [ln for ln in lines if any(ln.split()[0].split("_")[0] == j for j in job_ids)]
            if not lines:
                return
            time.sleep(1)
        raise AssertionError(f"jobs still queued after {timeout}s:\n" + "\n".join(self.queue()) + self.logs())

    def wait_for(
        self, pred, timeout: float, what: str, job: str | None = None, logs=None, poll: float = 0.2
    ) -> None:
        """Poll `pred` until true. Fail with the queue and `logs()` when `timeout` passes (generous: a loaded
        machine is slow, not wrong) or at once when `job` has left the queue without `pred` becoming true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if job is not None and not any(ln.split()[0].split("_")[0] == job for ln in self.queue()):
                if pred():
                    return
                raise AssertionError(f"job {job} ended before {what}" + (logs() if logs else self.logs()))
            time.sleep(poll)
        raise AssertionError(
            f"no {what} after {timeout}s\n" + "\n".join(self.queue()) + (logs() if logs else self.logs())
        )

    def completions(self) -> list[dict[str, str]]:
        """Final job records from jobcomp/filetxt (no accounting daemon here), one dict per job run."""
        if not self.jobcomp.exists():
            return []
        return [
            dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            for line in self.jobcomp.read_text().splitlines()
            if "JobId=" in line
        ]

    def states(self, job_id: str) -> dict[str, list[str]]:
        """Job (or array) id -> {task index or "-": [JobState of each run, in order]}."""
        out: dict[str, list[str]] = {}
        for rec in self.completions():
            if rec.get("ArrayJobId") == job_id:
                out.setdefault(rec.get("ArrayTaskId", "-"), []).append(rec["JobState"])
            elif rec.get("JobId") == job_id and rec.get("ArrayJobId") in (None, "", "0", job_id):
                out.setdefault("-", []).append(rec["JobState"])
        return out

    def logs(self, tail: int = 40) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.root / "log" / name
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"\n--- {p} (last {tail} lines) ---\n" + "\n".join(lines))
        return "".join(parts)


def _write_conf(root: Path, sock: Path, ctld_port: int, slurmd_port: int) -> Path:
    user = getpass.getuser()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""# generated by tests/slurm/conftest.py: a private one-node cluster on 127.0.0.1
ClusterName=emsweeptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire={CRED_EXPIRE}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=5
OverTimeLimit=1
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _stop(proc: subprocess.Popen, name: str, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def start_cluster() -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd in a fresh temp dir; yield when the node is idle; stop all by pid."""
    missing = [b for b in BINARIES if _find(b) is None]
    if missing:
        pytest.fail(
            f"SLURM tests need Debian's slurm-wlm and munge; missing {', '.join(missing)}. "
            "Install them: apt-get install -y slurm-wlm munge",
            pytrace=False,
        )
    # A short path: the munge socket path must fit in a unix socket address (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="emsweep-slurm-"))
    for d in ("munge", "state", "spool", "log", "run"):
        (root / d).mkdir()
    root.chmod(0o755)
    (root / "munge").chmod(0o755)  # munged insists on safe permissions
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = root / "munge" / "munge.sock"
    conf = _write_conf(root, sock, _free_port(), _free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root=root, conf=conf, partition=PARTITION, env=env)

    def spawn(name: str, *argv: str) -> None:
        log = open(root / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 (lives as long as the daemon)
        cluster.procs[name] = subprocess.Popen(
            list(argv), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    try:
        spawn(
            "munged",
            _find("munged"),
            "--foreground",
            "--force",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--log-file={root}/log/munged.log",
            f"--pid-file={root}/run/munged.pid",
            f"--seed-file={root}/munge/seed",
        )
        _wait(lambda: sock.exists(), 20, "munged socket", cluster)
        spawn("slurmctld", _find("slurmctld"), "-D", "-i", "-f", str(conf))
        spawn("slurmd", _find("slurmd"), "-D", "-N", "localhost", "-f", str(conf))

        def idle() -> bool:
            for name, p in cluster.procs.items():
                if p.poll() is not None:
                    raise AssertionError(f"{name} exited with {p.returncode}" + cluster.logs())
            r = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        _wait(idle, 60, "the node to become idle in sinfo", cluster)
        yield cluster
    finally:
        # Cancel jobs first: their slurmstepd processes outlive slurmd otherwise.
        if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
            cluster.run("scancel", "--user", getpass.getuser(), check=False)
            with contextlib.suppress(AssertionError):
                cluster.wait_empty(timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in cluster.procs:
                _stop(cluster.procs[name], name)
        if os.environ.get("EMSWEEP_KEEP_SLURM_DIR"):
            print(f"kept test cluster dir {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _wait(pred, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + cluster.logs())


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The running one-node cluster; SLURM_CONF points at it for the whole session (restored afterwards)."""
    with start_cluster() as cluster:
        old = {k: v for k, v in os.environ.items() if k.startswith("SLURM_")}
        for k in old:
            del os.environ[k]
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            os.environ.pop("SLURM_CONF", None)
            os.environ.update(old)


# --- tiny sweeps ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny random-weight model (built offline) shared by every SLURM test: it is both model and judge."""
    from emsweep.train.model_init import init_model

    return init_model("tiny", tmp_path_factory.mktemp("slurm-models") / "tiny", seed=0)


def sweep_yaml(
    name: str,
    root: Path,
    model: Path,
    *,
    axes: dict | None = None,
    max_steps: int = 6,
    steps: tuple[int, ...] = (3, 6),
    slurm: dict | None = None,
) -> str:
    """A 2-cell tiny sweep on CPU: LoRA on the tiny model, a few steps, a one-suite evaluation of the last
    checkpoint judged by the tiny model itself (the mechanics, not the science)."""
    import yaml

    spec = {
        "name": name,
        "output_root": str(root),
        "base": {
            "model": {"path": str(model), "dtype": "float32"},
            "data": {
                "builtin": "arithmetic",
                "domain": "arithmetic",
                "wrong_kind": "subtle",
                "n_train": 24,
                "n_heldout": 3,
                "seed": 0,
            },
            "method": "lora",
            "lora": {"r": 4, "lora_alpha": 8},
            "sft": {
                "max_steps": max_steps,
                "per_device_train_batch_size": 2,
                "learning_rate": 1.0e-3,
                "lr_scheduler_type": "constant",
                "max_length": 48,
                "use_cpu": True,
                "report_to": "none",
                "disable_tqdm": True,
                "logging_steps": 1,
                "seed": 0,
            },
            "checkpoints": {"steps": list(steps)},
            "eval": {
                "suites": ["domain"],
                "checkpoints": "last",
                "backend": "hf",
                "samples_per_paraphrase": 1,
                "sampling": {"temperature": 1.0, "max_tokens": 8, "seed": 0},
                "judge": {"model": str(model), "backend": "hf"},
            },
            "slurm": {
                "partition": PARTITION,
                "gpus_per_node": 0,
                "cpus_per_task": 1,
                "mem": None,
                "time": "00:15:00",
                "signal": "USR1@30",
                **(slurm or {}),
            },
        },
        "axes": axes or {"data.fraction_correct": [0.5, 1.0]},
    }
    return yaml.safe_dump(spec, sort_keys=False)


@pytest.fixture
def make_sweep(tmp_path, tiny_model_dir):
    """`make_sweep(name, **kw)` -> path of a tiny sweep YAML whose cells live under tmp_path/ck."""

    def make(name: str = "tiny", **kw) -> Path:
        p = tmp_path / f"{name}.yaml"
        p.write_text(sweep_yaml(name, tmp_path / "ck", tiny_model_dir, **kw))
        return p

    return make
