"""The cluster's own limits, checked before anything is written or submitted.

Slurm accepts some requests it can never run (with ``EnforcePartLimits=NO``, its default, a job over the
partition's MaxTime or larger than the partition sits pending forever with reason ``PartitionTimeLimit`` or
``PartitionConfig``), and refuses others only after hpcrun made the run directory. So the submitting side asks the
site first:

* ONE ``scontrol --all --oneliner show partition`` call per submission (a run or a whole sweep): the partition
  exists (``cluster.partition``; unset: the partition marked ``Default=YES``), ``cluster.time`` is within its
  MaxTime, ``cluster.nodes`` within its nodes (TotalNodes, MaxNodes, MinNodes), and ``cluster.gpus_per_node`` within
  its GPUs (``gres/gpu`` of its TRES, over ``cluster.nodes`` nodes).
* ONE ``scontrol --all --oneliner show node`` call: the processes per node times ``cluster.cpus_per_task`` within
  the CPUs of the partition's largest node, and ``cluster.mem`` within its memory (RealMemory).
* For a sweep, ONE ``sacctmgr show user withassoc`` call: the points to submit fit the association's MaxSubmitJobs
  (each array task counts as a job), less the jobs already queued (one ``squeue`` call, only when there is a limit).

A query that fails (Slurm unreachable, not a Slurm machine) skips its check silently, after one attempt: sbatch,
with its own retries, then says what is wrong in its own words. ``hpcrun render`` never calls this: it works
without Slurm.

Submitting side: standard library only (no torch).
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpcrun.durations import format_slurm_time, parse_duration
from hpcrun.errors import ConfigError, SubmissionError
from hpcrun.slurm.sbatch import overcommits

_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=")
_UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "")
QUERY_TIMEOUT = 30  # seconds; a Slurm client gives up on an unreachable controller after about 9


def parse_fields(line: str) -> Dict[str, str]:
    """One ``scontrol -o`` record as ``{key: value}`` (values may hold spaces, as node OS= does)."""
    keys = list(_KEY.finditer(line))
    fields: Dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        fields[m.group(1)] = line[m.end():end].strip()
    return fields


def _count(text: Optional[str]) -> Optional[int]:
    """An integer field; None for UNLIMITED, empty or unreadable."""
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def _time(text: Optional[str]) -> Optional[int]:
    """A Slurm time field in seconds; None for UNLIMITED or unreadable."""
    text = (text or "").strip()
    if text.upper() in _UNLIMITED:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        return None


def _tres_gpus(tres: str) -> Optional[int]:
    """The untyped ``gres/gpu=N`` count of a TRES list (``cpu=2,mem=19284M,node=1,billing=2,gres/gpu=4``)."""
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "gres/gpu":
            return _count(value)
    return None


@dataclass(frozen=True)
class Partition:
    """What ``scontrol show partition`` says about one partition (None: unlimited or not known)."""

    name: str
    default: bool = False
    hidden: bool = False
    max_time: Optional[int] = None  # seconds
    total_nodes: Optional[int] = None
    max_nodes: Optional[int] = None
    min_nodes: int = 0
    gpus: Optional[int] = None  # GPUs in all, over every node (gres/gpu of TRES); None: GPUs not tracked

    @classmethod
    def from_fields(cls, f: Dict[str, str]) -> "Partition":
        return cls(
            name=f.get("PartitionName", ""),
            default=f.get("Default", "NO").upper() == "YES",
            hidden=f.get("Hidden", "NO").upper() == "YES",
            max_time=_time(f.get("MaxTime")),
            total_nodes=_count(f.get("TotalNodes")),
            max_nodes=_count(f.get("MaxNodes")),
            min_nodes=_count(f.get("MinNodes")) or 0,
            gpus=_tres_gpus(f.get("TRES", "")),
        )


@dataclass(frozen=True)
class Node:
    """What ``scontrol show node`` says about one node."""

    name: str
    cpus: Optional[int]
    memory_mb: Optional[int]
    partitions: Tuple[str, ...]


def parse_nodes(text: str) -> List[Node]:
    """``scontrol --oneliner show node`` output."""
    nodes = []
    for line in text.splitlines():
        if line.strip().startswith("NodeName="):
            f = parse_fields(line.strip())
            nodes.append(Node(f.get("NodeName", ""), _count(f.get("CPUTot")), _count(f.get("RealMemory")),
                              tuple(p for p in f.get("Partitions", "").split(",") if p)))
    return nodes


def memory_mb(text: str) -> Optional[int]:
    """``--mem`` as sbatch reads it (a number in megabytes, or with K, M, G or T) in megabytes; None: unreadable."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text).upper())
    if not m:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _node_problem(cluster: Any, names: List[str], nodes: List[Node], by_default: bool) -> Optional[ConfigError]:
    """Why no node of the partitions asked for can ever hold one node's share of the job: its CPUs (processes per
    node x cluster.cpus_per_task) and its memory (cluster.mem), both on the same node."""
    members = [n for n in nodes if set(n.partitions) & set(names)]
    where = ("the default partition " if by_default else "partition ") + ",".join(names)
    tasks = cluster.tasks_per_node or 1
    # --overcommit: Slurm allocates cpus_per_task per node, however many processes share them
    need_cpus = (1 if overcommits(cluster) else tasks) * cluster.cpus_per_task
    need_mb = memory_mb(cluster.mem) if cluster.mem else None
    if not members or any((n.cpus is None or n.cpus >= need_cpus) and
                          (need_mb is None or n.memory_mb is None or n.memory_mb >= need_mb) for n in members):
        return None
    cpus = [n.cpus for n in members if n.cpus is not None]
    if cpus and need_cpus > max(cpus):
        most = max(cpus)
        if cluster.cpus_per_task > most:
            return ConfigError("cluster.cpus_per_task", cluster.cpus_per_task,
                               f"at most {most} ({where}: its largest node has {most} CPUs)")
        return ConfigError("cluster.tasks_per_node", tasks,
                           f"at most {most // cluster.cpus_per_task} with cluster.cpus_per_task={cluster.cpus_per_task} "
                           f"({where}: its largest node has {most} CPUs)")
    mems = [n.memory_mb for n in members if n.memory_mb is not None]
    if mems and need_mb is not None and need_mb > max(mems):
        return ConfigError("cluster.mem", cluster.mem, f"at most {max(mems)}M ({where}: its largest node has "
                                                       f"{max(mems)} MB)")
    fits = max((n.memory_mb or 0) for n in members if (n.cpus or 0) >= need_cpus)
    return ConfigError("cluster.mem", cluster.mem, f"at most {fits}M with {need_cpus} CPUs per node ({where}: no "
                                                   f"node has both; the nodes with {need_cpus} CPUs have up to {fits} MB)")


