"""Helpers for tests that talk to the real dev Slurm cluster."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from typing import Iterator

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE"}


def job_id_from(stdout: str) -> str:
    m = re.search(r"submitted Slurm job (\d+)", stdout)
    assert m, f"no job id in hpcrun's output:\n{stdout}"
    return m.group(1)


def sacct_state(job_id: str) -> str:
    """The job's state in accounting ('' until slurmdbd has it)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, timeout=30)
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[-1].split()[0] if lines else ""


def wait_for_end(job_id: str, timeout: float = 420) -> str:
    """Polls sacct until the job reaches a terminal state; returns it."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(job_id)
        if state in TERMINAL:
            return state
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still {state or 'unknown'} after {timeout} s")


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def sacct_runs(job_id: str) -> list:
    """The state of every run of the job (-D: each requeue is a row), oldest first."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, timeout=30)
    return [ln.split()[0].rstrip("+") for ln in out.stdout.splitlines() if ln.strip()]


def wait_for_run_end(job_id: str, run: int, timeout: float = 420) -> str:
    """Polls sacct until the job's ``run``-th run (1: its first; each requeue adds one) has a terminal record;
    returns that run's state.

    Unlike :func:`wait_for_end`, an earlier run's record is never taken for the end. After a node failure Slurm
    requeues the job, and until the requeued run starts, sacct's latest line for the job is still the failed run's
    NODE_FAIL (a terminal state) while the job itself is pending again.
    """
    deadline = time.monotonic() + timeout
    runs: list = []
    while time.monotonic() < deadline:
        runs = sacct_runs(job_id)
        if len(runs) >= run and runs[run - 1] in TERMINAL:
            return runs[run - 1]
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"run {run} of job {job_id} did not end within {timeout} s (sacct -D: {runs}, "
                         f"squeue: {squeue_state(job_id)!r})")


def release_when_requeued(job_id: str, timeout: float = 180) -> None:
    """Waits for the requeued job to be pending again, then skips Slurm's ~120 s requeue hold.

    Not in the same second as the requeue: slurmd refuses a credential created in the second its job's old one was
    revoked ("Job credential revoked", and the job FAILS). Slurm's own hold is what normally keeps them apart.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if squeue_state(job_id) == "PENDING":
            time.sleep(2.5)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} was not requeued within {timeout} s (squeue: {squeue_state(job_id)!r}, "
                         f"sacct -D: {sacct_runs(job_id)})")


def task_pids(job_id: str, rank: int) -> list:
    """PIDs of the job's python processes of one rank (found by their SLURM_* environment)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
            cmd = (proc / "cmdline").read_text()
        except (OSError, ValueError):
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(rank) and "submitit" in cmd:
            pids.append(int(proc.name))
    return pids


def counting_shims(tmp_path, *commands: str) -> dict:
    """PATH shims that log each call of the given Slurm commands, then run the real ones.

    Returns the environment to pass to hpcrun; ``calls(tmp_path, "sbatch")`` counts them afterwards.
    """
    import os
    import shutil

    shim_dir = tmp_path / "shims"
    shim_dir.mkdir(exist_ok=True)
    for name in commands:
        real = shutil.which(name)
        shim = shim_dir / name
        shim.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/{name}.calls"\nexec "{real}" "$@"\n')
        shim.chmod(0o755)
    return {"PATH": f"{shim_dir}:{os.environ['PATH']}"}


def calls(tmp_path, name: str) -> list:
    path = tmp_path / f"{name}.calls"
    return path.read_text().splitlines() if path.exists() else []


def node_cpus() -> str:
    """The dev cluster node's CPU count (a job that takes them all is preempted by any job that needs one)."""
    return subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()[0]


def node_memory_mb() -> int:
    """The dev cluster node's memory in MB (its RealMemory: 80 % of the machine's, so it differs between machines)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def preempt_at_step(job_id: str, run_dir, step: int) -> None:
    """Once the run (on the preemptible partition, holding every CPU) logged ``step``: a job on the higher-priority
    normal partition that needs the CPUs preempts it (SIGTERM, GraceTime=15); then skip the requeue hold."""
    from tests.training import wait_for_step

    wait_for_step(run_dir, step)
    high = subprocess.run(["sbatch", "--parsable", "-p", "normal", "-c", node_cpus(), "-o", "/dev/null", "--wrap",
                           "sleep 2"], capture_output=True, text=True, check=True).stdout.strip()
    assert wait_for_end(high, timeout=120) == "COMPLETED"
    release_when_requeued(job_id)


def timeout_signal_at_step(job_id: str, run_dir, step: int) -> None:
    """Once the run logged `step`: the time-limit warning (`scancel --signal=USR2`), then skip the requeue hold."""
    from tests.training import wait_for_step

    wait_for_step(run_dir, step)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    release_when_requeued(job_id)


def daemon_running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def restart_cluster() -> None:
    """Starts whatever daemon of the dev cluster is down (idempotent), and waits for a usable node."""
    from pathlib import Path

    from tests.training import wait_until

    script = Path(__file__).resolve().parents[1] / "scripts" / "dev-cluster"
    subprocess.run([str(script), "up"], check=True, capture_output=True, timeout=180)
    wait_until(lambda: subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
               .stdout.strip().startswith(("idle", "mixed", "alloc", "planned")), 60, "a usable node")


@contextlib.contextmanager
def daemon_stopped(name: str) -> Iterator[None]:
    """Kills a Slurm daemon (as a crash would) for the body of the block; the cluster is whole again after it."""
    from tests.training import wait_until

    subprocess.run(["pkill", "-x", name])
    wait_until(lambda: not daemon_running(name), 30, f"{name} to stop")
    try:
        yield
    finally:
        restart_cluster()


def stand_in_runtime(path, calls, before_exec: str = "") -> None:
    """Writes a stand-in for `singularity exec [--nv] [--overlay X] [--bind X] IMAGE CMD...` at ``path``: it logs its
    arguments to ``calls`` and runs CMD on the host, as the real runtime runs it in the container, with exec (so the
    signal chain is the wrapper's own), after the shell lines ``before_exec`` (e.g. a PATH without Slurm)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
shift  # exec
while [[ "$1" == --* ]]; do
  case "$1" in --nv) shift ;; *) shift 2 ;; esac
done
shift  # the image
{before_exec}
exec "$@"
""")
    path.chmod(0o755)
