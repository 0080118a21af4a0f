"""A disk that fills up during a save: a real 60 MB tmpfs as the run directory (root mounts it; CI runs as root).

One checkpoint of the tiny run is 39 MB, so the first save fits and the second cannot.
"""

import subprocess

import pytest

from hpcrun.rundir.checkpoints import CheckpointDir
from tests.conftest import run_hpcrun
from tests.training import TINY, assert_same_weights, state

pytestmark = pytest.mark.training


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60M,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    assert out.returncode == 0, f"this test mounts a tmpfs and needs root: {out.stderr.strip()}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_full_disk_during_a_save_stops_resumable_with_one_clear_error_and_the_previous_checkpoint_intact(
        tmp_path, small_disk, reference_run):
    run_dir = small_disk / "run"
    args = [*TINY, "cluster=local", f"run.dir={run_dir}", "checkpoint.save_every=3s"]
    out = run_hpcrun(*args, cwd=tmp_path)

    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (last,) = [ln for ln in out.stderr.splitlines() if ln.startswith("hpcrun: error:")]  # (after it: tqdm's bar)
    checkpoints = CheckpointDir(run_dir / "checkpoints")
    (kept,) = checkpoints.folders()  # the first save, and nothing else: no half-written step-N, no staging
    assert not checkpoints.staging_root.exists()
    assert checkpoints.problem(kept.path) is None
    assert last.startswith("hpcrun: error: disk full while saving step ")
    assert f"in {run_dir / 'checkpoints'}" in last and "the half-written save was removed" in last
    assert f"the same hpcrun command resumes from {kept.path.name}" in last
    st = state(run_dir)
    assert st["status"] == "stopped" and st["reason"].startswith("disk full")

    # Space is freed (here: the tmpfs grows); the same command resumes and ends as if nothing had happened.
    subprocess.run(["mount", "-o", "remount,size=300M", str(small_disk)], check=True)
    again = run_hpcrun(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming run tiny_llama from {kept.path.name}" in again.stderr
    assert_same_weights(run_dir / "final", reference_run / "final")
