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

from .errors import ConfigError, RunError
from . import __version__
from .config import Params
from .files import file_digest, read_json, write_json_atomic  # noqa: F401 (also this module's API: callers use them)
from .records import is_done
from .process import keep_freed_memory
from .world.tasks import TRAINING_SPLITS

__all__ = ["resolve_dataset", "resolve_spec", "run_id", "execute_run", "is_done", "clean_stale_temporaries",
           "base_model", "eval_targets",
           "read_json", "write_json_atomic", "file_digest", "result_rows", "evaluate_all",
           "param_groups"]


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
    source = params.data_source
    if source and name == params.run.dataset:  # run.data_file's folder, built from the file on first use
        from .converters.llava_file import conversation_dataset

        return conversation_dataset(source["data_file"], source.get("image_folder"), source.get("test_data_file"),
                                    params.paths.cache)
    import difflib

    close = difflib.get_close_matches(name, sorted(world_names), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown dataset {name!r}: not a synthetic-world family and not a dataset folder with "
                      f"dataset.json.{hint} Families: {', '.join(sorted(FAMILIES))}")


def resolve_spec(params: Params, progress: bool = True) -> dict[str, Any]:
    """Everything that determines a run's result: the resolved run settings (:func:`.identity.canonical_run`), the
    data's and base model's identities, and the fingerprint of the code that shapes training and predictions."""
    return _resolve(params, progress)[0]


def _resolve(params: Params, progress: bool) -> tuple[dict[str, Any], list[tuple[Path, str, int | None]]]:
    """``(spec, eval targets)``: the settings are checked first (a bad method or parameter is refused before any
    dataset or world is built), then the datasets are resolved, once."""
    from .data import load_dataset_info
    from .identity import canonical_run, code_fingerprint
    from .methods import get_method

    run = dataclasses.asdict(params.run)
    method = get_method(params.run.method)
    run.pop("method_presets")
    if run["vision"] == "frozen":  # the study's setting: keeps the ids of runs made before the option existed
        del run["vision"], run["vision_lr"]
    if run["eval_split"] == "test":  # likewise
        del run["eval_split"]
    if not run["metric_variants"]:  # the default variants: ids as before the option existed
        del run["metric_variants"]
    for key, default in REAL_MODEL_DEFAULTS.items():  # likewise: the real-model keys, at their defaults
        if run.get(key) == default:
            del run[key]
    run["lr"] = params.resolved_lr()
    run["method_params"] = {**method.defaults, **params.resolved_method_params()}
    targets = eval_targets(params, progress)
    dataset_dir = targets[0][0]  # the run's own dataset
    limits = [load_dataset_info(folder).get("max_new_tokens", 16) for folder, _, _ in targets]
    spec: dict[str, Any] = {"run": canonical_run(run, params, method, limits),
                            "code": {"version": __version__, "fingerprint": code_fingerprint()},
                            "data": {split: file_digest(dataset_dir / f"{split}.json")
                                     for split in ("train", "test") if (dataset_dir / f"{split}.json").exists()}}
    if params.run.model == "tiny-llava":
        from .models import ensure_world, tiny_llava_dir

        spec["base_model"] = tiny_llava_dir(params, ensure_world(params, progress)).name
    else:
        from .identity import checkpoint_identity

        spec["base_model"] = checkpoint_identity(params.run.model)
    return spec, targets


#: run keys for real checkpoints; at these values they stay out of the spec (tiny-llava's ids are unchanged)
REAL_MODEL_DEFAULTS = {"precision": "auto", "gradient_checkpointing": False, "attn_implementation": None,
                       "min_pixels": None, "max_pixels": None, "eval_batch_sizes": {}, "max_new_tokens_per_task": {}}


def load_options(params: Params) -> dict[str, Any]:
    """What :func:`mllm_study.models.load_checkpoint` takes from the run: precision, attention, image size bounds."""
    return {"precision": params.run.precision, "attn_implementation": params.run.attn_implementation,
            "min_pixels": params.run.min_pixels, "max_pixels": params.run.max_pixels}


def run_id(spec: dict[str, Any]) -> str:
    """``<method>-<dataset>-s<seed>-<hash>``: readable, and the hash covers the spec's identity (every setting that
    changes training or predictions, and the code fingerprint; see :mod:`mllm_study.identity`)."""
    from .identity import identity

    digest = hashlib.sha256(json.dumps(identity(spec), sort_keys=True).encode()).hexdigest()[:12]
    run = spec["run"]
    return f"{run['method']}-{Path(run['dataset']).name}-s{run['seed']}-{digest}"


