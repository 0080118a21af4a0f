"""The arithmetic of ``hpcrun plan --soonest`` (hpcrun.soonest); Slurm's side is tests/integration/test_soonest_slurm.py."""

import time

import pytest

from hpcrun.errors import UserError
from hpcrun.soonest import Measured, arithmetic_step, chain, parse_test_only, scaled_step, split_candidates


def test_slurms_test_only_answer_gives_the_start():
    text = "sbatch: Job 995 to start at 2026-12-07T04:57:38 using 1 processors on nodes vm in partition normal"
    assert parse_test_only(text) == time.mktime((2026, 12, 7, 4, 57, 38, 0, 0, -1))
    assert parse_test_only("allocation failure: Requested node configuration is not available") is None


def test_candidates_are_every_combination_of_the_cluster_values_and_nothing_else_may_vary():
    shared, per = split_candidates(["+experiment=tiny_llama", "cluster.partition=a,b", "cluster.time=1:00:00,2:00:00"])
    assert shared == ["+experiment=tiny_llama"]
    assert len(per) == 4 and {"cluster.partition": "a", "cluster.time": "1\\:00\\:00"} in per
    with pytest.raises(UserError, match="train.lr has several values"):
        split_candidates(["cluster.partition=a,b", "train.lr=1e-3,1e-4"])


def test_a_short_limit_chains_starts_each_losing_start_up_save_and_a_wait():
    # 10 h of training under a 4 h limit: 3.5 h a start (start-up 0.5 h, signal 0) -> 3 starts
    starts, took = chain(10 * 3600, 4 * 3600, 1800, 600, 0, 3600)
    assert starts == 3 and took == 10 * 3600 + 3 * 1800 + 2 * (600 + 3600)
    assert chain(3600, 48 * 3600, 180, 60, 120, 0) == (1, 3600 + 180)
    with pytest.raises(ValueError, match="shorter than start-up"):
        chain(3600, 300, 200, 10, 120, 0)


def test_a_measured_step_is_carried_to_other_counts_and_gpu_types_over_the_same_global_batch():
    found = Measured(step_seconds={(2, "a100"): 1.0, (1, None): 0.3})
    assert scaled_step(found, 2, "a100") == (1.0, "measured")
    assert scaled_step(found, 4, "a100")[0] == pytest.approx(0.5)
    seconds, how = scaled_step(found, 2, "h100")
    assert seconds == pytest.approx(312 / 989) and "of a100" in how
    assert scaled_step(found, 3, None)[0] == pytest.approx(0.1)
    assert scaled_step(Measured(step_seconds={(2, "a100"): 1.0}), 1, None) == (None, "")  # GPU to CPU: no estimate


def test_the_arithmetic_keeps_a_runs_global_batch_and_a_new_run_makes_its_own():
    from hpcrun.config.compose import compose

    one = compose(["+experiment=llama7b", "cluster=greene", "cluster.gpus_per_node=1", "cluster.gpu_type=a100"])
    two = compose(["+experiment=llama7b", "cluster=greene", "cluster.gpus_per_node=2", "cluster.gpu_type=a100"])
    n = 7_000_000_000
    new_one, new_two = arithmetic_step(one, n, 0.4)[0], arithmetic_step(two, n, 0.4)[0]
    assert new_one == pytest.approx(new_two)  # a new run on 2 GPUs takes twice the samples a step
    g = one.train.batch_size * one.train.grad_accum
    assert arithmetic_step(two, n, 0.4, global_batch=g)[0] == pytest.approx(new_one / 2)
    tokens = g * one.data.seq_len
    assert new_one == pytest.approx(6 * n * tokens / (312e12 * 0.4))
    assert arithmetic_step(compose(["cluster=slurm"]), n, 0.4) == (None, "")  # CPUs: no arithmetic


def test_without_a_kept_global_batch_more_processes_take_the_same_time_a_step():
    found = Measured(step_seconds={(2, "a100"): 1.0})
    assert scaled_step(found, 4, "a100", kept=False)[0] == pytest.approx(1.0)


def test_a_shape_the_run_cannot_continue_on_is_refused_as_resume_would():
    from hpcrun.config.compose import compose
    from hpcrun.rundir.shape import Shape
    from hpcrun.soonest import cannot_continue

    cfg = compose(["cluster=slurm", "train.batch_size=2", "train.grad_accum=3"])
    saved = Shape(2, 2, 3)
    assert cannot_continue(cfg, None, 5) == "" and cannot_continue(cfg, saved, 3) == ""
    assert "1, 2, 3, 4, 6, 12" in cannot_continue(cfg, saved, 5)
    fsdp = compose(["cluster=slurm", "train.batch_size=2", "train.grad_accum=3", "train.fsdp=true"])
    assert "sharded over 2" in cannot_continue(fsdp, saved, 1)
    assert "saved by 1, unsharded" in cannot_continue(fsdp, Shape(1, 2, 6), 2)


def test_idle_resources_per_node_from_scontrol():
    from hpcrun.soonest import _gpus, free_nodes

    text = ("NodeName=a CPUAlloc=1 CPUTot=8 RealMemory=64000 AllocMem=16000 Gres=gpu:a100:4 "
            "GresUsed=gpu:a100:3(IDX:0-2) State=MIXED Partitions=gpu,debug\n"
            "NodeName=b CPUAlloc=0 CPUTot=8 RealMemory=64000 AllocMem=0 Gres=gpu:4 GresUsed=gpu:0 "
            "State=IDLE+DRAIN Partitions=gpu\n"
            "NodeName=c CPUAlloc=0 CPUTot=2 RealMemory=4000 AllocMem=0 Gres=(null) State=IDLE Partitions=cpu\n")
    assert free_nodes(["gpu"], text) == [{"cpus": 7, "mem": 48000, "gpus": 1}]  # b drains; c is elsewhere
    assert free_nodes(["cpu"], text) == [{"cpus": 2, "mem": 4000, "gpus": 0}]
    assert _gpus("gpu:a100:1(IDX:0),gpu:v100:2(IDX:1-2)") == 3


def test_a_completed_run_has_no_steps_left_even_with_its_checkpoints_pruned(tmp_path):
    from hpcrun.config.compose import compose
    from hpcrun.rundir.state import RunState
    from hpcrun.soonest import remaining_steps

    cfg = compose(["+experiment=tiny_llama", "cluster=slurm", "train.max_steps=30", f"run.dir={tmp_path / 'run'}"],
                  cwd=tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("run:\n  name: tiny_llama\n")
    assert remaining_steps(cfg)[:2] == (30, 0)  # started, nothing saved: all of it
    state = RunState(tmp_path / "run")
    state.begin(None, 0, 0)
    state.end("completed", "trained to step 30", 30)
    assert remaining_steps(cfg)[:2] == (0, 30)  # not "a new run": it is done (final/ holds it)
