"""``hpcrun doctor [OVERRIDES]``: before a week in the queue, whether hpcrun works on this cluster with this config.

Each check is one line, ok or what failed and what to do (docs/doctor.md):

- site: Slurm reachable (sinfo), accounting (sacct), the partition and the request against its limits (the same
  check a submission makes), the account and QOS among yours, JobRequeue, MaxArraySize, the partition's
  PreemptMode and GraceTime;
- storage: run_root writable, free space and inodes, the write bandwidth (64 MiB written and fsynced);
- grace: how long a stop gets to save (a preemption's GraceTime, the time limit's signal lead and KillWait) and,
  with the measured bandwidth, the largest checkpoint a preemption's grace can hold;
- probe (unless ``--no-probe``): a short job with the run's exact launch chain (sbatch, srun, the container, the
  ranks; :mod:`hpcrun.job.probe`) shows that the stop signal reaches python on every rank and that the job
  requeues; it is cancelled and its folder removed afterwards, whatever happened.

Login side: no torch.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

from hpcrun.errors import ConfigError, SubmissionError

PROBE_BYTES = 64 * 2**20
REQUEUED = ("PENDING", "REQUEUE_HOLD", "REQUEUED", "REQUEUE_FED")  # squeue's states of a job back in the queue


@dataclass
class Check:
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.message}"


def _ask(command: List[str]) -> Optional[str]:
    from hpcrun.slurm.site import _ask as ask

    return ask(command)


def site_checks(cfg: Any, site: Optional[dict] = None) -> List[Check]:
    """What Slurm itself says about this config (queries only). ``site`` (when given) receives the chosen
    partitions' fields (``partitions``) and ``scontrol show config``'s (``config``) for the checks after these."""
    from hpcrun.slurm.site import _user, check_request, parse_associations, parse_fields, parse_partitions, ASSOC_FORMAT

    c = cfg.cluster
    checks = []
    if _ask(["sinfo", "-h", "-o", "%P"]) is None:
        return [Check("slurm", False, "sinfo does not answer: no Slurm client here, or the controller is down "
                                      "(run doctor on a login node of the cluster)")]
    checks.append(Check("slurm", True, "the controller answers"))
    acct = _ask(["sacct", "-n", "-X", "-j", "1"])
    checks.append(Check("accounting", acct is not None, "sacct answers" if acct is not None else
                        "sacct does not answer: hpcrun status falls back to squeue and the runs' own files"))
    text = _ask(["scontrol", "--all", "--oneliner", "show", "partition"]) or ""
    partitions = parse_partitions(text)
    try:
        check_request(c, partitions)
        names = (c.partition or next((p.name for p in partitions.values() if p.default), "")).split(",")
        fields = [f for f in (parse_fields(line) for line in text.splitlines() if line.strip())
                  if f.get("PartitionName") in names]
        about = [f"{f.get('PartitionName')}: MaxTime {f.get('MaxTime')}, PreemptMode {f.get('PreemptMode')}, "
                 f"GraceTime {f.get('GraceTime')} s" for f in fields]
        if site is not None:
            site["partitions"] = fields
        checks.append(Check("partition", True, f"cluster.time={c.time} fits ({'; '.join(about) or 'default'})"))
    except ConfigError as exc:
        checks.append(Check("partition", False, str(exc)))
    assocs = parse_associations(_ask(["sacctmgr", "-n", "-P", "show", "user", _user(), "withassoc",
                                      f"format={ASSOC_FORMAT}"]) or "")
    if c.account:
        mine = sorted({a.account for a in assocs})
        ok = not assocs or c.account in mine
        checks.append(Check("account", ok, f"cluster.account={c.account!r}" + (
            " is yours" if ok else f" is not one of your accounts ({', '.join(mine)}): fix cluster.account")))
    elif assocs:
        checks.append(Check("account", True, f"your default account, {assocs[0].default_account}"))
    if c.qos:
        qos = (_ask(["sacctmgr", "-n", "-P", "show", "qos", "format=Name"]) or "").split()
        ok = not qos or c.qos in qos
        checks.append(Check("qos", ok, f"cluster.qos={c.qos!r}" + (
            " exists" if ok else f" does not exist (there are: {', '.join(qos)}): fix cluster.qos")))
    config = parse_fields(" ".join(f"{k.strip()}={v.strip()}" for k, _, v in (
        line.partition("=") for line in (_ask(["scontrol", "show", "config"]) or "").splitlines()) if v))
    if site is not None:
        site["config"] = config
    requeue = config.get("JobRequeue", "1")
    checks.append(Check("requeue", True, f"JobRequeue={requeue} (hpcrun always submits with --requeue); "
                                          f"MaxArraySize={config.get('MaxArraySize', '?')}"))
    return checks


def storage_checks(cfg: Any, site: Optional[dict] = None) -> List[Check]:
    """run_root: writable, free space and inodes, and how fast a save can be written there (into ``site``'s
    ``bandwidth``, bytes a second)."""
    root = Path(os.path.expanduser(cfg.cluster.run_root)).resolve()
    made = [p for p in (root, *root.parents) if not p.exists()]  # removed again: a check leaves nothing behind
    try:
        return _storage_check(cfg, root, site)
    finally:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def _storage_check(cfg: Any, root: Path, site: Optional[dict]) -> List[Check]:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".hpcrun-doctor-{os.getpid()}"
        block = os.urandom(2**20)
        began = time.monotonic()
        with probe.open("wb") as f:
            for _ in range(PROBE_BYTES // len(block)):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        seconds = max(time.monotonic() - began, 1e-6)
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or str(exc)
        return [Check("storage", False, f"cluster.run_root={cfg.cluster.run_root} is not writable ({why}): point it "
                                        "at your scratch space")]
    st = os.statvfs(root)
    free, inodes = st.f_bavail * st.f_frsize, st.f_favail
    rate = PROBE_BYTES / seconds / 1e6
    if site is not None:
        site["bandwidth"] = rate * 1e6
    ok = free > 2**30 and (inodes == 0 or inodes > 10_000)
    return [Check("storage", ok, f"{root}: writable, {free / 1e9:.1f} GB and {inodes:,} inodes free, writes at "
                  f"{rate:.0f} MB/s (fsynced)" + ("" if ok else ": too little space for checkpoints"))]


def _seconds(text: Any) -> Optional[int]:
    from hpcrun.slurm.site import _time

    digits = str(text or "").split()[0] if str(text or "").split() else ""
    return int(digits) if digits.isdigit() else _time(digits)


def grace_check(cfg: Any, site: dict) -> List[Check]:
    """How long a stop gets to save: on preemption the partition's GraceTime, at the time limit the signal's lead
    and KillWait; with the measured bandwidth, the largest checkpoint that fits in a preemption's grace."""
    c = cfg.cluster
    kill_wait = _seconds(site.get("config", {}).get("KillWait"))
    limit = (f"at the time limit cluster.signal={c.signal} comes cluster.signal_delay={c.signal_delay} before the end "
             f"(Slurm may send it up to 60 s early), SIGTERM at the end, SIGKILL "
             f"{'KillWait=%d s' % kill_wait if kill_wait is not None else 'KillWait'} later")
    preemptible = [(f.get("PartitionName"), _seconds(f.get("GraceTime")) or 0) for f in site.get("partitions", [])
                   if "REQUEUE" in str(f.get("PreemptMode", "")).upper()]
    if not preemptible:
        return [Check("grace", True, f"no preemption by requeue on {c.partition or 'the default partition'}; {limit}")]
    name, grace = min(preemptible, key=lambda p: p[1])
    rate = site.get("bandwidth")
    fits = (f": up to {grace * rate / 1e9:.1f} GB at the measured {rate / 1e6:.0f} MB/s (`hpcrun plan --bandwidth "
            f"{rate / 1e6:.0f}MB/s` gives this config's checkpoint size)") if rate else ""
    checkpoint = getattr(cfg, "checkpoint", None)
    periodic = checkpoint is not None and (checkpoint.save_every_auto or checkpoint.save_every_seconds())
    if grace == 0 and not periodic:
        return [Check("grace", False, f"{name} preempts with GraceTime 0 s: a preempted start is killed before it can "
                                      "save, and checkpoint.save_every is off; set checkpoint.save_every (auto, 30m) "
                                      "so a preemption loses at most that much")]
    return [Check("grace", True, f"a preemption on {name} leaves {grace} s (GraceTime) to save{fits}; {limit}")]