def param_groups(model, params: Params) -> list[dict]:
    """AdamW groups of the trainable parameters: the method's (run lr), the connector's and the vision encoder's."""
    from .methods.placement import get_module_map, is_connector_param, is_vision_param

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    module_map = get_module_map(model) if trainable else None
    connector, vision, rest = [], [], []
    for name, p in trainable:
        if is_connector_param(name, model, module_map):
            connector.append(p)
        elif is_vision_param(name, model, module_map):
            vision.append(p)
        else:
            rest.append(p)
    groups = [{"params": rest, "lr": params.resolved_lr()}, {"params": connector, "lr": params.run.connector_lr}]
    if vision:
        groups.append({"params": vision, "lr": params.run.vision_lr})
    return groups


_BASE_CACHE: dict[str, tuple[Any, Any]] = {}
_KEEP_PRISTINE_BELOW = 2_000_000_000  # parameters; larger models are re-loaded instead of copied in memory


def base_model(params: Params, progress: bool = True):
    """A fresh copy of the run's base model and its processor; loaded once per process and copied per run."""
    import copy

    from .models import load_model

    key = params.run.model if params.run.model != "tiny-llava" else str(_tiny_dir(params, progress))
    options = load_options(params)
    key = f"{key}|{json.dumps(options, sort_keys=True)}"
    if key not in _BASE_CACHE:
        model, processor = load_model(params.run.model, params, progress, **options)
        if sum(p.numel() for p in model.parameters()) > _KEEP_PRISTINE_BELOW:
            return model, processor
        _BASE_CACHE.clear()  # keep one base model at a time
        _BASE_CACHE[key] = (model, processor)
    model, processor = _BASE_CACHE[key]
    return copy.deepcopy(model), processor


def _tiny_dir(params: Params, progress: bool) -> Path:
    from .models import ensure_world, pretrain_tiny_llava

    return pretrain_tiny_llava(params, ensure_world(params, progress), progress)


def eval_targets(params: Params, progress: bool = True) -> list[tuple[Path, str, int | None]]:
    """(dataset folder, split, size) pairs a run is evaluated on: its own test split, then ``eval_datasets``."""
    from .data import load_dataset_info

    own = resolve_dataset(params.run.dataset, params, progress)
    targets = [(own, params.run.eval_split, params.run.test_size)]
    for name in params.run.eval_datasets:
        folder = resolve_dataset(name, params, progress)
        splits = [k for k in load_dataset_info(folder).get("splits", {"test": 0}) if k not in TRAINING_SPLITS]
        for split in splits or ["test"]:
            if (folder, split, params.run.test_size) not in targets:
                targets.append((folder, split, params.run.test_size))
    return targets


def result_rows(results: dict, info: dict, split: str, epoch: int | None) -> list[dict]:
    """Tidy rows (one per metric, extras as ``metric.extra``) for one dataset split."""
    rows = []
    for name, res in results.items():
        base = {"dataset": info["name"], "family": info.get("family"), "group": info.get("group"), "split": split,
                "epoch": epoch, "n": len(res.items)}
        rows.append({**base, "metric": name, "value": res.value})
        rows.extend({**base, "metric": f"{name}.{k}", "value": v} for k, v in sorted(res.extra.items())
                    if name != "chair" or k != "chair_s")
    return rows


def evaluate_all(model, processor, params: Params, targets, epoch: int | None, progress: bool,
                 write_items: Path | None) -> list[dict]:
    """Tidy rows of ``model`` on each target (folder, split, size); per-item scores appended to ``write_items``."""
    from .data import load_dataset_info
    from .evaluate import evaluate_dataset

    rows = []
    for folder, split, size in targets:
        info = load_dataset_info(folder)
        batch_size = params.run.eval_batch_sizes.get(info["name"], params.run.eval_batch_size)
        max_new = params.run.max_new_tokens_per_task.get(info["name"], params.run.max_new_tokens)
        results = evaluate_dataset(model, processor, folder, split, size, batch_size, max_new, progress,
                                   metric_variants=params.run.metric_variants)
        rows.extend(result_rows(results, info, split, epoch))
        if write_items is not None:
            with open(write_items, "a") as f:
                for name, res in results.items():
                    for item in res.items:
                        f.write(json.dumps({"dataset": info["name"], "split": split, "epoch": epoch,
                                            "metric": name, **item}) + "\n")
    return rows


