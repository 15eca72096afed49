"""Which checkpoint a run may resume: only one written by the same run.

A stage that trains records its identity in ``{output_dir}/run-identity.json`` before fitting
(beside, not in, the checkpoint folder, which Lightning expects empty at a fresh start; a record in
``checkpoints/run-identity.json``, where earlier versions wrote it, is read too): the resolved
config (without :data:`IGNORED`, which only says where results go and how they are logged) and a fingerprint of the samples it trains and evaluates on (sha256 of the sorted
sample_ids, :func:`alchemist_pl.scores.dataset_fingerprint`). A rerun into the same folder resumes
``checkpoints/last.ckpt`` only when both match; otherwise it refuses, naming the folder and the
differing keys (:class:`ResumeError`): it never continues another run's checkpoint and relabels its
results. While a stage trains it holds a lock on ``{output_dir}/.run.lock``, so a second run started
into the same folder (two runs started in the same second sharing the timestamped default folder)
is refused at once instead of writing over the first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from .runtime import container, is_global_zero, write_summary
from .scores import dataset_fingerprint

log = logging.getLogger(__name__)

IDENTITY_FILE = "run-identity.json"
#: config keys a rerun may change: where results go, how they are logged and checkpointed, how
#: many CPU threads run it, and how long training runs (a rerun with a longer length continues the run)
IGNORED = (
    "paths",
    "threads",
    "logger",
    "callbacks",
    "train.max_steps",
    "train.epochs",
    "rate.max_iterations",
    "rate.max_epochs",
)


class ResumeError(RuntimeError):
    """The output folder holds a checkpoint of another run, or another run is writing into it."""


def run_identity(config: dict, data: dict[str, str]) -> dict:
    """``{"config": flattened config without IGNORED keys, "data": data}`` (JSON values only).

    ``data``: a fingerprint per data role, e.g. ``{"data.train_path": <sha256 of sample_ids>}``.
    """
    flat = {k: v for k, v in _flatten(config).items() if not any(k == i or k.startswith(i + ".") for i in IGNORED)}
    return json.loads(json.dumps({"config": flat, "data": data}, default=str))


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


def differences(stored: dict, current: dict) -> list[str]:
    """``"key: stored -> current"`` for every config key and data fingerprint that differs."""
    out = []
    for part in ("config", "data"):
        a, b = stored.get(part, {}), current.get(part, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k, "<unset>") != b.get(k, "<unset>"):
                label = k if part == "config" else f"samples of {k} (fingerprint)"
                out.append(f"{label}: {_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))}")
    return out


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def resume_checkpoint(output_dir, identity: dict) -> str | None:
    """The checkpoint to resume from, or None to start fresh.

    Returns ``{output_dir}/checkpoints/last.ckpt`` when it exists and the identity recorded in
    ``{output_dir}/run-identity.json`` (else ``{output_dir}/checkpoints/run-identity.json``) equals
    ``identity``; None when there is no checkpoint.

    Raises:
        ResumeError: a checkpoint exists and its run's config or data differ (names the folder and
            the differing keys), or it has no recorded identity.
    """
    folder = Path(output_dir) / "checkpoints"
    ckpt, record = folder / "last.ckpt", Path(output_dir) / IDENTITY_FILE
    if not ckpt.exists():
        return None
    if not record.exists() and (folder / IDENTITY_FILE).exists():
        record = folder / IDENTITY_FILE
    if not record.exists():
        raise ResumeError(
            f"{folder}: last.ckpt has no record of the run that wrote it ({record}); it cannot be told "
            f"apart from another run's: choose another output folder (hydra.run.dir=...) or delete {folder}"
        )
    diff = differences(json.loads(record.read_text()), identity)
    if diff:
        shown = "; ".join(diff)
        raise ResumeError(
            f"{folder} holds the checkpoint of a different run, which this run would resume and relabel: "
            f"{shown}. Choose another output folder (hydra.run.dir=...) or delete {folder} to start fresh"
        )
    log.info("resuming from %s (same config and data)", ckpt)
    return str(ckpt)


def record_identity(output_dir, identity: dict) -> Path:
    """Write ``identity`` to ``{output_dir}/run-identity.json`` (atomically)."""
    path = Path(output_dir) / IDENTITY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


@contextmanager
def run_lock(output_dir):
    """Hold an exclusive lock on ``{output_dir}/.run.lock`` for the block (released on exit or death).

    Raises:
        ResumeError: another live process holds it (names the folder and that process).
    """
    path = Path(output_dir) / ".run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ResumeError(
                f"{output_dir}: another run (pid {holder}) is writing into this folder; choose another "
                f"output folder (hydra.run.dir=...)"
            ) from e
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def checkpoint_for(cfg, data: dict[str, list[str]]) -> str | None:
    """The checkpoint this stage resumes (None: start fresh), after checking it is this run's.

    ``data``: the sample_ids per data role the stage trains and evaluates on (e.g. ``{"train":
    [...], "test": [...]}``), fingerprinted. A fresh start records the identity (global rank 0).

    Raises:
        ResumeError: see :func:`resume_checkpoint`.
    """
    out = Path(cfg.paths.output_dir)
    identity = run_identity(container(cfg), {k: dataset_fingerprint(v) for k, v in data.items()})
    ckpt = resume_checkpoint(out, identity)
    if ckpt is None and is_global_zero():
        record_identity(out, identity)
    return ckpt


@contextmanager
def exclusive(output_dir):
    """:func:`run_lock` on global rank 0 (the rank that writes); other ranks hold nothing."""
    if is_global_zero():
        with run_lock(output_dir):
            yield
    else:
        yield


def keep_after_failure(
    cfg, stage: str, started: float, trainer, model, error: BaseException, metrics: dict, steps_per_iteration: int = 1
) -> dict:
    """After a failure in or after fitting: keep what finished (global rank 0 writes, no collective call).

    Saves the weights as ``checkpoints/failed-step<N>.pt`` (``state_dict``, ``global_step``,
    ``config``) when any optimizer step ran, and writes ``summary.json`` with ``status: failed``,
    the error, the steps trained and ``metrics`` (what finished, e.g. the evaluation curve so far).
    With ``steps_per_iteration`` > 1 (optimizer steps one training iteration takes) the file is
    ``failed-iteration<N>.pt`` and the summary adds ``iterations`` N. Returns the summary.
    """
    out = Path(cfg.paths.output_dir)
    step = int(trainer.global_step) if trainer is not None else 0
    failure = {"status": "failed", "error": f"{type(error).__name__}: {error}", "optimizer_steps": step}
    name = f"failed-step{step}.pt"
    if steps_per_iteration > 1:
        failure["iterations"] = step // steps_per_iteration
        name = f"failed-iteration{failure['iterations']}.pt"
    outputs = {}
    if step > 0 and is_global_zero():
        path = out / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "global_step": step, "config": container(cfg)}, path)
        outputs["weights"] = str(path)
        log.error("%s failed after %d optimizer steps; weights kept in %s", stage, step, path)
    return write_summary(cfg, stage, started, {**failure, **metrics}, outputs)
