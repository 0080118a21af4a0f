"""``hpcrun run -- COMMAND`` locally: a Trainer script that knows nothing of hpcrun, stopped and run again, killed in
the middle of a save; and the bad inputs. The Slurm paths are in test_own_script_slurm.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.own_scripts import SCRIPTS, clm_args, sft_args, straight_run, trainer_steps
from tests.training import Terminal, assert_same_weights, state, wait_until

# About 145 steps a second here: 1500 steps leave some 9 s after the first periodic save (1 s in) for the Ctrl-C
# to land before the run ends (500 left 2.6 s).
STEPS = 1500


@pytest.fixture(scope="module")
def straight(own_work: Path) -> Path:
    return straight_run(own_work, STEPS)


def _start(tmp_path: Path, args: list, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcrun", *args], cwd=tmp_path, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_dir(tmp_path: Path, name: str = "clm_trainer") -> Path:
    wait_until(lambda: len(list((tmp_path / "runs" / name).glob("*/config.yaml"))) == 1, 60, "the run directory")
    return next((tmp_path / "runs" / name).glob("*/config.yaml")).parent


def _checkpoints(out: Path) -> list:
    return sorted(out.glob("checkpoint-*")) if out.is_dir() else []


def test_a_trainer_script_stopped_by_ctrl_c_resumes_on_the_same_command_to_the_straight_runs_weights(
        hpcrun, tmp_path, own_work, straight):
    args = ["run", "cluster=local", "checkpoint.save_every=1s", "--", *clm_args(own_work, "${run.dir}/out", STEPS)]
    proc = _start(tmp_path, args)
    run_dir = _run_dir(tmp_path)
    out = run_dir / "out"  # ${run.dir}/out, interpolated
    wait_until(lambda: _checkpoints(out), 120, "a periodic checkpoint-N in the script's output_dir")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    st = state(run_dir)
    assert st["status"] == "stopped" and "SIGINT" in st["reason"]
    stopped_at = st["starts"][0]["step"]
    assert 0 < stopped_at < STEPS
    assert out / f"checkpoint-{stopped_at}" in _checkpoints(out)  # the save the stop asked for, in place
    assert not (out / "model.safetensors").exists()  # the script's final save_model() did not run on a partial model
    for ckpt in _checkpoints(out):
        assert (ckpt / "hpcrun-complete.json").is_file()

    again = hpcrun(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (run_dir / "logs" / "start-2.log").read_text()
    assert f"resuming from {out / f'checkpoint-{stopped_at}'}" in log
    assert_same_weights(out, straight)
    (row,) = json.loads(hpcrun("status", str(run_dir), "--json").stdout)
    assert row["recorded"] == "completed" and row["step"] == STEPS and row["max_steps"] == STEPS
    done = hpcrun(*args)  # the same command once more: nothing runs, and it says where the results are
    assert done.returncode == 0 and f"is already complete: its Trainer's output in {out}." in done.stderr, done.stderr
    assert "the same command and overrides are the same run" in done.stderr


def test_a_ctrl_c_after_the_training_ended_lets_the_script_finish_and_the_run_is_complete(tmp_path, own_work):
    # The signal comes while the script's post-training code runs (between train() and save_model here). Before,
    # the run was "stopped" although the script finished (exit 0): the same command then trained again from its
    # last checkpoint, and resumed from one at max_steps, transformers trains one step more (other weights).
    trained = tmp_path / "trained"
    args = ["run", "cluster=local", "--",
            *clm_args(own_work, "${run.dir}/out", 40, ["--wait_for_sigint_after_training", str(trained)])]
    proc = _start(tmp_path, args)
    run_dir = _run_dir(tmp_path)
    wait_until(trained.exists, 180, "the end of the script's training")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "came after the command's training had ended" in output
    st = state(run_dir)
    assert st["status"] == "completed" and len(st["starts"]) == 1, st
    assert (run_dir / "out" / "model.safetensors").is_file()  # the script's own save_model, after the signal
    assert not list((run_dir / "out").glob("checkpoint-*"))  # (save_strategy no:) nothing saved for the signal


def test_a_kill_after_the_final_checkpoint_resumes_to_no_step_past_max_steps(tmp_path, own_work):
    # The script's Trainer saved at max_steps, then the command was killed in its post-training code (a node
    # failure, a preemption's SIGKILL). Resumed from that checkpoint, transformers trained one step past max_steps
    # (checkpoint-21 of a 20-step run, other weights than an uninterrupted run's).
    trained = tmp_path / "trained"
    args = ["run", "cluster=local", "--", *clm_args(own_work, "${run.dir}/out", 20, [
        "--save_strategy", "steps", "--save_steps", "20", "--wait_for_sigint_after_training", str(trained)])]
    proc = _start(tmp_path, args)
    run_dir = _run_dir(tmp_path)
    wait_until(trained.exists, 180, "the end of the script's training")
    script = f"^{re.escape(sys.executable)} {re.escape(str(SCRIPTS / 'clm_trainer.py'))} "
    subprocess.run(["pkill", "-KILL", "-f", script], check=True)  # the command only, not hpcrun
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "killed by signal 9" in output, output[-3000:]
    out = run_dir / "out"
    assert _checkpoints(out) == [out / "checkpoint-20"]

    trained.unlink()
    proc = _start(tmp_path, args)
    wait_until(trained.exists, 180, "the end of the second start's training")
    proc.send_signal(signal.SIGINT)  # lets the script's post-training code run (above)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    log = (run_dir / "logs" / "start-2.log").read_text()
    assert f"resuming from {out / 'checkpoint-20'}" in log
    assert "the checkpoint is at max_steps (20): nothing left to train" in log
    assert _checkpoints(out) == [out / "checkpoint-20"]  # the old code: checkpoint-21 as well
    assert trainer_steps(out) == list(range(1, 21))
    assert_same_weights(out, straight_run(own_work, 20))


def test_a_trainer_script_whose_terminal_closes_saves_and_stops(tmp_path, own_work):
    args = ["run", "cluster=local", "checkpoint.save_every=1s", "--", *clm_args(own_work, "${run.dir}/out", STEPS)]
    terminal = Terminal(args, tmp_path)
    run_dir = _run_dir(tmp_path)
    out = run_dir / "out"
    terminal.wait_for(lambda: _checkpoints(out), 120, "a periodic checkpoint-N in the script's output_dir")
    assert terminal.close() == 75  # hpcrun passes the SIGHUP on; the script's Trainer saves and stops
    st = state(run_dir)
    assert st["status"] == "stopped" and "SIGHUP (the terminal closed)" in st["reason"], st
    stopped_at = st["starts"][0]["step"]
    assert 0 < stopped_at < STEPS
    assert (out / f"checkpoint-{stopped_at}" / "hpcrun-complete.json").is_file()


def test_a_ctrl_c_while_the_job_starts_reaches_the_command_once_it_runs(tmp_path):
    # The stop signal comes before the command exists (here: in a pause the job takes while it starts). Before, the
    # command never got it: it ran to its end (a minute here; on Slurm, until the grace time's SIGKILL). The pause
    # ends at the signal, however late the test sends it.
    slow = [sys.executable, "-c", "import time\nfor _ in range(600): time.sleep(0.1)"]
    proc = _start(tmp_path, ["run", "cluster=local", "--", *slow], env={"HPCRUN_FAULTS": "setup_pause=120"})
    run_dir = _run_dir(tmp_path, "python")
    wait_until(lambda: "setup_pause" in ((run_dir / "logs" / "start-1.log").read_text()
                                         if (run_dir / "logs" / "start-1.log").exists() else ""), 60, "the pause")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output[-3000:]
    assert "SIGINT came before the command started: passed on to it" in output
    assert state(run_dir)["reason"].startswith("signal SIGINT; the command was killed by signal 2")


def _stop_with_ctrl_c_and_run_again(hpcrun, tmp_path: Path, args: list, name: str) -> Path:
    """Starts ``hpcrun ARGS``, Ctrl-C once a periodic checkpoint exists, runs it again; returns the output_dir."""
    proc = _start(tmp_path, args)
    out = _run_dir(tmp_path, name) / "out"
    wait_until(lambda: _checkpoints(out), 120, "a periodic checkpoint-N in the script's output_dir")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    again = hpcrun(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from" in (out.parent / "logs" / "start-2.log").read_text()
    return out


def test_trainer_subclasses_are_adopted_too_seq2seq_trainer(hpcrun, tmp_path, own_work, straight):
    args = ["run", "cluster=local", "checkpoint.save_every=1s", "--",
            *clm_args(own_work, "${run.dir}/out", STEPS, ["--trainer_class", "Seq2SeqTrainer"])]
    assert_same_weights(_stop_with_ctrl_c_and_run_again(hpcrun, tmp_path, args, "clm_trainer"), straight)


def test_trainer_subclasses_are_adopted_too_trl_sft_trainer(hpcrun, tmp_path, own_work):
    steps = 300
    reference = subprocess.run(sft_args(own_work, str(tmp_path / "straight"), steps), capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    args = ["run", "cluster=local", "checkpoint.save_every=1s", "--", *sft_args(own_work, "${run.dir}/out", steps)]
    assert_same_weights(_stop_with_ctrl_c_and_run_again(hpcrun, tmp_path, args, "sft_trl"), tmp_path / "straight")


def test_kill_9_during_a_trainer_save_leaves_nothing_that_resume_or_get_last_checkpoint_would_pick(
        hpcrun, tmp_path, own_work, straight):
    from transformers.trainer_utils import get_last_checkpoint

    args = ["run", "cluster=local", "checkpoint.save_every=1s", "--", *clm_args(own_work, "${run.dir}/out", STEPS)]
    proc = _start(tmp_path, args, env={"HPCRUN_FAULTS": "save_pause=60"})  # every file written, no marker yet
    run_dir = _run_dir(tmp_path)
    staging = run_dir / "out" / ".hpcrun-staging"
    wait_until(lambda: any(staging.glob("checkpoint-*/trainer_state.json")), 120, "a save paused before its commit")
    from hpcrun.job.processes import descendants

    script = [p for p in descendants(proc.pid) if "clm_trainer.py" in Path(f"/proc/{p}/cmdline").read_text()]
    assert script, "the script's process"
    os.kill(script[0], signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output[-3000:]
    assert "killed by signal 9" in state(run_dir)["reason"]
    out = run_dir / "out"
    assert _checkpoints(out) == []  # the half-written save is not a checkpoint-N ...
    assert get_last_checkpoint(str(out)) is None  # ... for transformers either

    again = hpcrun(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "interrupted before it completed" in (run_dir / "logs" / "start-2.log").read_text()
    assert not staging.exists()
    assert_same_weights(out, straight)


def test_a_script_of_its_own_gets_where_it_is_from_its_environment(hpcrun, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import json, os\nprint(json.dumps({k: v for k, v in os.environ.items() "
                     "if k.startswith('HPCRUN_')}))\n")
    out = hpcrun("run", "cluster=local", "cluster.time=1:00:00", "--", sys.executable, str(probe))
    assert out.returncode == 0, out.stderr[-3000:]
    env = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    run_dir = _run_dir(tmp_path, "probe")
    assert env["HPCRUN_RUN_DIR"] == str(run_dir) and env["HPCRUN_START"] == "1" and env["HPCRUN_RESTART"] == "0"
    assert abs(float(env["HPCRUN_END_TIME"]) - (time.time() + 3600)) < 120
    closed_terminal = [] if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else ["SIGHUP"]  # (hpcrun inherits it)
    assert env["HPCRUN_SIGNALS"].split(",") == ["SIGUSR2", "SIGTERM", "SIGINT", *closed_terminal]
    assert state(run_dir)["status"] == "completed"
    assert json.dumps(env) in (run_dir / "logs" / "start-1.log").read_text()  # the command's output, in its log


_HANGS_AT_EXIT = """
import atexit, os, signal, time
from hpcrun import script