def execute_run(params: Params, progress: bool = True, force: bool = False) -> Path:
    """Train (unless the method is ``none``) and evaluate one run; returns its finished directory.

    The lifecycle, top to bottom: resolve (datasets once, then the run's identity) -> load (records, base model)
    -> apply the method -> train -> evaluate -> record. ``metrics.json`` holds tidy ``results`` rows (dataset,
    split, epoch, metric, value), the ``train`` summary and, with ``eval_every_epoch``, per-epoch held-out losses;
    ``predictions.jsonl`` one line per item and metric.

    Under ``accelerate launch`` every process trains; the main one alone evaluates and writes (:class:`_RunFolder`).

    Raises:
        ConfigError, DataError: bad dataset, method or parameters (nothing is written).
        TrainingDiverged and others: recorded in ``status.json`` as failed, then re-raised.
    """
    spec, targets = _resolve(params, progress)
    final = Path(params.paths.runs) / run_id(spec)
    if not force and is_done(final):
        return final
    keep_freed_memory()  # a notebook's or a library caller's process too, not only the configured commands'
    inputs = _load_inputs(params, targets)
    model, processor = base_model(params, progress)
    model, checkpointing = _apply_method(model, params)
    acc = _accelerator_for(model, params)
    with _RunFolder(final, spec, main=acc.is_main_process) as folder:
        train_info, model = _train(model, processor, params, inputs, folder, acc, progress)
        if not folder.main:
            return final  # the main process evaluates and records the run
        if checkpointing is not None:
            train_info["gradient_checkpointing"] = checkpointing
        if params.run.attn_implementation is not None:  # what "auto" became on this machine
            train_info["attn_implementation"] = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if not params.run.eval_every_epoch or params.run.method == "none":
            inputs.rows = evaluate_all(model, processor, params, inputs.targets, None, progress, folder.predictions)
        if params.run.method == "none":  # nothing trained: the memory figure is the evaluation's
            from .train import peak_memory

            peak, kind = peak_memory(acc.device)
            train_info.update(tokens=0, peak_memory_mb=peak, peak_memory_kind=kind)
        folder.finish(_metrics(params, inputs, train_info))
    if acc.num_processes > 1 and params.run.method != "none":
        acc.wait_for_everyone()
    return final


@dataclasses.dataclass
class _RunInputs:
    """What a run reads, resolved once: its evaluation targets (:func:`eval_targets`, its own dataset first), that
    dataset's info, the records it trains on, the held-out records of ``eval_every_epoch`` and (filled as it goes)
    its result rows."""

    targets: list[tuple[Path, str, int | None]]
    info: dict
    train: list[dict]
    held_out: list[dict]
    rows: list[dict] = dataclasses.field(default_factory=list)


def _load_inputs(params: Params, targets: list[tuple[Path, str, int | None]]) -> _RunInputs:
    from .data import load_dataset_info, load_split

    run = params.run
    dataset_dir = targets[0][0]  # the run's own dataset (eval_targets puts it first)
    train_split = "train_minus_val" if run.eval_split == "val" else "train"
    return _RunInputs(
        targets=targets, info=load_dataset_info(dataset_dir),
        train=load_split(dataset_dir, train_split, run.train_size, seed=run.seed) if run.method != "none" else [],
        held_out=load_split(dataset_dir, run.eval_split, run.test_size, seed=0) if run.eval_every_epoch else [])


def _apply_method(model, params: Params, checkpointing: bool = True):
    """The run's method on its base model, seeded by the run (method weights such as LoRA's A are initialised from
    the run's seed, not the process's state); rank checked; gradient checkpointing as asked (never with
    ``checkpointing=False``: a copy that only evaluates). Returns ``(model, checkpointing note or None)``."""
    from .methods.registry import apply_method
    from .train import enable_gradient_checkpointing, set_seed

    run = params.run
    set_seed(run.seed)
    model = apply_method(model, run.method, params.resolved_method_params(), run.placement, run.connector,
                         layers=run.layers, vision=run.vision)
    _check_rank(model)
    if not (checkpointing and run.gradient_checkpointing) or run.method == "none":
        return model, None
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        import warnings

        # the real profiles turn it on for every method; prefix tuning cannot use it (train.py): say so, go on
        note = "off: prefix tuning needs the KV cache that checkpointed training drops"
        warnings.warn(f"run.gradient_checkpointing ignored for method {run.method!r}: {note}", stacklevel=3)
        return model, note
    enable_gradient_checkpointing(model)
    return model, "on"


