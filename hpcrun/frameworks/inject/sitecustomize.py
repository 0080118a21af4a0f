"""hpcrun's sitecustomize: read by every python a command under ``hpcrun run`` starts (first on its PYTHONPATH).

It does three small things, then runs the sitecustomize it hides, if any (a distribution's or a conda env's):

1. in a launcher's workers, it undoes the stop signals the launcher was started ignoring (hpcrun/job/processes.py),
   and in the launcher itself it keeps them ignored (a handler it would set for one is not installed);
2. when ``transformers.trainer`` is imported, it hands the ``Trainer`` class to
   :func:`hpcrun.frameworks.transformers.adopt.install` (unless HPCRUN_PATCH_TRAINER=0);
3. nothing else: no hpcrun import until a Trainer is imported, so a command that has none pays nothing.

A failure here must never stop the user's command: it is reported on stderr and the command runs unadopted.
"""

import os
import sys


def _restore_signals() -> None:
    import signal

    names = os.environ.get("HPCRUN_LAUNCHER_IGNORES", "")
    if not names:
        return  # not under a launcher
    if str(os.getppid()) == os.environ.get("HPCRUN_WRAPPER_PID"):
        _keep_ignoring(names)  # the launcher itself
        return
    for name in names.split(","):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL)


def _keep_ignoring(names: str) -> None:
    """In a launcher: its stop signals stay ignored, so that only its workers act on them (they save, exit, and
    the launcher then exits 0). accelerate's single-process launcher (and trl's commands, through it) sets its
    own SIGTERM handler, which exits and kills the workers 5 s later: a scancel, preemption or requeue cut every
    save longer than that. A handler for one of these, while it is ignored, is not installed."""
    import signal

    held = {getattr(signal, n) for n in names.split(",") if hasattr(signal, n)}
    install = signal.signal

    def guarded(signalnum, handler):
        if signalnum in held and signal.getsignal(signalnum) == signal.SIG_IGN:
            return signal.SIG_IGN  # (what it asked to replace: restored later, it stays ignored)
        return install(signalnum, handler)

    guarded.__wrapped__ = install
    signal.signal = guarded


class _TrainerHook:
    """A meta-path finder that lets ``transformers.trainer`` load as usual, then adopts its Trainer."""

    TARGET = "transformers.trainer"

    def find_spec(self, name, path, target=None):  # noqa: D102 - importlib protocol
        if name != self.TARGET:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            try:
                from hpcrun.frameworks.transformers.adopt import install

                install(module.Trainer)
            except Exception as exc:  # noqa: BLE001 - the user's command must run regardless
                print(f"hpcrun: could not adopt transformers' Trainer ({type(exc).__name__}: {exc}); it runs "
                      "without hpcrun's saves and resume", file=sys.stderr, flush=True)

        spec.loader.exec_module = exec_module
        return spec


def _chain() -> None:
    """Runs the next sitecustomize on the path, the one this file hides."""
    import importlib.util
    from importlib.machinery import PathFinder

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


try:
    _restore_signals()
    if os.environ.get("HPCRUN_RUN_DIR") and os.environ.get("HPCRUN_PATCH_TRAINER", "1") != "0":
        sys.meta_path.insert(0, _TrainerHook())
except Exception as _exc:  # noqa: BLE001
    print(f"hpcrun: sitecustomize: {_exc}", file=sys.stderr, flush=True)
_chain()
