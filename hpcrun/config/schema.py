"""The config schema of hpcrun's own sections (run, cluster, checkpoint, task), stored in Hydra's ConfigStore.

Values live in YAML under ``conf/``; these classes give every key its type, its default and a one-line
description (the comment above it, which ``hpcrun --help`` and docs/configuration.md show). Each class checks its
own values in ``check()`` and raises :class:`~hpcrun.errors.ConfigError` naming the full key and the bad value.
Every other section belongs to the task: the built-in task's model/data/train are in hpcrun/tasks/settings.py, and
:class:`Config` holds both (docs/custom-tasks.md).

Submitting side: standard library, omegaconf and hydra only.
"""

from __future__ import annotations

import inspect
import re
import signal as _signal
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hpcrun.config.checks import duration as _duration
from hpcrun.config.checks import positive_int as _positive_int
from hpcrun.errors import ConfigError

LAUNCHERS = ("local", "slurm")
BUILTIN_TASK = "hpcrun.tasks.causal_lm.train"
# The built-in task's settings (model, data, train): hpcrun/tasks/settings.py, torch-free.
BUILTIN_SETTINGS = "hpcrun.tasks.settings.CausalLMSettings"
# sbatch options hpcrun writes itself; setting them through cluster.sbatch_extra would fight hpcrun.
MANAGED_SBATCH = frozenset(
    {"time", "requeue", "signal", "output", "error", "array", "job-name", "open-mode", "nodes", "partition"}
)
_MEM = re.compile(r"^\d+[KMGT]?$")


@dataclass
class ContainerConfig:
    """Run the job inside a Singularity/Apptainer container (NYU Greene's software model)."""

    # Wrap the job's python in `singularity exec`; false runs it on the host.
    enabled: bool = False
    # The container runtime command (singularity or apptainer).
    runtime: str = "singularity"
    # The .sif image to run.
    image: Optional[str] = None
    # An ext3 overlay holding the Python environment, mounted read-only (empty: none).
    overlay: Optional[str] = None
    # A script sourced inside the container before python starts (activates the overlay's environment).
    env_script: Optional[str] = "/ext3/env.sh"
    # The python inside the container.
    python: str = "python"
    # Pass --nv so the container sees the GPUs.
    nv: bool = True
    # Extra --bind mounts, e.g. ["/scratch", "/vast"].
    binds: List[str] = field(default_factory=list)

    def check(self) -> None:
        if self.enabled and not self.image:
            raise ConfigError("cluster.container.image", self.image, "a .sif image path when the container is enabled")
        if self.runtime not in ("singularity", "apptainer"):
            raise ConfigError("cluster.container.runtime", self.runtime, choices=("singularity", "apptainer"))