def _accelerator_for(model, params: Params):
    """The process's accelerator (sharded set-ups refused); zero-shot runs move the model to its device."""
    from .train import get_accelerator

    acc = get_accelerator()
    _check_distributed(acc, params)
    if params.run.method == "none" and acc.device.type != "cpu":  # zero-shot rows evaluate on the accelerator too
        model.to(acc.device)
    return acc


def _train(model, processor, params: Params, inputs: _RunInputs, folder: "_RunFolder", acc,
           progress: bool) -> tuple[dict, Any]:
    """Train the method (nothing for ``none``) and save its weights. Returns the ``train`` summary of metrics.json
    and the model to evaluate (under sharded training a whole copy with the gathered weights, on the main process).
    With ``eval_every_epoch`` the result rows of every epoch are added to ``inputs.rows`` as training goes."""
    from .evaluate import evaluate_loss
    from .methods.registry import save_method
    from .train import TrainSettings, train_model, trainable_summary

    run = params.run
    train_info: dict[str, Any] = {**trainable_summary(model), "steps": 0, "seconds": 0.0}
    if run.method == "none":
        return train_info, model
    settings = TrainSettings(epochs=run.epochs, batch_size=run.batch_size, grad_accum=run.grad_accum,
                             warmup_ratio=run.warmup_ratio, weight_decay=run.weight_decay,
                             max_grad_norm=run.max_grad_norm, seed=run.seed, progress=progress,
                             desc=f"train {run.method} on {inputs.info['name']}")

    def on_epoch_end(epoch: int, m) -> dict:
        inputs.rows.extend(evaluate_all(m, processor, params, inputs.targets, epoch, progress, folder.predictions))
        return {"held_out_loss": evaluate_loss(m, processor, inputs.held_out, run.eval_batch_size)}

    result = train_model(model, _collator(processor), inputs.train, param_groups(model, params), settings,
                         log_path=folder.tmp / "train_log.jsonl" if folder.main else None,
                         on_epoch_end=on_epoch_end if run.eval_every_epoch and folder.main else None)
    acc.wait_for_everyone()
    if not folder.main:
        acc.wait_for_everyone()  # until the main process has evaluated and written the run
        return train_info, model
    if result.full_state is not None:  # sharded: evaluate and save a whole copy holding the gathered weights
        model = _unsharded(params, result.full_state, acc.device)
        train_info["sharded"] = str(getattr(acc, "distributed_type", "")).split(".")[-1]
    train_info.update(steps=result.steps, seconds=round(result.seconds, 3), samples=result.samples,
                      samples_per_second=round(result.samples_per_second, 2), final_loss=result.final_loss,
                      tokens=result.tokens, tokens_per_second=round(result.tokens_per_second, 1),
                      peak_memory_mb=result.peak_memory_mb, peak_memory_kind=result.peak_memory_kind)
    if run.eval_every_epoch:
        train_info["epochs"] = [e for e in result.log if "epoch_end" in e]
    save_method(model, folder.tmp / "adapter")
    return train_info, model


def _metrics(params: Params, inputs: _RunInputs, train_info: dict) -> dict:
    """metrics.json: the run's own score (its dataset, split and metric; the final epoch's), every row, the train
    summary and the metric versions and variants used."""
    from .records import metric_variants_used, metric_versions

    info, rows = inputs.info, inputs.rows
    own_rows = [r for r in rows if r["dataset"] == info["name"] and r["split"] == params.run.eval_split
                and r["metric"] == info["metric"]]
    own = max(own_rows, key=lambda r: r["epoch"] or 0)
    return {"dataset": info["name"], "metric": info["metric"], "value": own["value"], "n": own["n"],
            "results": rows, "train": train_info, "metric_versions": metric_versions(rows),
            "metric_variants": metric_variants_used(rows, params.run.metric_variants)}


