"""The site's own limits (hpcrun/slurm/site.py), from real Slurm output captured on the dev cluster
(Slurm 22.05, 2026-11-25); no Slurm needed to run these."""

import re
from types import SimpleNamespace

import pytest

from hpcrun.config.schema import ClusterConfig
from hpcrun.errors import ConfigError
from hpcrun.slurm import site as site_limits
from hpcrun.slurm.site import (check_job_limit, check_request, check_site_limits, default_partition,
                                       parse_associations, parse_fields, parse_partitions)

# `scontrol --all --oneliner show partition` on the dev cluster.
PARTITIONS = """\
PartitionName=normal AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=7-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=10 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=19284M,node=1,billing=2,gres/gpu=4
PartitionName=preemptible AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=15 Hidden=NO MaxNodes=UNLIMITED MaxTime=7-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=REQUEUE State=UP TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=19284M,node=1,billing=2,gres/gpu=4
"""
# `scontrol show node -o` on the dev cluster: values with spaces (OS=) and a typed Gres.
NODE = ("NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=1.25 "
        "AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:a100:4 NodeAddr=vm NodeHostName=vm Version=22.05.8 "
        "OS=Linux 6.18.44-fc-v782 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=19284 AllocMem=0 FreeMem=22833 Sockets=2 "
        "Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=normal,preemptible"
        "  CfgTRES=cpu=2,mem=19284M,billing=2,gres/gpu=4 AllocTRES= CapWatts=n/a")
# `sacctmgr -n -P show user root withassoc format=Cluster,DefaultAccount,Account,Partition,MaxSubmit,GrpSubmit`
# after `sacctmgr add account hpcrun-limit-probe` and `add user root account=hpcrun-limit-probe MaxSubmitJobs=3`.
ASSOCIATIONS = """\
hpcrun-dev|root|hpcrun-limit-probe||3|
hpcrun-dev|root|root|||
"""
DAY = 86400


def _cluster(**kw):
    c = ClusterConfig(name="slurm", launcher="slurm", **kw)
    c.check()
    return c


def _big(**changes):
    """A made-up 4-node, 16-GPU partition, written as scontrol writes it."""
    line = PARTITIONS.splitlines()[0].replace("TotalNodes=1", "TotalNodes=4").replace("gres/gpu=4", "gres/gpu=16")
    for key, value in changes.items():
        line = re.sub(rf" {key}=\S*", f" {key}={value}", line)
    return parse_partitions(line)


def test_the_dev_clusters_partitions_are_read():
    parts = parse_partitions(PARTITIONS)
    assert list(parts) == ["normal", "preemptible"]
    normal = parts["normal"]
    assert (normal.default, normal.hidden, normal.max_time, normal.total_nodes, normal.max_nodes, normal.min_nodes,
            normal.gpus) == (True, False, 7 * DAY, 1, None, 0, 4)
    assert not parts["preemptible"].default
    assert default_partition(parts) == "normal"
    assert default_partition(parse_partitions(PARTITIONS.replace("Default=YES", "Default=NO"))) is None


def test_fields_may_hold_spaces_and_unlimited_reads_as_no_limit():
    fields = parse_fields(NODE)
    assert fields["Gres"] == "gpu:a100:4" and fields["OS"] == "Linux 6.18.44-fc-v782 #1 SMP PREEMPT_DYNAMIC @0"
    assert fields["CfgTRES"] == "cpu=2,mem=19284M,billing=2,gres/gpu=4" and fields["AllocTRES"] == ""
    unlimited = parse_partitions(PARTITIONS.replace("MaxTime=7-00:00:00", "MaxTime=UNLIMITED"))["normal"]
    assert unlimited.max_time is None
    check_request(_cluster(time="30-00:00:00"), {"normal": unlimited})  # no limit: nothing refused
    no_gpus = parse_partitions(PARTITIONS.replace(",gres/gpu=4", ""))
    assert no_gpus["normal"].gpus is None  # GPUs not tracked: not checked
    check_request(_cluster(gpus_per_node=8), no_gpus)