@dataclass
class ClusterConfig:
    """Where and how the job runs; the Slurm keys map one to one onto sbatch options (through submitit)."""

    # A label for this cluster, shown in messages.
    name: str = "local"
    # local: run in the foreground on this machine; slurm: submit with sbatch and return at once.
    launcher: str = "local"
    # Slurm partition (empty: the site's default).
    partition: Optional[str] = None
    # Slurm account to charge (empty: your default account).
    account: Optional[str] = None
    # Slurm quality of service (empty: the partition's default).
    qos: Optional[str] = None
    # Wall-clock limit, in Slurm's forms (48:00:00, 2-00:00:00) or with a unit (90m, 2d). Locally too.
    time: str = "1:00:00"
    # The longest time limit the site accepts; a longer cluster.time is refused before anything is submitted.
    max_time: Optional[str] = None
    # Number of nodes.
    nodes: int = 1
    # Processes per node (empty: one per GPU, or one on a CPU-only job).
    tasks_per_node: Optional[int] = None
    # GPUs per node (0: CPU only).
    gpus_per_node: int = 0
    # GPU type to ask for, e.g. a100 (empty: any).
    gpu_type: Optional[str] = None
    # The GPU types this site has; cluster.gpu_type must be one of them (empty list: not checked).
    gpu_types: List[str] = field(default_factory=list)
    # The most GPUs one node of this site has (a larger request can never start).
    max_gpus_per_node: int = 8
    # CPU cores per process.
    cpus_per_task: int = 2
    # Memory per node, e.g. 64G (empty: the site's default).
    mem: Optional[str] = None
    # Slurm node constraint, e.g. "a100|h100" (empty: none).
    constraint: Optional[str] = None
    # The signal Slurm sends before the time limit (sbatch --signal, to every job step).
    signal: str = "USR2"
    # How long before the time limit that signal comes, e.g. 120s.
    signal_delay: str = "120s"
    # Job arrays (sweeps) run at most this many tasks at once (sbatch --array=...%K; 0: no limit).
    array_throttle: int = 16
    # Extra sbatch options, e.g. {mail-type: END, mail-user: me@nyu.edu}; a value of true writes a bare flag.
    sbatch_extra: Dict[str, Any] = field(default_factory=dict)
    # Extra arguments for srun.
    srun_args: List[str] = field(default_factory=list)
    # Shell lines run in the batch script before srun (module load ..., export ...).
    setup: List[str] = field(default_factory=list)
    # Run inside a container (see cluster.container.*).
    container: ContainerConfig = field(default_factory=ContainerConfig)
    # Where run directories go unless run.dir is given (relative paths are taken from where hpcrun is started).
    run_root: str = "runs"
    # The python that runs the job on the compute nodes (empty: the one running hpcrun now).
    python: Optional[str] = None

    def time_seconds(self) -> int:
        return _duration("cluster.time", self.time)

    def signal_delay_seconds(self) -> int:
        return _duration("cluster.signal_delay", self.signal_delay)

    def gpu_kind(self) -> Optional[str]:
        """What a start's steps are measured and compared by (the ledger, ``plan --soonest``): the GPU type, "gpu"
        for GPUs of no given type, None on CPUs."""
        return (self.gpu_type or "gpu") if self.gpus_per_node else None

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError("cluster.launcher", self.launcher, choices=LAUNCHERS)
        limit = self.time_seconds()
        if limit <= 0:
            raise ConfigError("cluster.time", self.time, "a positive duration")
        if self.max_time is not None and limit > _duration("cluster.max_time", self.max_time):
            raise ConfigError("cluster.time", self.time, f"at most cluster.max_time={self.max_time} on {self.name}")
        _positive_int("cluster.nodes", self.nodes, 1024)
        if self.tasks_per_node is None:  # one process per GPU
            self.tasks_per_node = max(1, self.gpus_per_node) if isinstance(self.gpus_per_node, int) else 1
        _positive_int("cluster.tasks_per_node", self.tasks_per_node, 256)
        _positive_int("cluster.cpus_per_task", self.cpus_per_task, 1024)
        if not isinstance(self.array_throttle, int) or self.array_throttle < 0:
            raise ConfigError("cluster.array_throttle", self.array_throttle, "0 (no limit) or a positive integer")
        if not isinstance(self.gpus_per_node, int) or not 0 <= self.gpus_per_node <= self.max_gpus_per_node:
            raise ConfigError(
                "cluster.gpus_per_node",
                self.gpus_per_node,
                f"an integer from 0 to {self.max_gpus_per_node} (cluster.max_gpus_per_node on {self.name})",
            )
        if self.gpu_type is not None and self.gpu_types and self.gpu_type not in self.gpu_types:
            raise ConfigError("cluster.gpu_type", self.gpu_type, choices=self.gpu_types)
        if self.gpu_type is not None and self.gpus_per_node == 0:
            raise ConfigError("cluster.gpu_type", self.gpu_type, "no GPU type when cluster.gpus_per_node=0")
        if self.mem is not None and not _MEM.match(str(self.mem)):
            raise ConfigError("cluster.mem", self.mem, "a Slurm memory size such as 64G or 500M")
        if f"SIG{self.signal}" not in _signal.Signals.__members__:
            raise ConfigError("cluster.signal", self.signal, "a signal name without SIG, such as USR2 or TERM")
        delay = self.signal_delay_seconds()
        if self.launcher == "slurm" and not 0 < delay < limit:
            raise ConfigError("cluster.signal_delay", self.signal_delay, f"between 0 and cluster.time={self.time}")
        for key in self.sbatch_extra:
            if str(key).replace("_", "-") in MANAGED_SBATCH:
                raise ConfigError(
                    f"cluster.sbatch_extra.{key}",
                    self.sbatch_extra[key],
                    f"not one hpcrun sets itself ({', '.join(sorted(MANAGED_SBATCH))}): use the cluster.* key",
                )
        self.container.check()