def probe_check(cfg: Any, timeout: float, say: Callable[[str], None] = lambda s: None) -> List[Check]:
    """Submits the probe job with ``cfg``'s launch chain; cancels it and removes its folder afterwards, and the
    folders made for it."""
    cfg = copy.deepcopy(cfg)
    root = Path(os.path.expanduser(cfg.cluster.run_root)).resolve()
    folder = root / ".hpcrun-doctor" / f"probe-{int(time.time())}-{os.getpid()}"
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        return _probe(cfg, folder, timeout, say)
    finally:
        for p in made[1:]:  # the probe's own folder is removed by the probe; then what was made for it
            try:
                p.rmdir()
            except OSError:
                break


def _probe(cfg: Any, folder: Path, timeout: float, say: Callable[[str], None]) -> List[Check]:
    from hpcrun.job.probe import Probe
    from hpcrun.slurm.client import run_slurm, submit_with_retries
    from hpcrun.slurm.sbatch import make_executor

    folder.mkdir(parents=True)
    cfg.run.dir, cfg.run.name, cfg.cluster.time = str(folder), "hpcrun-doctor", "10:00"
    cfg.cluster.signal_delay = "30s"
    ranks = cfg.cluster.nodes * (cfg.cluster.tasks_per_node or 1)
    name = f"SIG{cfg.cluster.signal}"
    began = time.monotonic()
    job = ""

    def files(prefix: str) -> List[Path]:
        return sorted(folder.glob(f"{prefix}-*"))

    def wait(condition: Callable[[], bool]) -> bool:
        while time.monotonic() - began < timeout:
            if condition():
                return True
            time.sleep(0.5)
        return False

    try:
        executor = make_executor(cfg)
        signals = list(dict.fromkeys([name, "SIGTERM"]))  # the run's stop signals on Slurm (hpcrun.job.signals)
        job = str(submit_with_retries(lambda: executor.submit(Probe(str(folder), signals, 60))).job_id)
        say(f"probe job {job} submitted; waiting for it to start (at most {timeout:.0f} s)")
        if not wait(lambda: len(files("ready")) >= ranks):
            return [Check("probe", False, f"job {job}: {len(files('ready'))} of {ranks} rank(s) started within "
                          f"{timeout:.0f} s (queue wait?): run doctor again later, or --no-probe")]
        sent = time.time()
        run_slurm(["scancel", f"--signal={cfg.cluster.signal}", job])
        wait(lambda: len(files("signal")) >= ranks or time.time() - sent > 30)
        got = {int(p.name.split("-")[1]): json.loads(p.read_text()) for p in files("signal")}
        missing = sorted(set(range(ranks)) - set(got))
        if missing:
            return [Check("probe", False, f"{name} did not reach python on rank(s) {missing} of job {job} within "
                          f"30 s: the launch chain loses it (a shell without exec in cluster.container or "
                          f"cluster.srun_args?); see docs/signals-and-containers.md")]
        late = max(g["t"] for g in got.values()) - sent
        if not wait(lambda: (folder / "requeue").exists()):
            return [Check("probe", False, f"job {job}: rank 0 got {name} but did not ask for the requeue")]
        asked = time.monotonic()

        def refused() -> bool:
            return (folder / "requeue").read_text() == "refused"

        def back_in_queue() -> bool:
            return (_ask(["squeue", "-h", "-j", job, "-o", "%T"]) or "").strip() in REQUEUED

        wait(lambda: refused() or back_in_queue() or time.monotonic() - asked > 60)
        requeued = not refused() and back_in_queue()
        took = time.monotonic() - began
        if not requeued:
            return [Check("probe", False, f"{name} reached python on all {ranks} rank(s), but job {job} did not "
                          "requeue: runs continue through follow-up jobs where scontrol requeue is refused; "
                          f"probe took {took:.0f} s")]
        return [Check("probe", True, f"{name} reached python on all {ranks} rank(s) in {late:.1f} s; the job "
                      f"requeued itself; probe took {took:.0f} s")]
    except SubmissionError as exc:
        return [Check("probe", False, f"sbatch refused the probe job: {exc}")]
    finally:
        if job:
            _ask(["scancel", job])
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()
        except OSError:
            pass


