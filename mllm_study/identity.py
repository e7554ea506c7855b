"""Run identity: what makes two runs "the same training", and a fingerprint of the code that shapes it.

Usage: ``rid = run_id(resolve_spec(params))`` (both in :mod:`mllm_study.runs`, built on this module)

The rule (CONTRIBUTING.md, "Run identity"): a run's id hashes its *resolved* spec, every default filled in and typed
as the command line would (placement, layers, learning rate, method parameters, ``max_new_tokens``), minus the
settings that change neither training nor predictions (evaluation batch size; for method ``none``, which trains
nothing, every training-only key), plus :func:`code_fingerprint`, a hash of the source files that shape training
and predictions. Metrics are not part of it: each run records the metric versions it was scored with, and a changed
metric re-scores the stored predictions (:mod:`mllm_study.records`) without retraining.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["CODE_PATHS", "code_fingerprint", "canonical_run", "identity", "NOT_IN_IDENTITY", "TRAINING_ONLY",
           "checkpoint_identity"]

_PACKAGE = Path(__file__).resolve().parent
# What shapes training and predictions; an edit in any of these files gives every run a new id.
CODE_PATHS = ("data.py", "models.py", "methods", "train.py", "evaluate.py", "world")
# Settings that change neither the trained weights nor the predictions (greedy generation per item).
NOT_IN_IDENTITY = ("eval_batch_size", "eval_batch_sizes")
# Keys that only matter when something trains: method none takes their defaults.
TRAINING_ONLY = ("method_params", "placement", "layers", "connector", "connector_lr", "vision", "vision_lr", "lr",
                 "epochs", "batch_size", "grad_accum", "warmup_ratio", "weight_decay", "max_grad_norm", "train_size",
                 "eval_every_epoch", "seed", "gradient_checkpointing")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (16 hex digits) over the relative paths and bytes of the source files in :data:`CODE_PATHS`."""
    h = hashlib.sha256()
    for entry in CODE_PATHS:
        path = _PACKAGE / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(_PACKAGE).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _num_layers(params) -> int | None:
    """Decoder blocks of the run's base model, where known without loading it (tiny-llava, local checkpoints)."""
    if params.run.model == "tiny-llava":
        return params.pretrain.num_layers
    config = Path(params.run.model) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    text = data.get("text_config") or data
    n = text.get("num_hidden_layers")
    return int(n) if isinstance(n, int) else None


def canonical_run(run: dict[str, Any], params, method, own_limits: list[int]) -> dict[str, Any]:
    """The run section with every default resolved the way training resolves it (see the module docstring).

    Args:
        run: ``dataclasses.asdict(params.run)`` with ``lr`` and ``method_params`` already resolved.
        params: the run's Params (for the base model's depth and the defaults).
        method: the registered :class:`~mllm_study.methods.Method`.
        own_limits: the ``max_new_tokens`` limit of every evaluation target (dataset.json, default 16).

    Raises:
        ValueError: a placement the method does not accept (named, before anything runs).
    """
    from .config import RunConfig
    from .methods.registry import check_placement

    run = dict(run)
    placement = check_placement(method, run["placement"])
    run["placement"] = placement if method.default_placement is not None else None  # prefix: one fixed placement
    if run["layers"] is not None:
        layers = sorted({int(i) for i in run["layers"]})
        run["layers"] = None if layers == list(range(_num_layers(params) or -1)) else layers
    if run["max_new_tokens"] is not None and own_limits and all(run["max_new_tokens"] == n for n in own_limits):
        run["max_new_tokens"] = None  # the datasets' own limit, written out
    if run["method"] == "none":
        defaults = RunConfig()
        for key in TRAINING_ONLY:
            if key in run:
                run[key] = getattr(defaults, key)
        run["lr"] = float(method.lr)
        run["method_params"] = dict(method.defaults)
    return run


def identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved spec that the run id hashes."""
    return {**spec, "run": {k: v for k, v in spec["run"].items() if k not in NOT_IN_IDENTITY}}


#: files of a checkpoint folder hashed whole (small); weight files are fingerprinted by name, size and sampled bytes
_CONFIG_FILES = ("config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json",
                 "tokenizer_config.json", "tokenizer.json", "chat_template.json", "chat_template.jinja",
                 "special_tokens_map.json", "model.safetensors.index.json")
_SAMPLE = 1 << 20


def _weights_fingerprint(path: Path) -> str:
    """Name, size and the first and last MiB of a weight file (hashing many GB at every run would take minutes;
    a retrained or converted checkpoint differs in these bytes: safetensors headers list every tensor's offsets)."""
    h = hashlib.sha256(f"{path.name}\0{path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if path.stat().st_size > 2 * _SAMPLE:
            f.seek(-_SAMPLE, 2)
            h.update(f.read(_SAMPLE))
    return h.hexdigest()[:16]


def _hub_revision(repo_id: str) -> str | None:
    """The commit the local hub cache resolves ``repo_id``'s main branch to (refs/main), else None."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def checkpoint_identity(model: str) -> dict[str, Any]:
    """What a run's base checkpoint is, for its id: a local folder by a fingerprint of its config, tokenizer,
    processor, chat template and weight files (so a changed checkpoint in the same folder gets new ids); a hub id
    by the id and the revision the local cache resolves it to (``None`` when not downloaded yet: the id then
    changes once it is, which re-runs rather than mixes revisions)."""
    folder = Path(model)
    if (folder / "config.json").is_file():
        h = hashlib.sha256()
        for name in _CONFIG_FILES:
            if (folder / name).is_file():
                h.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
        weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
        for p in weights:
            h.update(_weights_fingerprint(p).encode())
        return {"local": folder.name, "fingerprint": h.hexdigest()[:16], "weight_files": len(weights)}
    return {"hub": model, "revision": _hub_revision(model)}
