"""Saves whose writes are deferred: the state is copied out now, the files are written later (in the background).

:func:`capture_writes` is a context manager around a framework's own save code (the Trainer's
``_save_checkpoint``, or a loop's ``torch.save`` calls). While it is active, a ``torch.save`` or a safetensors
``save_file`` whose target lies inside the given folder does not write: it copies the state it was handed (every
tensor to CPU memory: a copy on CPU; on a GPU, into pinned memory, then one synchronize) and records the write. The
caller then performs the recorded writes (:meth:`PendingWrite.write`), in a background thread, while training
goes on: the next optimizer step may change the live tensors, never the copies. Any other write (small JSON files,
a tokenizer, a write outside the folder) happens at once, as without it.

What is intercepted: ``torch.save`` (looked up on the torch module at each call, as the Trainer, accelerate and
peft call it), and safetensors' ``save_file`` through the two module functions it calls (``_flatten_as_ptr`` and
``serialize_file``, safetensors 0.5 to 0.8; the names every importer of ``save_file`` reaches, however it bound
``save_file``). With a safetensors whose internals differ, its writes are simply not deferred (logged once), and
the save stays correct, only less of it runs in the background. torch.distributed.checkpoint's writes (FSDP's
sharded state) are not intercepted: they stay synchronous.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

log = logging.getLogger("hpcrun")
_active: Optional["_Capture"] = None
_lock = threading.Lock()
_warned = False


@dataclass
class PendingWrite:
    """One deferred write: ``write()`` performs it with the copied state."""

    path: Path
    nbytes: int
    _write: Callable[[], None] = field(repr=False)

    def write(self) -> None:
        self._write()


@dataclass
class _Capture:
    folder: Path
    writes: List[PendingWrite] = field(default_factory=list)
    keep_alive: Any = None  # the copies safetensors' flattening points into, until serialize_file takes them

    def inside(self, target: Any) -> bool:
        if not isinstance(target, (str, os.PathLike)):
            return False  # a file object or buffer: written at once
        try:
            return Path(os.path.abspath(target)).is_relative_to(self.folder)
        except ValueError:
            return False


def _cpu_copy(obj: Any, pinned: List[Any]) -> Any:
    """``obj`` with every tensor copied to CPU memory and every container copied (nothing shared with the live
    state); other values deep-copied."""
    import torch

    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor and not isinstance(obj, torch.nn.Parameter):
            raise _NotPlain(type(obj).__name__)  # a DTensor or another subclass: written at once
        t = obj.detach()
        if t.device.type == "cpu":
            return t.clone()
        out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=torch.cuda.is_available())
        out.copy_(t, non_blocking=True)
        pinned.append(t.device)
        return out
    if isinstance(obj, dict):
        return type(obj)((k, _cpu_copy(v, pinned)) for k, v in obj.items()) if type(obj) is not dict else \
            {k: _cpu_copy(v, pinned) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_copy(v, pinned) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_cpu_copy(v, pinned) for v in obj)
    return copy.deepcopy(obj)


class _NotPlain(Exception):
    pass


def _synchronize(devices: List[Any]) -> None:
    import torch

    for device in {str(d) for d in devices}:
        torch.cuda.synchronize(device)


def _sizes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_sizes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_sizes(v) for v in obj)
    return 0


def _install() -> None:
    """Wraps torch.save and safetensors' writer once per process; the wrappers defer only inside a capture."""
    import torch

    if getattr(torch.save, "_hpcrun_deferred", False):
        return
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        capture = _active
        if capture is None or not capture.inside(f):
            return real_save(obj, f, *args, **kwargs)
        try:
            pinned: List[Any] = []
            state = _cpu_copy(obj, pinned)
            _synchronize(pinned)
        except Exception:  # noqa: BLE001 - a DTensor, an object deepcopy refuses: written at once, as without us
            return real_save(obj, f, *args, **kwargs)
        capture.writes.append(PendingWrite(Path(f), _sizes(state), lambda: real_save(state, f, *args, **kwargs)))

    save._hpcrun_deferred = True  # type: ignore[attr-defined]
    torch.save = save
    _install_safetensors()


def _install_safetensors() -> None:
    global _warned
    try:
        import safetensors.torch as st
    except ImportError:
        return
    real_flatten = getattr(st, "_flatten_as_ptr", None)
    real_serialize_file = getattr(st, "serialize_file", None)
    if real_flatten is None or real_serialize_file is None:
        if not _warned:
            _warned = True
            log.info("this safetensors has other internals: its files are written at save time, not in the "
                     "background")
        return

    def flatten(tensors: Any, keep_alive: List[Any]) -> Any:
        capture = _active
        if capture is None:
            return real_flatten(tensors, keep_alive)
        try:
            pinned: List[Any] = []
            copies = {k: _cpu_copy(v, pinned) for k, v in tensors.items()}
            _synchronize(pinned)
        except Exception:  # noqa: BLE001 - not copyable here: serialize_file writes it at once
            capture.keep_alive = None
            return real_flatten(tensors, keep_alive)
        keep_alive.append(copies)
        capture.keep_alive = keep_alive
        return real_flatten(copies, keep_alive)

    def serialize_file(flat: Any, filename: Any, metadata: Any = None) -> None:
        capture = _active
        if capture is None or not capture.inside(filename) or capture.keep_alive is None:
            return real_serialize_file(flat, filename, metadata=metadata)  # (no copies: the live tensors, now)
        alive = capture.keep_alive  # the copies the flattened pointers point into: kept until written
        capture.keep_alive = None
        nbytes = sum(getattr(spec, "data_len", 0) for spec in flat.values()) if isinstance(flat, dict) else 0
        capture.writes.append(PendingWrite(Path(filename), nbytes,
                                           lambda: (real_serialize_file(flat, filename, metadata=metadata), alive)))

    st._flatten_as_ptr = flatten
    st.serialize_file = serialize_file


@contextlib.contextmanager
def capture_writes(folder: Path) -> Iterator[List[PendingWrite]]:
    """Defers the torch.save and safetensors writes into ``folder`` made inside the block (see the module
    docstring); yields the list the deferred writes are added to, in the order they were asked for."""
    global _active
    _install()
    capture = _Capture(Path(os.path.abspath(folder)))
    with _lock:
        _active = capture
    try:
        yield capture.writes
    finally:
        with _lock:
            _active = None