def doctor(cfg: Any, probe: bool, timeout: float, say: Callable[[str], None]) -> List[Check]:
    site: dict = {}
    checks = site_checks(cfg, site)
    checks += storage_checks(cfg, site)
    if site.get("partitions"):
        checks += grace_check(cfg, site)
    if probe and all(c.ok for c in checks if c.name in ("slurm", "partition", "account", "qos")):
        checks += probe_check(cfg, timeout, say)
    elif probe:
        checks.append(Check("probe", False, "not submitted: fix the failures above first"))
    return checks


def render_json(checks: List[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=1)


def draft_cluster(path: Path) -> str:
    """A cluster preset from what Slurm reports (partitions, GPU types from gres, MaxTime, the default account)."""
    import re

    from hpcrun.slurm.site import _user, parse_associations, parse_partitions, ASSOC_FORMAT

    partitions = parse_partitions(_ask(["scontrol", "--all", "--oneliner", "show", "partition"]) or "")
    if not partitions:
        raise SubmissionError("scontrol show partition did not answer: run this on a login node of the cluster")
    gres = _ask(["sinfo", "-h", "-o", "%G"]) or ""
    types = sorted({m.group(1) for m in re.finditer(r"gpu:([A-Za-z0-9_.-]+):(\d+)", gres)})
    per_node = max([int(m.group(1)) for m in re.finditer(r"gpu:(?:[A-Za-z0-9_.-]+:)?(\d+)", gres)] or [0])
    default = next((p.name for p in partitions.values() if p.default), next(iter(partitions)))
    longest = max((p.max_time for p in partitions.values() if p.max_time), default=None)
    assocs = parse_associations(_ask(["sacctmgr", "-n", "-P", "show", "user", _user(), "withassoc",
                                      f"format={ASSOC_FORMAT}"]) or "")
    from hpcrun.durations import format_slurm_time

    time_limit = min(48 * 3600, longest or 48 * 3600)
    account = assocs[0].default_account if assocs else None
    lines = [f"# Drafted by `hpcrun doctor --write-cluster {path}` from what Slurm reports; check it, then use "
             f"cluster={path.stem}.",
             f"# Partitions: {', '.join(partitions)}.", f"name: {path.stem}", "launcher: slurm",
             f"partition: {json.dumps(default)}", f"account: {json.dumps(account)}",
             f"time: {json.dumps(format_slurm_time(time_limit))}",
             f"max_time: {json.dumps(format_slurm_time(longest) if longest else None)}",
             f"gpu_types: {json.dumps(types)}", f"max_gpus_per_node: {per_node or 8}"]
    return "\n".join(lines) + "\n"