def parse_partitions(text: str) -> Dict[str, Partition]:
    """``scontrol --oneliner show partition`` output as ``{name: Partition}``, in the order Slurm lists them."""
    parts = {}
    for line in text.splitlines():
        if line.strip().startswith("PartitionName="):
            p = Partition.from_fields(parse_fields(line.strip()))
            parts[p.name] = p
    return parts


def default_partition(partitions: Dict[str, Partition]) -> Optional[str]:
    """The partition a job without ``--partition`` goes to: the one marked ``Default=YES`` (None: none is)."""
    return next((p.name for p in partitions.values() if p.default), None)


def _partition_names(cluster: Any, partitions: Dict[str, Partition]) -> Tuple[List[str], bool]:
    """The partitions the job asks for (``a,b`` is a list: the job runs in whichever starts it first), and whether
    they are the site default. Raises ConfigError for a partition the site does not have."""
    if cluster.partition is None or not str(cluster.partition).strip():
        default = default_partition(partitions)
        return ([default] if default else []), True
    names = [n.strip() for n in str(cluster.partition).split(",") if n.strip()]
    for n in names:
        if n not in partitions:
            raise ConfigError("cluster.partition", cluster.partition,
                              choices=[p.name for p in partitions.values() if not p.hidden],
                              hint="`sinfo -s` lists them")
    return names, False