@dataclass
class RunConfig:
    """The run: its identity, its directory, and how often it may come back."""

    # The run's name; experiments set it to their own name.
    name: str = "default"
    # The run's identity under its name: its non-launcher overrides, e.g. train.lr=3e-4 (hpcrun sets it).
    id: str = "default"
    # The run directory (default: <cluster.run_root>/<run.name>/<run.id>); made absolute when the run is launched.
    dir: str = "${cluster.run_root}/${run.name}/${run.id}"
    # Start over: move an existing run directory aside (to <run.dir>.replaced-<time>) instead of resuming it.
    fresh: bool = False
    # How many times the job may requeue itself (after a deadline save or a preemption) before it stops.
    max_requeues: int = 20
    # How many restarts in a row may make no training progress before the run stops (the crash-loop breaker).
    max_restarts_without_progress: int = 3

    def check(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError("run.name", self.name, "a non-empty name without '/' that does not start with '.'")
        if not self.id or "/" in self.id or self.id.startswith("."):
            raise ConfigError("run.id", self.id, "a non-empty name without '/' that does not start with '.'")
        if not str(self.dir).strip():
            raise ConfigError("run.dir", self.dir, "a directory path")
        if self.max_requeues < 0:
            raise ConfigError("run.max_requeues", self.max_requeues, "zero or more")
        if self.max_restarts_without_progress < 0:
            raise ConfigError("run.max_restarts_without_progress", self.max_restarts_without_progress, "zero or more")


@dataclass
class CheckpointConfig:
    """When and how the run saves: by wall clock, and just before its time runs out."""

    # Wall-clock interval between periodic saves (30m, 90s, 2h; 0: none, only the final and deadline saves; auto:
    # from the measured save time and the interruptions seen so far, Young/Daly, docs/checkpointing.md).
    save_every: str = "30m"
    # How many complete checkpoints to keep (at least 2: the newest may be half-written).
    keep_last: int = 2
    # The final save must finish this long before the job's end (on top of the measured step and save times).
    deadline_margin: str = "2m"
    # How long a save is assumed to take until one has been measured.
    save_time_guess: str = "60s"
    # Write periodic saves in the background: training waits only while the state is copied to CPU memory; the
    # files, their fsync and the commit follow while it trains (docs/checkpointing.md). Saves that stop the run
    # (a signal, the deadline) are always written before it stops. false: every save is written before training
    # goes on.
    async_save: bool = True

    @property
    def save_every_auto(self) -> bool:
        return str(self.save_every).strip().lower() == "auto"

    def save_every_seconds(self) -> Optional[int]:
        """The fixed interval (None: no periodic saves, or save_every=auto)."""
        if self.save_every_auto:
            return None
        return _duration("checkpoint.save_every", self.save_every) or None

    def check(self) -> None:
        self.save_every_seconds()
        if not isinstance(self.keep_last, int) or self.keep_last < 2:
            raise ConfigError("checkpoint.keep_last", self.keep_last, "at least 2 (the newest may be half-written)")
        _duration("checkpoint.deadline_margin", self.deadline_margin)
        _duration("checkpoint.save_time_guess", self.save_time_guess)


@dataclass
class TaskConfig:
    """What the job runs: any importable function taking (config, context), and the settings it declares."""

    # Dotted path of the task function, e.g. my_module.train (my_module.py in the directory hpcrun runs from).
    _target_: str = BUILTIN_TASK
    # Dotted path of a dataclass whose fields are the task's own sections, checked like hpcrun's (empty: the built-in
    # task's for the built-in task; none for others: their sections are free-form). See docs/custom-tasks.md.
    settings: Optional[str] = None

    def settings_path(self) -> Optional[str]:
        """The settings class the task declares; the built-in task's by default for the built-in task."""
        if self.settings:
            return self.settings
        return BUILTIN_SETTINGS if self._target_ == BUILTIN_TASK else None

    def check_importable(self, cwd: Any) -> None:
        """The task's module can be found (not imported: that may load torch) from ``cwd``, as the job will."""
        import importlib.util
        import sys

        module, _, attr = self._target_.rpartition(".")
        if not module or not attr.isidentifier():
            raise ConfigError("task._target_", self._target_, "a dotted path to a function, e.g. my_module.train")
        sys.path.insert(0, str(cwd))
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        finally:
            sys.path.remove(str(cwd))
        if spec is None:
            raise ConfigError("task._target_", self._target_,
                              f"a function in an importable module (no module {module} here, in {cwd}, or installed)")


# hpcrun's own sections, which every run has; everything else in a config belongs to the task.
SECTIONS: Dict[str, type] = {"run": RunConfig, "cluster": ClusterConfig, "checkpoint": CheckpointConfig,
                             "task": TaskConfig}
# Names a task's section cannot have: hpcrun's sections, Config's own attributes, Hydra's node.
RESERVED = frozenset({*SECTIONS, "settings", "extra", "hydra"})


@dataclass
class Config:
    """The whole config of one run: hpcrun's sections, typed, and the task's sections.

    The task's sections are attributes too: ``cfg.train.max_steps`` (a section of the declared settings, a
    dataclass) or ``cfg.mytask.width`` (a free-form section, an OmegaConf DictConfig). Made by
    :func:`hpcrun.config.compose.compose`, ``load_saved`` and ``from_container``; ``to_container`` turns it back.
    """

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    # The task's declared settings: an instance of the task.settings dataclass (None: it declares none).
    settings: Any = None
    # The task's free-form sections, by name, as given (unchecked).
    extra: Dict[str, Any] = field(default_factory=dict)

    def sections(self) -> Dict[str, Any]:
        """The task's sections by name: the declared ones first, then the free-form ones."""
        declared = {f.name: getattr(self.settings, f.name) for f in fields(self.settings)} if self.settings else {}
        return {**declared, **self.extra}

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Dunder names (copy, pickle probe for __deepcopy__, __setstate__
        # before __dict__ is filled) must fail plainly rather than recurse into the sections.
        if name.startswith("__") or "extra" not in self.__dict__:
            raise AttributeError(name)
        settings, extra = self.__dict__["settings"], self.__dict__["extra"]
        if settings is not None and name in getattr(settings, "__dataclass_fields__", ()):
            return getattr(settings, name)
        if name in extra:
            return extra[name]
        have = ", ".join(self.sections()) or "none"
        raise AttributeError(f"the config has no section {name!r} (task._target_={self.task._target_} has: {have})")

    def check(self) -> None:
        """Checks every section, then the settings' checks across sections; raises ConfigError naming the first bad
        key."""
        for section in (self.run, self.cluster, self.checkpoint):
            section.check()
        if self.settings is None:
            return
        for f in fields(self.settings):
            check = getattr(getattr(self.settings, f.name), "check", None)
            if callable(check):
                check()
        across = getattr(self.settings, "check", None)
        if not callable(across):
            return
        if inspect.signature(across).parameters:  # check(self, cfg): across sections, or against hpcrun's keys
            across(self)
        else:
            across()


# The config groups users pick from (conf/<group>/<choice>.yaml); "experiment" is global (# @package _global_).
# task=causal_lm (the default) brings the model and data groups; a user's conf/ may add groups of its own.
GROUPS = ("cluster", "task", "model", "data", "experiment")


_registered = False


def login_name() -> str:
    """$USER, else the account name of this process's uid."""
    import os
    import pwd

    name = os.environ.get("USER")
    if name:
        return name
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise ValueError("USER is not set and this uid has no name in the password database: set USER") from None


def register() -> None:
    """Stores hpcrun's sections in Hydra's ConfigStore, once per process; conf/hpcrun.yaml extends them.

    The root is a plain mapping, so a task's sections (from its conf/ files or ``+KEY=VALUE``) can sit beside
    hpcrun's; they are typed after composition, by the task's settings class (hpcrun/config/typed.py).
    Once: storing converts the dataclasses to OmegaConf nodes, which a 500-point sweep would pay 500 times.
    """
    global _registered
    if _registered:
        return
    from hydra.conf import HydraConf
    from hydra.core.config_store import ConfigStore

    _registered = True
    from omegaconf import OmegaConf

    # ${hpcrun.user:}: the login name, for paths such as /scratch/${hpcrun.user:}: $USER, or, where USER is unset (a
    # container, cron, a bare `env -i`), the password database's name for this uid: never a silent "unknown".
    OmegaConf.register_new_resolver("hpcrun.user", login_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="hpcrun_schema", node=dict(SECTIONS))
    # hpcrun composes with Hydra's config loader but never runs Hydra's app machinery (launchers, sweepers, job
    # logging, help). Hydra's own config would load those groups' YAML on every composition, about a third of
    # `hpcrun render`'s time on a login node; its bare schema is all the loader needs.
    cs.store(group="hydra", name="config", node=HydraConf(defaults=[]), provider="hpcrun")