def test_a_request_the_partition_can_run_passes():
    parts = parse_partitions(PARTITIONS)
    check_request(_cluster(), parts)
    check_request(_cluster(time="7-00:00:00", gpus_per_node=4), parts)
    check_request(_cluster(partition="preemptible", nodes=1, gpus_per_node=4), parts)


@pytest.mark.parametrize("kw, message", [
    (dict(time="8-00:00:00"),
     "cluster.time='8-00:00:00' is invalid: expected at most 7-00:00:00 (MaxTime of the default partition normal)"),
    # Slurm's limits are whole minutes and sbatch rounds up: 30 s over is a minute over.
    (dict(time="7-00:00:30", partition="preemptible"),
     "cluster.time='7-00:00:30' is invalid: expected at most 7-00:00:00 (MaxTime of partition preemptible)"),
    (dict(nodes=2), "cluster.nodes=2 is invalid: expected at most 1 (the default partition normal has 1 node)"),
    (dict(gpus_per_node=8),
     "cluster.gpus_per_node=8 is invalid: expected at most 4 (the default partition normal has 4 GPUs on 1 node)"),
    (dict(partition="nope"),
     "cluster.partition='nope' is invalid; valid choices: normal, preemptible; `sinfo -s` lists them"),
    (dict(partition="normal,nope"), "cluster.partition='normal,nope' is invalid; valid choices: normal, preemptible"),
])
def test_a_request_the_partition_can_never_run_names_the_key_the_value_and_the_limit(kw, message):
    with pytest.raises(ConfigError) as err:
        check_request(_cluster(**kw), parse_partitions(PARTITIONS))
    assert str(err.value).startswith(message)


def test_several_partitions_one_that_can_run_it_is_enough():
    parts = parse_partitions(PARTITIONS)
    parts["long"] = parse_partitions(PARTITIONS.splitlines()[1].replace("preemptible", "long").replace(
        "MaxTime=7-00:00:00", "MaxTime=14-00:00:00"))["long"]
    check_request(_cluster(partition="normal,long", time="10-00:00:00"), parts)
    with pytest.raises(ConfigError, match="MaxTime of partition normal"):
        check_request(_cluster(partition="normal,preemptible", time="10-00:00:00"), parts)


def test_a_hidden_partition_is_accepted_but_not_offered():
    parts = parse_partitions(PARTITIONS.replace("Hidden=NO", "Hidden=YES", 1))
    check_request(_cluster(partition="normal"), parts)
    with pytest.raises(ConfigError, match="valid choices: preemptible;"):
        check_request(_cluster(partition="nope"), parts)


def test_multi_node_partitions_count_gpus_over_the_nodes_asked_for_and_maxnodes():
    check_request(_cluster(nodes=4, gpus_per_node=4), _big())
    with pytest.raises(ConfigError) as err:
        check_request(_cluster(nodes=4, gpus_per_node=5), _big())
    assert str(err.value) == ("cluster.gpus_per_node=5 is invalid: expected at most 4 with cluster.nodes=4 (the "
                              "default partition normal has 16 GPUs on 4 nodes)")
    with pytest.raises(ConfigError, match=r"cluster.nodes=3 is invalid: expected at most 2 \(MaxNodes of the default"):
        check_request(_cluster(nodes=3), _big(MaxNodes="2"))
    with pytest.raises(ConfigError, match=r"cluster.nodes=1 is invalid: expected at least 2 \(MinNodes"):
        check_request(_cluster(nodes=1), _big(MinNodes="2"))


def test_an_explicit_qos_may_lift_the_partitions_time_limit_so_time_is_not_checked():
    # A QOS with Flags=PartitionTimeLimit overrides the partition's MaxTime; hpcrun does not ask the QOS.
    check_request(_cluster(time="8-00:00:00", qos="long"), parse_partitions(PARTITIONS))


def test_no_default_partition_and_none_asked_for_checks_nothing():
    check_request(_cluster(time="30-00:00:00"), parse_partitions(PARTITIONS.replace("Default=YES", "Default=NO")))


