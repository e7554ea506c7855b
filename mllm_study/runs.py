"""Runs: resolved spec -> stable id -> one directory written atomically (spec, status, log, predictions, metrics).

Usage: ``run_dir = execute_run(load_params(profile="quick"))``

A run directory ``runs/<id>/`` is complete when ``status.json`` says ``done``; it is built in a temporary sibling
folder and renamed into place, so a run killed midway never looks complete. Running the same spec again returns the
finished directory without training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .config import Params

__all__ = ["resolve_dataset", "resolve_spec", "run_id", "execute_run", "read_json", "write_json_atomic"]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_dataset(name: str, params: Params, progress: bool = True) -> Path:
    """A world family name (generated on demand) or a dataset folder -> the dataset folder."""
    from .world import FAMILIES

    world_names = set(FAMILIES) | {"pope", "align"}
    if name in world_names:
        from .models import ensure_world

        return ensure_world(params, progress) / name
    path = Path(name)
    if (path / "dataset.json").exists():
        return path
    import difflib

    close = difflib.get_close_matches(name, sorted(world_names), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}: not a synthetic-world family and not a dataset folder with "
                     f"dataset.json.{hint} Families: {', '.join(sorted(FAMILIES))}")


def resolve_spec(params: Params, progress: bool = True) -> dict[str, Any]:
    """Everything that determines a run's result: run settings, the data's and base model's identities, code."""
    from .methods import get_method

    run = dataclasses.asdict(params.run)
    method = get_method(params.run.method)
    run.pop("method_presets")
    run["method_params"] = {**method.defaults, **params.resolved_method_params()}
    dataset_dir = resolve_dataset(params.run.dataset, params, progress)
    spec: dict[str, Any] = {"run": run, "code_version": __version__,
                            "data": {split: _file_digest(dataset_dir / f"{split}.json")
                                     for split in ("train", "test") if (dataset_dir / f"{split}.json").exists()}}
    if params.run.model == "tiny-llava":
        from .models import ensure_world, tiny_llava_dir

        spec["base_model"] = tiny_llava_dir(params, ensure_world(params, progress)).name
    return spec


def run_id(spec: dict[str, Any]) -> str:
    """``<method>-<dataset>-s<seed>-<hash>``: readable, and the hash covers the whole resolved spec."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    run = spec["run"]
    return f"{run['method']}-{Path(run['dataset']).name}-s{run['seed']}-{digest}"


def _param_groups(model, params: Params) -> list[dict]:
    connector, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (connector if "multi_modal_projector" in name else rest).append(p)
    return [{"params": rest, "lr": params.run.lr}, {"params": connector, "lr": params.run.connector_lr}]


def execute_run(params: Params, progress: bool = True, force: bool = False) -> Path:
    """Train (unless the method is ``none``) and evaluate one run; returns its finished directory.

    Raises:
        ValueError: bad dataset, method or parameters (nothing is written).
        TrainingDiverged and others: recorded in ``status.json`` as failed, then re-raised.
    """
    from .data import load_dataset_info, load_split
    from .evaluate import evaluate_records
    from .methods import apply_method
    from .models import load_model
    from .train import TrainSettings, train_model, trainable_summary

    spec = resolve_spec(params, progress)
    rid = run_id(spec)
    root = Path(params.paths.runs)
    final = root / rid
    if not force and final.exists() and (final / "status.json").exists() \
            and read_json(final / "status.json").get("status") == "done":
        return final
    run = params.run
    dataset_dir = resolve_dataset(run.dataset, params, progress)
    info = load_dataset_info(dataset_dir)
    test = load_split(dataset_dir, "test", run.test_size, seed=0)
    train = load_split(dataset_dir, "train", run.train_size, seed=run.seed) if run.method != "none" else []
    model, processor = load_model(run.model, params, progress)
    model = apply_method(model, run.method, params.resolved_method_params(), run.placement, run.connector)

    tmp = root / f".{rid}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(tmp / "spec.json", spec)
    write_json_atomic(tmp / "status.json", {"status": "running", "started": started, "pid": os.getpid()})
    try:
        train_info: dict[str, Any] = {**trainable_summary(model), "steps": 0, "seconds": 0.0}
        if run.method != "none":
            settings = TrainSettings(epochs=run.epochs, batch_size=run.batch_size, grad_accum=run.grad_accum,
                                     warmup_ratio=run.warmup_ratio, weight_decay=run.weight_decay,
                                     max_grad_norm=run.max_grad_norm, seed=run.seed, progress=progress,
                                     desc=f"train {run.method} on {info['name']}")
            result = train_model(model, _collator(processor), train, _param_groups(model, params), settings,
                                 log_path=tmp / "train_log.jsonl")
            train_info.update(steps=result.steps, seconds=round(result.seconds, 3), samples=result.samples,
                              samples_per_second=round(result.samples_per_second, 2), final_loss=result.final_loss)
            if hasattr(model, "save_pretrained") and hasattr(model, "peft_config"):
                model.save_pretrained(tmp / "adapter")
        max_new = run.max_new_tokens or info.get("max_new_tokens", 16)
        ev = evaluate_records(model, processor, test, info["metric"], max_new, run.eval_batch_size, progress=progress,
                              desc=f"evaluate on {info['name']}")
        with open(tmp / "predictions.jsonl", "w") as f:
            for item in ev.items:
                f.write(json.dumps(item) + "\n")
        metrics = {"dataset": info["name"], "family": info.get("family"), "group": info.get("group"),
                   "split": "test", **ev.summary(), "train": train_info}
        write_json_atomic(tmp / "metrics.json", metrics)
        write_json_atomic(tmp / "status.json", {
            "status": "done", "started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version()})
    except BaseException as exc:
        write_json_atomic(tmp / "status.json", {
            "status": "failed", "started": started, "reason": f"{type(exc).__name__}: {exc}",
            "step": getattr(exc, "step", None), "traceback": traceback.format_exc(limit=5)})
        _replace_dir(tmp, final)
        raise
    _replace_dir(tmp, final)
    return final


def _collator(processor):
    from .data import Collator

    return Collator(processor, mode="train")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary run folder into place (replacing a failed or forced earlier attempt)."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    tmp.rename(final)