def _request_problem(p: Partition, cluster: Any, by_default: bool) -> Optional[ConfigError]:
    """Why partition ``p`` can never run this request (None: it can, as far as its limits tell)."""
    where = ("the default partition " if by_default else "partition ") + p.name
    # Slurm limits are whole minutes and sbatch rounds a time limit up to one.
    # An explicit QOS may lift the partition's MaxTime (Flags=PartitionTimeLimit); hpcrun does not ask the QOS.
    minutes = -(-cluster.time_seconds() // 60)
    if p.max_time is not None and minutes * 60 > p.max_time and cluster.qos is None:
        return ConfigError("cluster.time", cluster.time,
                           f"at most {format_slurm_time(p.max_time)} (MaxTime of {where})")
    node_limits = [n for n in (p.total_nodes, p.max_nodes) if n is not None]
    most_nodes = min(node_limits) if node_limits else None
    if most_nodes is not None and cluster.nodes > most_nodes:
        why = (f"MaxNodes of {where}" if p.max_nodes == most_nodes and p.max_nodes != p.total_nodes
               else f"{where} has {p.total_nodes} node{'s' if p.total_nodes != 1 else ''}")
        return ConfigError("cluster.nodes", cluster.nodes, f"at most {most_nodes} ({why})")
    if cluster.nodes < p.min_nodes:
        return ConfigError("cluster.nodes", cluster.nodes, f"at least {p.min_nodes} (MinNodes of {where})")
    if cluster.gpus_per_node and p.gpus is not None:
        fits = p.gpus // max(1, cluster.nodes)
        if cluster.gpus_per_node > fits:
            nodes = f"{p.total_nodes} node{'s' if p.total_nodes != 1 else ''}" if p.total_nodes else "its nodes"
            also = f" with cluster.nodes={cluster.nodes}" if cluster.nodes > 1 else ""
            return ConfigError("cluster.gpus_per_node", cluster.gpus_per_node,
                               f"at most {fits}{also} ({where} has {p.gpus} GPUs on {nodes})")
    return None


def check_request(cluster: Any, partitions: Dict[str, Partition]) -> None:
    """Raises ConfigError when no partition the job asks for can ever run it; with a partition list, one that
    can is enough (the first one's reason is given)."""
    names, by_default = _partition_names(cluster, partitions)
    problems = [_request_problem(partitions[n], cluster, by_default) for n in names]
    if problems and all(problems):
        raise problems[0]


@dataclass(frozen=True)
class Association:
    """One row of ``sacctmgr show user withassoc``: the user's limits in one account (and partition)."""

    cluster: str
    default_account: str
    account: str
    partition: str
    max_submit: Optional[int]  # MaxSubmitJobs, inherited from the parent accounts where not set on the row
    grp_submit: Optional[int]  # GrpSubmitJobs set on the user's own association

    @property
    def limit(self) -> Optional[int]:
        limits = [n for n in (self.max_submit, self.grp_submit) if n is not None]
        return min(limits) if limits else None


ASSOC_FORMAT = "Cluster,DefaultAccount,Account,Partition,MaxSubmit,GrpSubmit"


def parse_associations(text: str) -> List[Association]:
    """``sacctmgr -n -P show user NAME withassoc format=ASSOC_FORMAT`` output."""
    rows = []
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) >= 6 and cells[2]:
            rows.append(Association(cells[0], cells[1], cells[2], cells[3], _count(cells[4]), _count(cells[5])))
    return rows


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")


def _job_limit(assocs: List[Association], account: str, partition: Optional[str]) -> Optional[Association]:
    """The association whose limit a job in ``account`` and ``partition`` counts against: the partition's own row,
    else the account's. Several clusters in one database: the most generous (hpcrun does not know which it is)."""
    rows = [a for a in assocs if a.account == account and a.partition == (partition or "")] or [
        a for a in assocs if a.account == account and not a.partition]
    if not rows or any(a.limit is None for a in rows):
        return None
    return max(rows, key=lambda a: a.limit or 0)


