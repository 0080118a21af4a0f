"""Experiment trackers (W&B, TensorBoard) for a transformers Trainer: one tracker run per hpcrun run.

A run starts again and again (a requeue, a preemption, the deadline), each start a new process that resumes from
the newest checkpoint. Left to transformers, every start would open a new W&B run, and TensorBoard would get a new
timestamped folder per start and draw twice the steps that a killed start computed after its last checkpoint.
Here, for the whole life of a run:

- W&B: one run id, created at the first start and kept in ``<run_dir>/trackers.json``, handed to wandb through
  the environment it reads (``WANDB_RUN_ID``, ``WANDB_RESUME=allow``, ``WANDB_DIR=<run_dir>``), so each start
  resumes the same W&B run. transformers' own ``WandbCallback`` does the logging.
- TensorBoard: one folder, ``<run_dir>/tensorboard``. hpcrun's own callback replaces transformers'
  ``TensorBoardCallback`` (which picks a new ``runs/<date>_<host>`` folder per start and has no way to purge): its
  writer opens with ``purge_step = resumed step + 1``, so TensorBoard drops what a killed start wrote after its
  last checkpoint, and the recomputed steps are drawn once. Tags are transformers' own (``train/loss``, ...).
- Each start is marked as ``hpcrun/start`` (1, 2, 3, ...) in both, so restarts show on the charts.

Nothing here writes a secret: the W&B API key stays in the job's environment (or the user's ``~/.netrc``).

:func:`check_report_to` checks the names only, without importing a tracker. At import time this module needs only the
standard library and hpcrun's standard-library modules; wandb, torch and transformers are imported when callbacks are
built.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any, Dict, List, MutableMapping, Sequence, Tuple

from hpcrun.config.checks import TRACKERS, trackers
from hpcrun.errors import ConfigError
from hpcrun.rundir import RunDir
from hpcrun.rundir.atomic import atomic_write_json, read_json

log = logging.getLogger("hpcrun")
KEY = "train.report_to"
PACKAGES: Dict[str, str] = {name: name for name in TRACKERS}  # tracker name -> its pip package
TRACKERS_FILE = "trackers.json"  # {"wandb": {"run_id": ...}}: what must stay the same across starts
TENSORBOARD_DIR = "tensorboard"
START_TAG = "hpcrun/start"
WANDB_PROJECT = "hpcrun"


def check_report_to(report_to: Sequence[str]) -> List[str]:
    """The trackers named by ``train.report_to``, each once, in the user's order (a lone string counts as a list of
    one). The names' one home is :data:`hpcrun.config.checks.TRACKERS`, which the login node checks too.

    Raises:
        ConfigError: a name hpcrun does not know (mlflow too: its runs would split at every requeue).
    """
    return trackers(KEY, report_to)


def tracker_callbacks(
    report_to: Sequence[str], run_dir: Path, run_name: str, start_n: int, is_main: bool = True
) -> Tuple[List[str], List[Any]]:
    """What a start of the run gives its Trainer so that every start reports to the same tracker run.

    Call it at every start, before building ``TrainingArguments`` (W&B reads its settings from the environment,
    which this sets).

    Args:
        report_to: the user's ``train.report_to``.
        run_dir: the run directory (the same at every start).
        run_name: the run's name, the W&B run's display name unless ``WANDB_NAME`` is set.
        start_n: this start's number (1, 2, 3, ...), logged as ``hpcrun/start``.
        is_main: whether this process is global rank 0: only it creates the W&B run id (the others never open the
            W&B run, and must not race it to ``trackers.json``).

    Returns:
        The ``report_to`` list for ``TrainingArguments`` (``"tensorboard"`` taken out, replaced by a callback), and
        the callbacks to add to the Trainer.

    Raises:
        ConfigError: an unknown tracker, or one whose package is not installed.
    """
    names = check_report_to(report_to)
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(KEY, name, problem=f"needs the {PACKAGES[name]} package, which is not installed",
                              hint=f"pip install {PACKAGES[name]} in the job's environment")
    run_dir = Path(run_dir)
    report: List[str] = []
    callbacks: List[Any] = []
    if "wandb" in names:
        run_id = wandb_environment(run_dir, run_name, os.environ) if is_main else None
        _forget_wandb_session(run_id)
        report.append("wandb")
        callbacks.append(_wandb_start_callback(start_n, run_id))
    if "tensorboard" in names:
        callbacks.append(_tensorboard_callback(RunDir(run_dir).task_file(TENSORBOARD_DIR), start_n))
    return report, callbacks


def finish_trackers() -> None:
    """Ends this start's W&B run and waits until everything it logged is written, before the process exits.

    A start that stopped for a requeue is killed with its job's processes (``scontrol requeue``), W&B's writer
    service (wandb-core) among them: rows it had not written to ``<run_dir>/wandb`` yet were lost (seen on the dev
    cluster: a whole first start's history, in offline mode). transformers' WandbCallback never ends its run itself.
    ``wandb.finish()`` alone is not enough: it can return before wandb-core has written the run's file to its end
    (wandb 0.31, offline: 3 of 30 runs read right after it lacked rows or the exit record). ``wandb.teardown()``
    then waits for wandb-core to exit, which closes the file (about 10 ms); the next ``wandb.init`` of the process
    starts a new one. TensorBoard's writer flushes at every log.

    A tracker must not cost the run its requeue or its final weights: where wandb-core is gone (killed, crashed:
    both calls then raise ConnectionResetError; a non-zero exit makes ``teardown`` raise SystemExit), the start
    says so and goes on.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    run_id = wandb.run.id
    try:
        wandb.finish()
    except Exception as exc:  # noqa: BLE001 (whatever wandb raises, the run goes on)
        log.warning("W&B: could not finish run %s (%s: %s); what it had not written yet may be missing",
                    run_id, type(exc).__name__, exc)
    try:
        wandb.teardown()
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        log.warning("W&B: its service did not end cleanly (%s: %s); run %s may miss its last rows",
                    type(exc).__name__, exc, run_id)


def wandb_run_id(run_dir: Path) -> str:
    """The run's one W&B run id: the one in ``trackers.json``, or (first start) a new one, stored before it is used.

    Never taken from ``WANDB_RUN_ID``: in the environment a job inherits, that would give every run the same id.
    """
    path = RunDir(run_dir).task_file(TRACKERS_FILE)
    record = read_json(path, default={}) or {}
    stored = (record.get("wandb") or {}).get("run_id")
    if stored:
        return stored
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as W&B's own ids
    atomic_write_json(path, {**record, "wandb": {"run_id": run_id}})
    return run_id


def wandb_environment(run_dir: Path, run_name: str, environ: MutableMapping[str, str]) -> str:
    """Sets what wandb and transformers' WandbCallback read at ``wandb.init``, and returns the run id.

    ``WANDB_MODE`` (``offline`` on nodes without internet) and ``WANDB_API_KEY`` are the user's, left as they are.
    """
    run_id = wandb_run_id(run_dir)
    if environ.get("WANDB_RUN_ID", run_id) != run_id:
        log.warning("W&B: WANDB_RUN_ID=%s replaced by this run's own id %s", environ["WANDB_RUN_ID"], run_id)
    environ["WANDB_RUN_ID"] = run_id
    environ["WANDB_RESUME"] = "allow"  # the first start creates the run, the next ones resume it
    environ["WANDB_DIR"] = str(run_dir)  # wandb writes <run_dir>/wandb/(offline-)run-<time>-<id>/ per start
    environ.setdefault("WANDB_NAME", run_name)
    environ.setdefault("WANDB_PROJECT", WANDB_PROJECT)  # transformers' default would be "huggingface"
    log.info("W&B: run %s in project %s (%s)", run_id, environ["WANDB_PROJECT"],
             environ.get("WANDB_MODE") or "online")
    return run_id


def _forget_wandb_session(run_id: Any) -> None:
    """Makes the next ``wandb.init`` of this process read the environment just set.

    wandb reads its environment once per process, when its session starts (``wandb.setup``, at the first
    ``wandb.init``), and ignores later changes with a warning (wandb/sdk/wandb_init.py,
    ``warn_env_vars_change_after_setup``). A process that used wandb before (an earlier Trainer in the same process, a
    test) would log to that session's run id and folder. With no run open, that session is closed (``wandb.teardown``)
    so the next one reads the new environment. A start in a fresh process, the usual case, has no session: nothing
    is touched. (The session is wandb's private ``_singleton``; should it move, nothing is closed and
    :func:`_wandb_start_callback` warns when the run it finds is not the run's own.)
    """
    wandb = sys.modules.get("wandb")
    setup = sys.modules.get("wandb.sdk.wandb_setup")
    if wandb is None or setup is None or getattr(setup, "_singleton", None) is None:
        return
    if wandb.run is None:
        wandb.teardown()
    elif run_id is not None and wandb.run.id != run_id:
        log.warning("W&B: run %s is open already: the Trainer logs to it, not to this run's %s", wandb.run.id, run_id)


def _wandb_start_callback(start_n: int, run_id: Any) -> Any:
    """A TrainerCallback that adds ``hpcrun/start`` to the first row this start logs to W&B, and says when the open
    W&B run is not the run's own."""
    from transformers import TrainerCallback

    class WandbStart(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            import wandb

            if wandb.run is None:  # WandbCallback opens the run in its on_train_begin, which runs before this one
                log.warning("W&B: no run is open at train begin; start %d is not marked", start_n)
                return
            if run_id is not None and wandb.run.id != run_id:
                log.warning("W&B: logging to run %s, not to this run's %s (%s)", wandb.run.id, run_id, TRACKERS_FILE)
            # commit=False: merged into the WandbCallback's next row (the first step this start logs), so the start
            # adds no row of its own (a row at the resumed step would repeat a train/global_step already logged)
            wandb.run.log({START_TAG: start_n}, commit=False)
            log.info("W&B: start %d of run %s, from step %d", start_n, wandb.run.id, state.global_step)

    return WandbStart()


def _tensorboard_callback(log_dir: Path, start_n: int) -> Any:
    """A TrainerCallback that writes TensorBoard events into ``log_dir``, the same at every start, purging the
    events a previous start wrote after the step this start resumes from."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainerCallback
    from transformers.integrations.integration_utils import rewrite_logs

    class TensorBoardTracker(TrainerCallback):
        writer: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero or self.writer is not None:
                return
            step = state.global_step  # the checkpoint's step: the Trainer loaded it before calling this
            # A start killed after its last checkpoint logged steps past it; this start computes them again. The
            # writer's first events are a restart marker at step+1: TensorBoard drops every earlier event of this
            # folder at that step or later.
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=step + 1)
            self.writer.add_scalar(START_TAG, start_n, step)
            self.writer.flush()
            log.info("TensorBoard: start %d writes %s from step %d", start_n, log_dir, step)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if self.writer is None or not logs:
                return
            for tag, value in rewrite_logs(logs).items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(tag, value, state.global_step)
                elif isinstance(value, str):
                    self.writer.add_text(tag, value, state.global_step)
            self.writer.flush()  # a kill loses nothing that was logged

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    return TensorBoardTracker()
