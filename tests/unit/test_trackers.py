"""Trackers across restarts (hpcrun.frameworks.transformers.trackers): one W&B run and one TensorBoard folder per
hpcrun run, on a real transformers Trainer and a tiny Llama, each start a new Trainer resuming from a checkpoint."""

import json
import os
import socket
from pathlib import Path

import pytest

from hpcrun.errors import ConfigError
from hpcrun.frameworks.transformers.trackers import check_report_to, finish_trackers, tracker_callbacks
from tests.wandb_files import wandb_history, wandb_records

MAX_STEPS = 10
FAKE_KEY = "hpcrunFAKEwandbKEY0123456789abcdef01234567"  # 40 characters, as a W&B key


class Killed(Exception):
    """Stands for a kill without a signal: the process just stops, nothing is closed or finished."""


def _tiny_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


def _dataset(n=48, length=16):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def _start(run_dir, report_to, start_n, save_steps, resume=None, stop_at=None, kill_at=None):
    """One start of the run: a new Trainer, resuming from ``resume``; stops (saved) at ``stop_at`` as after a
    signal, or dies at ``kill_at`` right after logging that step."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == stop_at:
                control.should_save = control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == kill_at and "loss" in logs:
                raise Killed(kill_at)

    report, callbacks = tracker_callbacks(report_to, run_dir, "tiny", start_n)
    args = TrainingArguments(output_dir=str(run_dir / "trainer"), max_steps=MAX_STEPS, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=save_steps,
                             use_cpu=True, report_to=report, seed=0, disable_tqdm=True)
    trainer = Trainer(model=_tiny_model(), args=args, train_dataset=_dataset(),
                      callbacks=callbacks + [Interrupt()])
    trainer.train(resume_from_checkpoint=str(run_dir / "trainer" / resume) if resume else None)
    return report, callbacks


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, quiet, its home folders in tmp_path, and no internet connection allowed in this process (wandb
    talks to its own service process over a unix socket); the server URL is a closed local port, so a try by the
    service process would fail here too (under strace -f, the tests make no inet connect at all)."""
    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_NAME", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever tracker_callbacks sets
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # wandb-core would report its own errors to Sentry
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    attempts = []
    connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            if address[0] not in ("127.0.0.1", "::1", "localhost") or address[1] == 9:
                raise OSError(f"test: no network ({address})")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    yield attempts
    import wandb

    wandb.teardown()  # the next test's wandb reads its own environment
    assert [a for a in attempts if a[0] not in ("127.0.0.1", "::1", "localhost") or a[1] == 9] == []


def _record_kinds(path: Path) -> list:
    """The kind of each record of a ``.wandb`` file, in order (history, summary, ..., exit)."""
    return [r.WhichOneof("record_type") for r in wandb_records(path)]


def _finish_wandb_run():
    """What the task does when a start ends (hpcrun.tasks.causal_lm): finish_trackers, after which the start's file
    must be whole at once, since a requeue kills wandb-core with the job's processes right after."""
    import wandb

    run = wandb.run
    assert run is not None, "no W&B run open to finish"
    log = Path(run.dir).parent / f"run-{run.id}.wandb"
    finish_trackers()
    assert _record_kinds(log)[-1:] == ["exit"]  # wandb's last record


def test_a_finished_start_has_written_its_whole_wandb_file_before_finish_trackers_returns(tmp_path, wandb_offline):
    """Read at once, as a requeue's kill of every process of the job would leave it. With wandb.finish() alone, 3 of
    30 runs read right after it lacked rows or the exit record (wandb 0.31): 20 runs find that with 88 %."""
    import wandb

    for k in range(20):
        run = wandb.init(project="p", id=f"start{k}", dir=str(tmp_path))
        log = Path(run.dir).parent / f"run-{run.id}.wandb"
        for step in range(100):
            wandb.log({"loss": float(step)}, step=step)
        finish_trackers()
        kinds = _record_kinds(log)
        assert (kinds.count("history"), kinds[-1]) == (100, "exit"), f"run {k}"


