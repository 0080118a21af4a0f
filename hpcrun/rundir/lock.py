"""One owner per run at a time: the start that trains it, or the command that is launching it.

Two processes writing one run directory overwrite each other's checkpoints and state (two local runs of the same
command; a local run beside its Slurm job; two ``hpcrun`` commands started together, each submitting a job). The
owner holds an advisory lock (``flock``) on ``<run.dir>/.hpcrun-lock`` for as long as it owns the run, and writes
who it is into the file, so the second one is refused with one line saying who holds it.

The kernel drops an ``flock`` when its holder dies (kill -9, OOM, a node failure on a local disk; on NFS the
server does once the client is gone), so a lock left by a dead process never blocks the next start. On a
filesystem without ``flock`` (some parallel filesystems mounted without it) the run goes on unlocked, with a
warning: the lock protects against mistakes, it is not what makes saves safe.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hpcrun.errors import UserError
from hpcrun.rundir.layout import RunDir

log = logging.getLogger("hpcrun")


# Who holds a run's lock: a start training it (for its life), or an hpcrun command deciding about it and submitting
# (for seconds; a start that finds it waits).
START = "the job's start"
LAUNCHING = "hpcrun launching it"


class RunBusy(UserError):
    """Another process owns the run right now."""


def _holder_text(holder: Dict[str, Any]) -> str:
    where = f"{holder.get('what', 'a process')} on {holder.get('host', '?')} (pid {holder.get('pid', '?')}"
    if holder.get("job_id"):
        where += f", Slurm job {holder['job_id']}"
    return where + ")"


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``): pids mean the same thing only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _boot_id() -> str:
    """This boot of this machine (Linux); two hosts, or one host before and after a reboot, never share one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int | str) -> Optional[Tuple[str, int]]:
    """(state letter, start in clock ticks since boot) of a process, from /proc; None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def start_ticks(pid: int | str = "self") -> Optional[int]:
    """A process's start in clock ticks since boot: with its pid (and this boot) it names one process."""
    stat = _stat(pid)
    return stat[1] if stat else None


def process_start_time(pid: int | str = "self") -> Optional[float]:
    """When a process started, as a Unix time (Linux: /proc, to its 10 ms ticks; None elsewhere, or when it is
    gone). The start is counted in ticks since boot; the time since boot is read now (CLOCK_BOOTTIME), not from
    /proc/stat's btime, which is whole seconds."""
    stat = _stat(pid)
    try:
        since_boot = stat[1] / os.sysconf("SC_CLK_TCK") if stat else None
        return None if since_boot is None else time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, AttributeError):
        return None


def _holder_of_this_host(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run lock's last holder when its pid means something here: written by a process of this boot of this
    host, in this PID namespace, by an hpcrun that records start ticks. Read-only."""
    holder = RunLock(run_dir, "").holder_now(wait=0.0)
    if (not isinstance(holder.get("pid"), int) or not isinstance(holder.get("start_ticks"), int)
            or not holder.get("boot_id") or holder.get("boot_id") != _boot_id()
            or holder.get("pid_namespace") != _pid_namespace()):
        return None
    return holder


def holder_gone(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run lock's last holder, when it is known to have ended without a word: a process of this boot of this
    host, in this PID namespace, that no longer runs (its pid gone, a zombie, or taken by a newer process: another
    start time), and no process of the command it ran is left either. No clock is read: a start time is the
    kernel's ticks since boot. Read-only: it never takes the lock, so it cannot delay a start that is taking it.

    None when the holder may be alive, or nobody can tell from here: another host (a Slurm job's node: Slurm
    knows), another PID namespace (a container with its own), /proc hiding other users' processes, or a lock file
    written by an older hpcrun.
    """
    holder = _holder_of_this_host(run_dir)
    if holder is None:
        return None
    pid, ticks = holder["pid"], holder["start_ticks"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None if command_processes(run_dir) else holder
    except PermissionError:
        pass  # it exists (another user's): alive, unless its pid was taken by a newer process (below)
    stat = _stat(pid)
    if stat is None:  # gone between the two looks (the next look tells), or /proc hides it (hidepid)
        return None
    if stat[1] == ticks and stat[0] not in ("Z", "X"):
        return None
    return None if command_processes(run_dir) else holder


def holder_here(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run lock's last holder when it is a live process of this host (this boot, this PID namespace: the same
    pid with the same start ticks, not a zombie), that ``os.kill`` can reach; None otherwise: gone, on another
    host, in another PID namespace, or unknown (a lock file written by an older hpcrun). The holder may have
    released the lock and gone on (a local sweep's process, on its next point): the caller checks that the run is
    still running. Read-only, as :func:`holder_gone`."""
    holder = _holder_of_this_host(run_dir)
    if holder is None:
        return None
    pid, ticks = holder["pid"], holder["start_ticks"]
    stat = _stat(pid)
    if stat is None or stat[1] != ticks or stat[0] in ("Z", "X"):
        return None
    return holder


def command_processes(run_dir: Path) -> List[int]:
    """This user's processes of a command hpcrun ran for the run (``HPCRUN_RUN_DIR`` in their environment,
    hpcrun.tasks.command): they may outlive hpcrun (torchrun's workers, in their own session, after a closed
    terminal killed hpcrun), and go on training and saving."""
    wanted = {f"HPCRUN_RUN_DIR={d}".encode() for d in (str(run_dir), os.path.realpath(run_dir))}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if wanted.intersection(env):
            found.append(int(entry.name))
    return found


class RunLock:
    """The lock of one run directory.

    Args:
        run_dir: the run directory (created if missing: the lock file lives in it).
        what: who takes it, for the other side's message ("the job's start", "hpcrun launching it").
        job_id: this process's Slurm job, if any.
    """

    def __init__(self, run_dir: Path, what: str, job_id: Optional[str] = None) -> None:
        self.path = RunDir(run_dir).lock
        self.holder = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "job_id": job_id,
                       "since": time.time(), "pid_namespace": _pid_namespace(), "boot_id": _boot_id(),
                       "start_ticks": (_stat("self") or ("", None))[1]}
        self._fd: Optional[int] = None

    def holder_now(self, wait: float = 1.0) -> Dict[str, Any]:
        """Who wrote the lock file last (the holder, while it is held).

        A holder writes itself into the file just after it took the lock: a process that finds the lock taken in
        between reads an empty file. So an empty or torn file is read again, for up to ``wait`` seconds (found on a
        fresh machine: two launches of one run started together, the second said "in use by a process on ?").
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                data = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                data = {}
            if (isinstance(data, dict) and data) or time.monotonic() >= deadline:
                return data if isinstance(data, dict) else {}
            time.sleep(0.02)

    def acquire(self, wait: float = 0.0) -> "RunLock":
        """Takes the lock, waiting up to ``wait`` seconds for it.

        Raises:
            RunBusy: another process holds it; the message says who.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    log.warning("%s: this filesystem refuses locks (%s); going on unlocked", self.path, exc)
                    os.close(fd)
                    return self
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunBusy(f"{self.path.parent} is in use by {_holder_text(self.holder_now())}: two processes "
                              "must not train one run at once; wait until it ends (hpcrun status), or cancel it")
            time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
