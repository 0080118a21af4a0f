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