def test_a_wandb_service_that_died_costs_the_start_a_warning_not_its_requeue(tmp_path, wandb_offline, caplog):
    """wandb-core killed under a start (the OOM killer, a crash): wandb.finish() and wandb.teardown() then raise
    (ConnectionResetError, wandb 0.31); the start must still go on to its requeue or final save. The next run of the
    process (a local sweep's next point) logs as before."""
    import signal
    import subprocess

    import wandb

    from tests.training import wait_until

    run = wandb.init(project="p", id="dies", dir=str(tmp_path))
    wandb.log({"loss": 1.0}, step=1)
    (core,) = subprocess.run(["pgrep", "-P", str(os.getpid()), "-x", "wandb-core"], capture_output=True,
                             text=True).stdout.split()
    os.kill(int(core), signal.SIGKILL)

    def dead() -> bool:  # a zombie until wandb waits for it, or gone
        try:
            return Path(f"/proc/{core}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    wait_until(dead, 10, "wandb-core to die")
    with caplog.at_level("WARNING", logger="hpcrun"):
        finish_trackers()
    assert f"W&B: could not finish run {run.id}" in caplog.text

    run = wandb.init(project="p", id="next", dir=str(tmp_path))
    log = Path(run.dir).parent / f"run-{run.id}.wandb"
    wandb.log({"loss": 2.0}, step=1)
    finish_trackers()
    kinds = _record_kinds(log)
    assert (kinds.count("history"), kinds[-1]) == (1, "exit")


@pytest.mark.training
def test_a_killed_start_resumed_from_its_checkpoint_draws_each_step_once_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run.mkdir()
    report, _ = tracker_callbacks(["tensorboard"], run, "tiny", 1)
    assert report == []  # transformers' TensorBoardCallback stays out: hpcrun's writes the one folder
    with pytest.raises(Killed):
        _start(run, ["tensorboard"], 1, save_steps=4, kill_at=6)  # checkpoint-4, then steps 5 and 6 logged
    _start(run, ["tensorboard"], 2, save_steps=4, resume="checkpoint-4")

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, MAX_STEPS + 1))
    assert [(e.step, e.value) for e in events.Scalars("hpcrun/start")] == [(0, 1.0), (4, 2.0)]


@pytest.mark.training
def test_two_starts_report_to_one_wandb_run_and_log_each_step_once(tmp_path, wandb_offline):
    run = tmp_path / "run"
    run.mkdir()
    _start(run, ["wandb"], 1, save_steps=5, stop_at=5)  # a signal: saved at 5, stopped
    _finish_wandb_run()
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]["run_id"]
    _start(run, ["wandb"], 2, save_steps=5, resume="checkpoint-5")
    _finish_wandb_run()

    assert json.loads((run / "trackers.json").read_text())["wandb"]["run_id"] == run_id
    folders, rows = wandb_history(run, run_id)
    assert len(folders) == 2 and len(list(run.glob("wandb/offline-run-*"))) == 2  # one per start, one id
    steps = [row["train/global_step"] for row in rows if "train/loss" in row]
    assert steps == list(range(1, MAX_STEPS + 1))
    starts = {row["train/global_step"]: row["hpcrun/start"] for row in rows if "hpcrun/start" in row}
    assert starts == {1: 1, 6: 2}  # each start marked on the first step it logged


@pytest.mark.training
def test_a_second_run_in_the_same_process_gets_its_own_wandb_run(tmp_path, wandb_offline):
    first, second = tmp_path / "first", tmp_path / "second"
    for run in (first, second):
        run.mkdir()
        _start(run, ["wandb"], 1, save_steps=MAX_STEPS, stop_at=1)
        _finish_wandb_run()
    ids = [json.loads((run / "trackers.json").read_text())["wandb"]["run_id"] for run in (first, second)]
    assert ids[0] != ids[1]
    for run, run_id in zip((first, second), ids):  # wandb read the second run's environment, not the first's again
        assert [p.name.rsplit("-", 1)[1] for p in run.glob("wandb/offline-run-*")] == [run_id]


@pytest.mark.training
def test_no_file_under_the_run_directory_holds_the_wandb_api_key(tmp_path, wandb_offline, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run = tmp_path / "run"
    run.mkdir()
    _start(run, ["wandb", "tensorboard"], 1, save_steps=2, stop_at=2)
    _finish_wandb_run()

    files = [p for p in run.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.suffix == ".wandb" for p in files) and any("tfevents" in p.name for p in files)
    assert [str(p) for p in files if FAKE_KEY.encode() in p.read_bytes()] == []


def test_an_unknown_tracker_is_a_config_error_naming_the_key_and_the_value():
    with pytest.raises(ConfigError) as err:
        check_report_to(["nope"])
    assert "train.report_to" in str(err.value) and "'nope'" in str(err.value)
    assert "wandb" in str(err.value) and "tensorboard" in str(err.value)  # the valid choices
    with pytest.raises(ConfigError, match="mlflow"):
        check_report_to(["wandb", "mlflow"])
    assert check_report_to([]) == [] and check_report_to(["wandb", "tensorboard", "wandb"]) == ["wandb", "tensorboard"]


def test_a_tracker_that_is_not_installed_is_a_config_error_saying_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb") as err:
        tracker_callbacks(["wandb"], tmp_path, "tiny", 1)
    assert "train.report_to" in str(err.value)


def test_the_name_check_module_imports_no_training_framework():
    # Loaded from its file: the package's __init__ (hpcrun.frameworks.transformers) imports transformers itself.
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[2] / "hpcrun" / "frameworks" / "transformers" / "trackers.py"
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('trackers', {str(path)!r})\n"
            "trackers = importlib.util.module_from_spec(spec); spec.loader.exec_module(trackers)\n"
            "trackers.check_report_to(['wandb', 'tensorboard'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'wandb', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