def test_associations_are_read():
    rows = parse_associations(ASSOCIATIONS)
    assert [(a.cluster, a.default_account, a.account, a.partition, a.max_submit, a.limit) for a in rows] == [
        ("hpcrun-dev", "root", "hpcrun-limit-probe", "", 3, 3), ("hpcrun-dev", "root", "root", "", None, None)]
    assert parse_associations(ASSOCIATIONS.replace("||3|", "||3|2"))[0].limit == 2  # GrpSubmitJobs on the row


def _fake_slurm(monkeypatch, answers):
    """site_limits' Slurm queries answered from `answers` ({command word: output or None}); returns the calls."""
    asked = []

    def ask(command):
        asked.append(command[0])
        return answers.get(command[0])

    monkeypatch.setattr(site_limits, "_ask", ask)
    monkeypatch.setattr(site_limits, "_user", lambda: "root")
    return asked


def _points(n, **kw):
    return [SimpleNamespace(cluster=_cluster(**kw)) for _ in range(n)]


def test_a_sweep_over_the_job_limit_is_refused_counting_jobs_already_queued(monkeypatch):
    asked = _fake_slurm(monkeypatch, {"sacctmgr": ASSOCIATIONS, "squeue": "root|normal\n"})
    parts = parse_partitions(PARTITIONS)
    check_job_limit(_points(3, account="hpcrun-limit-probe"), parts)  # exactly the limit
    with pytest.raises(ConfigError) as err:
        check_job_limit(_points(5, account="hpcrun-limit-probe"), parts)
    assert str(err.value) == (
        "cluster.account='hpcrun-limit-probe' allows user root at most 3 queued or running jobs (MaxSubmitJobs; "
        "each array task counts as one), 0 already queued: this sweep would submit 5; sweep fewer points at a time, "
        "or wait for queued jobs to end")
    check_job_limit(_points(50), parts)  # the default account, root, has no limit
    assert asked == ["sacctmgr", "squeue", "sacctmgr", "squeue", "sacctmgr"]  # squeue only when there is a limit
    _fake_slurm(monkeypatch, {"sacctmgr": ASSOCIATIONS,
                              "squeue": "hpcrun-limit-probe|normal\nhpcrun-limit-probe|normal\nroot|normal\n"})
    with pytest.raises(ConfigError, match="at most 3 queued or running jobs .*, 2 already queued: this sweep would "
                                          "submit 2"):
        check_job_limit(_points(2, account="hpcrun-limit-probe"), parts)


def test_the_default_account_and_a_partitions_own_association_are_used(monkeypatch):
    rows = "hpcrun-dev|lab|lab||10|\nhpcrun-dev|lab|lab|preemptible|2|\n"
    _fake_slurm(monkeypatch, {"sacctmgr": rows, "squeue": ""})
    parts = parse_partitions(PARTITIONS)
    check_job_limit(_points(10), parts)
    with pytest.raises(ConfigError) as err:
        check_job_limit(_points(3, partition="preemptible"), parts)
    assert str(err.value).startswith("cluster.account='lab' (your default account) allows user root at most 2 queued "
                                     "or running jobs in partition preemptible (MaxSubmitJobs;")


def test_unreachable_slurm_skips_the_checks(monkeypatch):
    asked = _fake_slurm(monkeypatch, {})  # every query fails
    check_site_limits(_points(5, time="30-00:00:00", nodes=9, account="hpcrun-limit-probe"), sweep=True)
    assert asked == ["scontrol", "sacctmgr"]


def test_one_partition_query_for_a_whole_sweep_and_none_for_a_local_run(monkeypatch):
    asked = _fake_slurm(monkeypatch, {"scontrol": PARTITIONS, "sacctmgr": ASSOCIATIONS, "squeue": ""})
    check_site_limits(_points(3) + _points(2, partition="preemptible", time="2d"), sweep=True)
    assert asked == ["scontrol", "scontrol", "sacctmgr"]  # partitions, nodes, the job limit: once for the sweep
    asked.clear()
    check_site_limits([SimpleNamespace(cluster=ClusterConfig())])
    assert asked == []
    with pytest.raises(ConfigError, match="cluster.time='8-00:00:00'"):
        check_site_limits(_points(1) + _points(1, time="8-00:00:00"))
    assert asked == ["scontrol"]  # a single run: no job-limit query


