"""Read an offline W&B run: what a ``WandbLogger(offline=True)`` run wrote, without a server.

An offline run lives in ``SAVE_DIR/wandb/offline-run-<YYYYMMDD_HHMMSS>-<run id>/run-<run id>.wandb``:
a record log in LevelDB's log format (32 KiB blocks of chunks, each ``crc32 | length | type | data``,
after a 7-byte header ``:W&B`` + magic ``0xBEE1`` + version 0) whose records are W&B's
``wandb_internal_pb2.Record`` protobufs. :func:`read_run` returns the run's identity (id, project,
group, job type, name) and the names of what it logged: config keys (nested dicts flattened to
dotted names), history and summary keys, and media (images, tables, histograms) by type.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little-endian), version 0
BLOCK = 32 * 1024
CHUNK_HEADER = 7  # crc32 (uint32), length (uint16), type (uint8)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
MEDIA_TYPES = ("image-file", "images/separated", "table-file", "histogram")


@dataclass
class OfflineRun:
    """One offline W&B run: identity and the names of what it logged.

    ``history``/``summary``: scalar keys (``eval/domain_fid``); ``media``: key -> W&B type
    (``images/separated``, ``table-file``, ``histogram``); ``config``: dotted key -> value.
    """

    path: Path
    id: str
    project: str
    entity: str
    group: str
    job_type: str
    name: str
    config: dict = field(default_factory=dict)
    history: set = field(default_factory=set)
    summary: set = field(default_factory=set)
    media: dict = field(default_factory=dict)


def records(path: str | Path) -> list:
    """Every record of the log at ``path`` as ``wandb_internal_pb2.Record``.

    A final record cut short (a killed process) ends the read; it is not returned.

    Raises:
        ValueError: not a W&B run log (header), or a chunk whose checksum does not match (naming
            the file and byte offset).
    """
    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path}: not a W&B run log (header {data[:7]!r}, expected {HEADER!r})")
    out, pending, pos = [], b"", len(HEADER)
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        if len(chunk) < length:
            break  # cut short
        if kind == 0 and length == 0:  # zero padding
            pos += CHUNK_HEADER
            continue
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _value(item):
    if item.value_json:
        return json.loads(item.value_json)
    which = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    return getattr(item, which) if which else None


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _items(items, keys: set, media: dict) -> None:
    for item in items:
        name = ".".join(item.nested_key) if item.nested_key else item.key
        if name.endswith("._type"):
            kind = _value(item)
            if kind in MEDIA_TYPES:
                media[name[: -len("._type")]] = kind
        keys.add(name)


def read_run(path: str | Path) -> OfflineRun:
    """The run logged at ``path`` (a ``run-<id>.wandb`` file or its ``offline-run-*`` folder).

    Raises:
        ValueError: no run log there, or no run record in it.
    """
    path = Path(path)
    if path.is_dir():
        logs = sorted(path.glob("run-*.wandb"))
        if not logs:
            raise ValueError(f"{path}: no run-*.wandb log in this folder")
        path = logs[0]
    recs = records(path)
    run = next((r.run for r in recs if r.WhichOneof("record_type") == "run"), None)
    if run is None:
        raise ValueError(f"{path}: no run record (the run did not start)")
    out = OfflineRun(path, run.run_id, run.project, run.entity, run.run_group, run.job_type, run.display_name)
    history, summary, media = set(), set(), {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        if kind == "config":
            for item in r.config.update:
                _flatten(".".join(item.nested_key) if item.nested_key else item.key, _value(item), out.config)
        elif kind == "history":
            _items(r.history.item, history, media)
        elif kind == "summary":
            _items(r.summary.update, summary, media)
    prefixes = tuple(f"{k}." for k in media)
    out.history = {k for k in history if not k.startswith(prefixes)}
    out.summary = {k for k in summary if not k.startswith(prefixes)}
    out.media = media
    return out


def find_run(output_dir: str | Path) -> Path | None:
    """The newest ``offline-run-*`` folder under ``output_dir/wandb`` (None if the stage logged no
    offline W&B run there). Names start with the start time, so the last in order is the newest."""
    runs = sorted((Path(output_dir) / "wandb").glob("offline-run-*-*"))
    return runs[-1] if runs else None
