"""`hpcrun doctor` on the real dev cluster: it passes there, probe included, and leaves no job behind; it fails,
naming the key, for a partition or account the site does not have; it fails, naming the signal, when the launch
chain loses the signal (a stand-in runtime that detaches python from the job step, so Slurm cannot reach it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

DETACHING_RUNTIME = """#!/bin/bash
# A stand-in for `singularity exec ... IMAGE CMD...` whose starter detaches the command from the job step (it is
# reparented away, so Slurm's signals to the step never reach it), as a broken wrapper chain does.
shift
while [[ "$1" == --* ]]; do
  case "$1" in --nv) shift ;; *) shift 2 ;; esac
done
shift
( "$@" & echo $! > "$PWD/detached.pid" )
sleep 90
"""


def _no_probe_jobs() -> bool:
    out = subprocess.run(["squeue", "-h", "-o", "%j %i"], capture_output=True, text=True, timeout=30).stdout
    return not [line for line in out.splitlines() if line.startswith("hpcrun-doctor ")]


def test_doctor_passes_on_the_dev_cluster_and_its_probe_leaves_no_job(hpcrun, tmp_path, slurm_cluster):
    out = hpcrun("doctor", "cluster=slurm", "--json", timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert all(c["ok"] for c in checks.values()), checks
    assert {"slurm", "accounting", "partition", "requeue", "storage", "probe"} <= set(checks)
    assert "SIGUSR2 reached python on all 1 rank(s)" in checks["probe"]["message"]
    assert "requeued itself" in checks["probe"]["message"]
    assert _no_probe_jobs()
    assert not (tmp_path / "runs" / ".hpcrun-doctor").exists()


def test_doctor_names_the_key_of_an_unknown_partition_or_account_and_submits_nothing(hpcrun, tmp_path,
                                                                                      slurm_cluster):
    out = hpcrun("doctor", "cluster=slurm", "cluster.partition=nope", "cluster.account=nobody")
    assert out.returncode == 1, out.stdout + out.stderr
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert any("cluster.partition='nope'" in line for line in failed), out.stdout
    assert any("cluster.account='nobody'" in line for line in failed), out.stdout
    assert any(line.startswith("FAIL  probe: not submitted") for line in failed)


def test_doctor_fails_naming_the_signal_when_the_launch_chain_loses_it(hpcrun, tmp_path, slurm_cluster):
    runtime = tmp_path / "bin" / "singularity"
    runtime.parent.mkdir()
    runtime.write_text(DETACHING_RUNTIME)
    runtime.chmod(0o755)
    env = {"PATH": f"{runtime.parent}:{os.environ['PATH']}"}
    out = hpcrun("doctor", "cluster=slurm", "cluster.container.enabled=true", f"cluster.container.image={tmp_path}/x.sif",
                 "cluster.container.env_script=", f"cluster.container.python={sys.executable}", env=env, timeout=400)
    assert out.returncode == 1, out.stdout + out.stderr
    (probe,) = [line for line in out.stdout.splitlines() if "probe:" in line]
    assert probe.startswith("FAIL") and "SIGUSR2 did not reach python on rank(s) [0]" in probe, out.stdout
    assert _no_probe_jobs()
    pid_file = tmp_path / "detached.pid"
    if pid_file.exists():  # the detached probe waits 60 s for its signal, then exits by itself; do not leave it
        try:
            os.kill(int(pid_file.read_text()), 9)
        except (OSError, ValueError):
            pass