class _RunFolder:
    """The temporary folder a run is written into and its fate (the main process alone writes): renamed into place
    when the run finished (:meth:`finish`) or failed (status.json says which), removed on bad input (a
    :class:`~mllm_study.errors.DataError` found while training: nothing to keep; fix and re-run)."""

    def __init__(self, final: Path, spec: dict, main: bool = True):
        self.final, self.spec, self.main = final, spec, main
        self.tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        self.predictions = self.tmp / "predictions.jsonl"
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.finished = False

    def __enter__(self) -> "_RunFolder":
        if self.main:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
            write_json_atomic(self.tmp / "spec.json", self.spec)
            write_json_atomic(self.tmp / "status.json", {"status": "running", "started": self.started,
                                                         "pid": os.getpid(), "host": platform.node()})
        return self

    def finish(self, metrics: dict) -> None:
        from .records import manifest

        write_json_atomic(self.tmp / "metrics.json", metrics)
        write_json_atomic(self.tmp / "status.json", {
            "status": "done", "started": self.started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(), "files": manifest(self.tmp)})
        self.finished = True

    def __exit__(self, kind, exc, tb) -> bool:
        from .errors import DataError

        if not self.main:
            return False
        if kind is not None and issubclass(kind, DataError):
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif kind is not None:
            write_json_atomic(self.tmp / "status.json", {
                "status": "failed", "started": self.started, "reason": f"{type(exc).__name__}: {exc}",
                "step": getattr(exc, "step", None),
                "traceback": "".join(traceback.format_exception(kind, exc, tb, limit=5))})
            _replace_dir(self.tmp, self.final)
        elif self.finished:
            _replace_dir(self.tmp, self.final)
        return False


def clean_stale_temporaries(runs_dir: Path) -> list[str]:
    """Remove temporary run folders (``.<id>.tmp-<pid>``, ``.<id>.old-*``) left by dead processes on this host."""
    from .claims import pid_alive

    removed = []
    for d in Path(runs_dir).glob(".*.tmp-*") if Path(runs_dir).exists() else []:
        try:
            pid = int(d.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if d.is_dir() and not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    for d in Path(runs_dir).glob(".*.old-*") if Path(runs_dir).exists() else []:
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def _check_distributed(acc, params: Params) -> None:
    """Under sharded training (FSDP, DeepSpeed ZeRO-3) the state is gathered once, after training, for the main
    process's evaluation (:func:`_unsharded`); evaluating after every epoch would need that gather every epoch,
    inside the loop: refused up front, on every rank, rather than hang at a collective."""
    from .train import is_sharded

    if is_sharded(acc) and params.run.eval_every_epoch and params.run.method != "none":
        kind = str(getattr(acc, "distributed_type", "")).split(".")[-1]
        raise RunError(f"{kind}: run.eval_every_epoch is not supported with sharded parameters (each epoch's "
                       "evaluation would need every rank's shards); use DDP or DeepSpeed ZeRO-1/2 for the "
                       "per-epoch runs (accelerate config)")


def _unsharded(params: Params, state: dict, device):
    """The run's method on a fresh copy of its base model, its trainable tensors loaded from ``state`` (the full
    state dict that sharded training gathered on the main process): a whole model that the main process can
    evaluate and save alone. RunError naming the tensors ``state`` lacks."""
    import torch

    model, _ = _apply_method(base_model(params, progress=False)[0], params, checkpointing=False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in state]
    if missing:
        raise RunError(f"the gathered state dict lacks {len(missing)} of {len(names)} trainable tensors, e.g. "
                       f"{missing[:3]} (it has e.g. {list(state)[:3]})")
    with torch.no_grad():
        current = dict(model.named_parameters())
        for n in names:
            current[n].copy_(state[n].to(current[n].dtype))
    return model.to(device).eval()


def _check_rank(model) -> None:
    """A low-rank update wider than the layer it adapts (LoRA ``r`` > min(in, out)) adds parameters but no
    expressiveness: almost always a setting meant for a bigger model. ValueError naming the layer."""
    for name, module in model.named_modules():
        ranks = getattr(module, "r", None)
        width = min(getattr(module, "in_features", 0) or 0, getattr(module, "out_features", 0) or 0)
        if isinstance(ranks, dict) and width:
            for r in ranks.values():
                if r > width:
                    raise ConfigError(f"method_params.r = {r} exceeds the width of the layers it adapts: {name} is "
                                      f"{module.in_features} x {module.out_features} (rank at most {width})")


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