def check_job_limit(cfgs: Sequence[Any], partitions: Optional[Dict[str, Partition]]) -> None:
    """Raises ConfigError when the jobs about to be submitted (one per config; an array task is a job) do not fit
    the user's MaxSubmitJobs, counting the user's jobs already queued. No limit, or no answer: nothing to check."""
    user = _user()
    out = _ask(["sacctmgr", "-n", "-P", "show", "user", user, "withassoc", f"format={ASSOC_FORMAT}"])
    assocs = parse_associations(out or "")
    if not assocs:
        return
    default = partitions and default_partition(partitions)
    groups: Dict[Tuple[str, str], List[Any]] = {}
    for cfg in cfgs:
        account = cfg.cluster.account or assocs[0].default_account
        groups.setdefault((account, cfg.cluster.partition or default or ""), []).append(cfg)
    limited = []
    for (account, partition), members in groups.items():
        assoc = _job_limit(assocs, account, partition)
        if assoc is not None:
            limited.append((assoc, members))
    if not limited:
        return
    queued = _ask(["squeue", "-h", "-r", "-u", user, "-o", "%a|%P"])
    jobs = [tuple(line.split("|", 1)) for line in (queued or "").splitlines() if "|" in line]
    for assoc, members in limited:
        already = sum(1 for acct, part in jobs if acct == assoc.account and (
            not assoc.partition or assoc.partition in part.split(",")))
        if already + len(members) > (assoc.limit or 0):
            cluster = members[0].cluster
            value = cluster.account or assoc.account
            mine = "" if cluster.account else "(your default account) "
            part = f" in partition {assoc.partition}" if assoc.partition else ""
            kind = "MaxSubmitJobs" if assoc.limit == assoc.max_submit else "GrpSubmitJobs"
            raise ConfigError(
                "cluster.account", value,
                problem=f"{mine}allows user {user} at most {assoc.limit} queued or running jobs{part} ({kind}; "
                        f"each array task counts as one), {already} already queued: this sweep would submit "
                        f"{len(members)}",
                hint="sweep fewer points at a time, or wait for queued jobs to end")


def _ask(command: List[str]) -> Optional[str]:
    """A Slurm query's output, or None when it failed: the check it serves is then skipped.

    ONE attempt, not run_slurm's retries: while the controller is away, retrying here would only double the wait
    before sbatch's own retries (which decide whether the job goes in); a check that could not ask steps aside.
    """
    from hpcrun.slurm.client import run_slurm

    try:
        return run_slurm(command, attempts=1, timeout=QUERY_TIMEOUT)
    except SubmissionError:
        return None


def check_site_limits(cfgs: Sequence[Any], sweep: bool = False) -> Optional[Dict[str, Partition]]:
    """Checks the configs about to be submitted against the cluster's partitions (one scontrol call in all) and,
    for a sweep, against the user's job limit. Raises ConfigError naming the key and value; never for a query
    that failed. Returns the partitions it read (None: no answer), for :func:`check_job_limit` later."""
    cfgs = [c for c in cfgs if c.cluster.launcher == "slurm"]
    if not cfgs:
        return None
    out = _ask(["scontrol", "--all", "--oneliner", "show", "partition"])
    partitions = parse_partitions(out) if out else None
    if partitions:
        seen = set()
        for cfg in cfgs:
            c = cfg.cluster
            key = (c.partition, c.time, c.nodes, c.gpus_per_node, c.qos)
            if key not in seen:
                seen.add(key)
                check_request(c, partitions)
        node_out = _ask(["scontrol", "--all", "--oneliner", "show", "node"])
        nodes = parse_nodes(node_out) if node_out else []
        seen = set()
        for cfg in cfgs if nodes else []:
            c = cfg.cluster
            key = (c.partition, c.tasks_per_node, c.cpus_per_task, c.mem)
            if key not in seen:
                seen.add(key)
                names, by_default = _partition_names(c, partitions)
                problem = _node_problem(c, names, nodes, by_default)
                if problem is not None:
                    raise problem
    if sweep:
        check_job_limit(cfgs, partitions)
    return partitions
