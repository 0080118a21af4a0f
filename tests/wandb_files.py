"""Reading what W&B wrote offline: wandb 0.31 ships no Python reader for its ``.wandb`` files."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def wandb_records(path: Path):
    """The records of a ``.wandb`` file (LevelDB log format after a 7-byte ``:W&B`` header; wandb 0.31 ships no
    Python reader)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, payload = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(payload)
            yield record
            payload = b""


def wandb_history(run_dir: Path, run_id: str):
    """Every history row W&B wrote for ``run_id`` in ``run_dir``, start after start."""
    folders = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}*"))
    rows = []
    for folder in folders:
        for record in wandb_records(folder / f"run-{run_id}.wandb"):
            if record.WhichOneof("record_type") == "history":
                # a key with a "/" is stored split, as nested_key ["train", "loss"]
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return folders, rows