start = 0 if script.latest_checkpoint() is None else 3
for step in range(start + 1, 7):
    if step == 3 and start == 0:
        os.kill(os.getpid(), signal.SIGUSR2)  # as Slurm's timeout signal would come
    decision = script.step_ended(step)
    if decision.save:
        with script.saving(step) as folder:
            (folder / "step.txt").write_text(str(step))
    if decision.stop:
        atexit.register(time.sleep, 3600)  # a process that hangs at exit, as torch.distributed's can (gloo)
        script.stop_and_requeue(step)
"""


def test_a_command_that_saved_and_asked_to_stop_but_hangs_at_exit_is_killed_after_the_grace_and_resumes(
        hpcrun, tmp_path):
    # A torch.distributed worker can hang at exit after the stop save: gloo's destructor joins a thread that waits
    # for the interpreter's lock, which the exiting main thread holds. Before, hpcrun waited for it forever.
    script = tmp_path / "hangs.py"
    script.write_text(_HANGS_AT_EXIT)
    args = ["run", "cluster=local", "command.exit_grace=2s", "--", sys.executable, str(script)]
    began = time.monotonic()
    out = hpcrun(*args, timeout=60)
    assert out.returncode == 75, out.stdout[-3000:] + out.stderr[-3000:]  # stopped, resumable
    assert time.monotonic() - began < 40
    run_dir = _run_dir(tmp_path, "hangs")
    st = state(run_dir)
    assert st["status"] == "stopped" and "SIGUSR2" in st["reason"] and st["starts"][0]["step"] == 3, st
    assert "has not exited (a hang at exit): killing it" in (run_dir / "logs" / "start-1.log").read_text()
    assert (run_dir / "checkpoints" / "step-3" / "step.txt").read_text() == "3"

    again = hpcrun(*args, timeout=60)  # the second start runs on from the save, to its end
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert state(run_dir)["status"] == "completed"


@pytest.mark.parametrize("args, expected", [
    (["run", "cluster=local"], "hpcrun run needs a command after --"),
    (["run", "cluster=local", "--"], "hpcrun run needs a command after --"),
    (["run", "cluster=local", "command.exit_grace=soon", "--", sys.executable, "-V"], "command.exit_grace='soon'"),
    (["run", "cluster=local", "--", "no-such-program-here", "x"], "command='no-such-program-here'"),
    (["run", "cluster=local", "--", sys.executable, "missing_script.py"], "command='missing_script.py'"),
    (["run", "cluster=local", "--", sys.executable, str(SCRIPTS / "echo_arg.py"), "--lr", "${nope}"], "command='${nope}'"),
    (["-m", "run", "cluster=local", "+lr=1,2", "--", sys.executable, str(SCRIPTS / "echo_arg.py"), "${lr.x}"],
     "command='${lr.x}'"),
])
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(hpcrun, tmp_path, args, expected):
    out = hpcrun(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("hpcrun: error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_trainer_script_under_torchrun_with_two_processes_resumes_to_the_straight_runs_weights(
        hpcrun, tmp_path, own_work):
    steps = 300
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2"]
    script = clm_args(own_work, str(tmp_path / "straight"), steps)[1:]  # without the python: torchrun starts it
    reference = subprocess.run([*torchrun, *script], capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    args = ["run", "cluster=local", "checkpoint.save_every=1s", "--", *torchrun,
            *clm_args(own_work, "${run.dir}/out", steps)[1:]]
    assert_same_weights(_stop_with_ctrl_c_and_run_again(hpcrun, tmp_path, args, "clm_trainer"), tmp_path / "straight")


def test_a_hydra_app_that_writes_into_a_new_folder_on_every_start_resumes_from_the_folder_it_saved_in(
        hpcrun, tmp_path, own_work, straight):
    # The Trainer's output_dir is Hydra's run directory, outputs/DATE/TIME: a new, empty folder on every start of the
    # same command. Before, the restart found no checkpoint there and trained again from step 1 (silently: the same
    # weights in the end, the whole first start's steps lost).
    args = ["run", "cluster=local", "checkpoint.save_every=1s", "--", sys.executable,
            str(SCRIPTS / "hydra_trainer.py"), f"config={own_work / 'model' / 'config'}",
            f"tokenizer={own_work / 'model' / 'tokenizer'}", f"train_file={own_work / 'data' / 'train.txt'}",
            f"max_steps={STEPS}"]
    proc = _start(tmp_path, args)
    run_dir = _run_dir(tmp_path, "hydra_trainer")
    folders = lambda: sorted(tmp_path.glob("outputs/*/*"))  # noqa: E731
    wait_until(lambda: any(_checkpoints(f) for f in folders()), 120, "a periodic checkpoint-N in Hydra's run dir")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    (first,) = folders()
    stopped_at = state(run_dir)["starts"][0]["step"]
    assert first / f"checkpoint-{stopped_at}" in _checkpoints(first)

    again = hpcrun(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (second,) = [f for f in folders() if f != first]
    log = (run_dir / "logs" / "start-2.log").read_text()
    assert f"this Trainer's output_dir {second} is new on this start and holds no checkpoint" in log, log[-3000:]
    assert f"resuming from {first / f'checkpoint-{stopped_at}'}" in log
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    (first_step,) = [e["step"] for e in ledger if e["event"] == "first_step" and e["start"] == 2]
    assert first_step == stopped_at + 1  # the old code: 1
    assert_same_weights(second, straight)
    assert trainer_steps(second) == list(range(1, STEPS + 1))  # every step logged once


def test_a_trainer_alone_in_each_of_torchruns_processes_is_refused_in_one_line(hpcrun, tmp_path, own_work):
    # torchrun without GPUs and without --use_cpu: each process gets a Trainer of world size 1, which trains the
    # whole model by itself. Before, both took the save for theirs and one failed in the other's staging folder
    # (FileExistsError, after 50 steps of duplicated training).
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("with GPUs torchrun's processes train as one")
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2"]
    script = [a for a in clm_args(own_work, "${run.dir}/out", 10)[1:] if a != "--use_cpu"]
    out = hpcrun("run", "cluster=local", "--", *torchrun, *script)
    assert out.returncode == 1
    (run_dir,) = list((tmp_path / "runs" / "clm_trainer").iterdir())
    log = (run_dir / "logs" / "start-1.log").read_text()
    assert log.count("hpcrun: error: the command started 2 processes (WORLD_SIZE=2) but this Trainer trains alone "
                     "in each (its world size is 1)") == 2, log[-3000:]
    assert not _checkpoints(run_dir / "out") and not (run_dir / "out" / ".hpcrun-staging").exists()


def test_two_runs_with_one_output_dir_are_refused_before_one_takes_the_others_checkpoints(hpcrun, tmp_path,
                                                                                           own_work):
    # `--output_dir out` typed for two runs (relative: the same folder). Before, the second rotated the first's
    # checkpoints away and, on its restart, resumed from the first's final checkpoint: silently the first's weights.
    common = ["cluster=local", "--", *clm_args(own_work, "out", 10,
                                                       ["--save_strategy", "steps", "--save_steps", "5"])]
    first = hpcrun("run", "run.name=first", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "checkpoint-10" in before
    second = hpcrun("run", "run.name=second", *common)
    assert second.returncode == 1
    (run_dir,) = list((tmp_path / "runs" / "second").iterdir())
    log = (run_dir / "logs" / "start-1.log").read_text()
    assert f"hpcrun: error: output_dir {tmp_path / 'out'} is the checkpoint folder of another run, " in log, log[-3000:]
    assert "Traceback" not in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before  # the first run's folder untouched


def test_an_evaluation_in_another_runs_output_dir_leaves_its_save_in_progress_alone(hpcrun, tmp_path, own_work):
    # A Trainer that only evaluates, pointed at the folder a training run saves into (to look at its checkpoints
    # while it trains). Before, its __init__ removed the folder's staging: the other run's save in progress.
    first = hpcrun("run", "run.name=train", "cluster=local", "--", *clm_args(own_work, "out", 5))
    assert first.returncode == 0, first.stderr[-3000:]
    in_progress = tmp_path / "out" / ".hpcrun-staging" / "checkpoint-7"  # as the training run's next save would be
    in_progress.mkdir(parents=True)
    (in_progress / "model.safetensors").write_bytes(b"half written")
    evaluate = [a for a in clm_args(own_work, "out", 5) if a != "--do_train"] + ["--do_eval"]
    out = hpcrun("run", "run.name=eval", "cluster=local", "--", *evaluate)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (in_progress / "model.safetensors").read_bytes() == b"half written"


def test_the_best_checkpoint_is_named_where_it_is_once_committed_so_a_restart_finds_it(hpcrun, tmp_path, own_work):
    # load_best_model_at_end: the Trainer names the best checkpoint by where it wrote it. Before, the
    # trainer_state.json of each checkpoint named hpcrun's staging folder, gone after the commit: a restart loaded
    # that name, found no best model at the end and kept the last one.
    args = ["run", "cluster=local", "--", *clm_args(own_work, "${run.dir}/out", 10, [
        "--save_strategy", "steps", "--save_steps", "5", "--eval_strategy", "steps", "--eval_steps", "5",
        "--do_eval", "--load_best_model_at_end", "--metric_for_best_model", "loss"])]
    out = hpcrun(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = list((tmp_path / "runs" / "clm_trainer").iterdir())
    named = [json.loads((c / "trainer_state.json").read_text())["best_model_checkpoint"]
             for c in sorted((run_dir / "out").glob("checkpoint-*"))]
    assert len(named) == 2 and all(named), named
    assert all(Path(n).parent == run_dir / "out" and Path(n).is_dir() for n in named), named


def test_an_arguments_file_naming_the_run_dir_literally_is_warned_of(hpcrun, tmp_path, own_work):
    # `python run_clm.py args.json`: the file is the script's to read, so hpcrun's ${run.dir} in it stays literal
    # and makes a folder named "${run.dir}" in the working directory, shared by every run given the file.
    (tmp_path / "args.json").write_text(json.dumps({
        "config_name": str(own_work / "model" / "config"), "tokenizer_name": str(own_work / "model" / "tokenizer"),
        "train_file": str(own_work / "data" / "train.txt"), "block_size": 32, "do_train": True, "max_steps": 2,
        "per_device_train_batch_size": 4, "save_strategy": "no", "report_to": "none", "use_cpu": True,
        "output_dir": "${run.dir}/out"}))
    out = hpcrun("run", "cluster=local", "--", sys.executable, str(SCRIPTS / "clm_trainer.py"), "args.json")
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = list((tmp_path / "runs" / "clm_trainer").iterdir())
    log = (run_dir / "logs" / "start-1.log").read_text()
    assert ("output_dir ${run.dir}/out holds a literal '${': hpcrun fills ${...} in the command line only" in log
            ), log[-3000:]
    assert (tmp_path / "${run.dir}" / "out" / "model.safetensors").is_file()  # where the script was told, as written


def test_a_save_longer_than_accelerates_5_s_under_its_single_process_launcher_completes_on_sigterm(tmp_path):
    # accelerate launch (one process) sets its own SIGTERM handler in the launcher: it exited, and killed its worker
    # 5 s later, so a scancel, preemption or requeue (SIGTERM) cut every save longer than that. The launcher now
    # keeps ignoring its stop signals; the worker alone saves (8 s here) and exits, and the launcher exits 0.
    accelerate = str(Path(sys.executable).parent / "accelerate")
    run = _start(tmp_path, ["run", "cluster=local", "checkpoint.save_every=30min", "--", accelerate, "launch",
                            "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", str(SCRIPTS / "accelerate_loop.py"), "${run.dir}/work",
                            "100000"], env={"SAVE_SECONDS": "8"})
    run_dir = _run_dir(tmp_path, "accelerate_loop")
    seen = run_dir / "work" / "seen" / "rank-0.jsonl"
    wait_until(lambda: seen.exists() and len(seen.read_text().splitlines()) >= 5, 180, "five steps")
    run.send_signal(signal.SIGTERM)  # locally hpcrun passes it on to every process of the command, as Slurm would
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 75, out[-3000:]  # stopped, resumable with the same command
    saved = [p for p in (run_dir / "checkpoints").glob("step-*") if (p / "step.txt").is_file()]
    assert len(saved) == 1, out[-3000:]
    assert (run_dir / "work" / "signal-rank-0.txt").read_text() == "SIGTERM"


def test_a_script_that_refuses_a_used_output_dir_restarts_after_a_kill_before_its_first_checkpoint(
        hpcrun, tmp_path, own_work):
    # Scripts grown from transformers 4's examples refuse an output_dir that holds anything and no checkpoint.
    # hpcrun's mark of the folder (made as training starts) was such a thing: a run killed before its first
    # checkpoint (preempted, kill -9, a node failure) failed on its restart. The restart now finds it as the
    # script left it.
    args = ["run", "cluster=local", "checkpoint.save_every=30min", "--",
            *clm_args(own_work, "${run.dir}/out", STEPS, ["--refuse_used_output_dir"])]
    run = _start(tmp_path, args)
    run_dir = _run_dir(tmp_path)
    wait_until(lambda: (run_dir / "out" / ".hpcrun-run").exists(), 120, "the Trainer training into its folder")
    os.kill(run.pid, signal.SIGKILL)  # no save (the command dies with it: PR_SET_PDEATHSIG)
    run.communicate(timeout=60)
    again = hpcrun(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already exists and is not empty" not in (run_dir / "logs" / "start-2.log").read_text()
    assert trainer_steps(run_dir / "out") == list(range(1, STEPS + 1))