def test_a_query_that_fails_or_cannot_run_answers_none_after_one_attempt(tmp_path):
    assert site_limits._ask(["echo", "PartitionName=x"]) == "PartitionName=x\n"
    assert site_limits._ask(["false"]) is None
    assert site_limits._ask([str(tmp_path / "no-scontrol-here"), "show", "partition"]) is None


def test_render_asks_the_site_nothing(monkeypatch, capsys):
    """`hpcrun render` works on a laptop: the site checks are for submitting only."""
    from hpcrun import cli

    def refuse(*a, **k):
        raise AssertionError("render called the site checks")

    monkeypatch.setattr(site_limits, "check_site_limits", refuse)
    assert cli.main(["render", "cluster=slurm", "cluster.time=8-00:00:00", "cluster.nodes=2"]) == 0
    assert "#SBATCH --time=8-00:00:00" in capsys.readouterr().out


def test_nodes_parse_and_a_request_no_node_can_hold_names_the_key_to_change():
    from hpcrun.slurm.site import _node_problem, memory_mb, parse_nodes

    big = NODE.replace("NodeName=vm", "NodeName=big").replace("CPUTot=2", "CPUTot=48").replace(
        "RealMemory=19284", "RealMemory=512000").replace("Partitions=normal,preemptible", "Partitions=gpu")
    nodes = parse_nodes(NODE + "\n" + big + "\n")
    assert [(n.name, n.cpus, n.memory_mb, n.partitions) for n in nodes] == [
        ("vm", 2, 19284, ("normal", "preemptible")), ("big", 48, 512000, ("gpu",))]
    assert [memory_mb(m) for m in ("64G", "500M", "1T", "2048", "1.5G", "lots")] == [65536, 500, 1048576, 2048, 1536,
                                                                                      None]
    assert _node_problem(_cluster(tasks_per_node=1, cpus_per_task=2), ["normal"], nodes, True) is None
    too_many = _node_problem(_cluster(tasks_per_node=4, cpus_per_task=2), ["normal"], nodes, True)
    assert str(too_many) == ("cluster.tasks_per_node=4 is invalid: expected at most 1 with cluster.cpus_per_task=2 "
                             "(the default partition normal: its largest node has 2 CPUs)")
    assert "cluster.cpus_per_task=3" in str(_node_problem(_cluster(cpus_per_task=3), ["normal"], nodes, False))
    # --overcommit: the processes share cpus_per_task CPUs of the node
    shared = _cluster(tasks_per_node=3, cpus_per_task=1, sbatch_extra={"overcommit": True})
    assert _node_problem(shared, ["normal"], nodes, True) is None
    assert "cluster.mem='64G'" in str(_node_problem(_cluster(mem="64G"), ["normal"], nodes, True))
    # the partition's largest node decides: 12 x 4 CPUs and 400 GB fit the 48-core node of gpu
    assert _node_problem(_cluster(tasks_per_node=12, cpus_per_task=4, mem="400G"), ["gpu"], nodes, False) is None
    # a partition list: a node of either partition will do
    assert _node_problem(_cluster(tasks_per_node=8, cpus_per_task=2), ["normal", "gpu"], nodes, False) is None
    # CPUs of one node, memory of another: no single node holds both
    both = _node_problem(_cluster(tasks_per_node=4, cpus_per_task=2, mem="400G"), ["normal", "gpu"],
                         parse_nodes(NODE + "\n" + big.replace("RealMemory=512000", "RealMemory=1000")
                                     .replace("Partitions=gpu", "Partitions=normal") + "\n"), False)
    assert both is not None and "cluster.mem='400G'" in str(both)
