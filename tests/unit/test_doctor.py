"""`hpcrun doctor --write-cluster`: the drafted preset, from Slurm's answers (faked here: parsing only), is a cluster
config hpcrun composes as written."""

from hpcrun import doctor
from hpcrun.config.compose import compose

PARTITIONS = (
    "PartitionName=gpu Default=NO MaxTime=2-00:00:00 TotalNodes=10 MaxNodes=UNLIMITED MinNodes=0 "
    "TRES=cpu=640,gres/gpu=40 PreemptMode=OFF GraceTime=0\n"
    "PartitionName=cpu Default=YES MaxTime=7-00:00:00 TotalNodes=50 MaxNodes=UNLIMITED MinNodes=0 "
    "TRES=cpu=3200 PreemptMode=OFF GraceTime=0\n")
ANSWERS = {
    "scontrol": PARTITIONS,
    "sinfo": "gpu:a100:4(S:0-1)\ngpu:rtx8000:8\n(null)\n",
    "sacctmgr": "mycluster|pr_42|pr_42||||\n",
}


def test_the_drafted_cluster_preset_composes_as_written(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "_ask", lambda command: ANSWERS[command[0]])
    path = tmp_path / "conf" / "cluster" / "mysite.yaml"
    text = doctor.draft_cluster(path)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    cfg = compose(["cluster=mysite"], cwd=tmp_path)
    c = cfg.cluster
    assert (c.name, c.launcher, c.partition, c.account) == ("mysite", "slurm", "cpu", "pr_42")
    assert (c.time, c.max_time, c.gpu_types, c.max_gpus_per_node) == ("2-00:00:00", "7-00:00:00",
                                                                      ["a100", "rtx8000"], 8)


def _site(grace, mode="REQUEUE"):
    return {"partitions": [{"PartitionName": "spot", "PreemptMode": mode, "GraceTime": str(grace)}],
            "config": {"KillWait": "30 sec"}, "bandwidth": 500e6}


def test_the_grace_line_says_what_a_preemptions_grace_holds_at_the_measured_bandwidth():
    cfg = compose(["+experiment=tiny_llama", "cluster=slurm"])
    check, = doctor.grace_check(cfg, _site(30))
    assert check.ok and "leaves 30 s (GraceTime)" in check.message and "up to 15.0 GB at the measured 500 MB/s" in \
        check.message and "KillWait=30 s" in check.message
    check, = doctor.grace_check(cfg, _site(0, mode="OFF"))
    assert check.ok and "no preemption by requeue" in check.message


def test_no_grace_and_no_periodic_saves_fails_naming_the_key_to_set():
    check, = doctor.grace_check(compose(["+experiment=tiny_llama", "cluster=slurm", "checkpoint.save_every=0"]),
                                _site(0))
    assert not check.ok and "GraceTime 0 s" in check.message and "checkpoint.save_every" in check.message
    assert doctor.grace_check(compose(["+experiment=tiny_llama", "cluster=slurm"]), _site(0))[0].ok  # 30m saves


def test_the_storage_check_leaves_no_folder_it_made_behind(tmp_path):
    root = tmp_path / "scratch" / "me" / "runs"
    cfg = compose(["cluster=slurm", f"cluster.run_root={root}"], cwd=tmp_path)
    (check,) = doctor.storage_checks(cfg)
    assert check.ok and str(root) in check.line()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # scratch/me/runs were made for the check, then removed
