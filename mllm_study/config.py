"""Typed configuration: params YAML (defaults + profile + file + overrides) into validated dataclasses.

Usage: ``cfg = load_params(profile="quick", overrides={"run.method": "lora"})``

A params file has four sections, each a dataclass below: ``world`` (the synthetic world), ``pretrain`` (the
tiny base model's recipe), ``run`` (one fine-tuning run) and ``paths``. Files are merged section by section in the
order ``params/defaults.yaml`` <- ``params/<profile>.yaml`` <- the user's file <- ``--set key=value`` overrides.
Unknown keys and values of the wrong type are errors that name the key and the file they came from.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, DataError

__all__ = [
    "ConfigError", "WorldConfig", "PretrainConfig", "RunConfig", "PathsConfig", "Params",
    "PARAMS_DIR", "PROJECT_ROOT", "project_path", "rooted_paths", "RUN_DATA_KEYS", "conversation_folder", "load_params",
    "parse_override", "parse_overrides",
    "list_profiles", "check_value", "RUN_FACTORS", "factor_value", "factor_row",
]

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
PROJECT_ROOT = PARAMS_DIR.parent


def project_path(path: str | Path | None) -> Path | None:
    """``path`` with a relative path taken from the project root (where ``params/`` is), not the working directory:
    what the notebooks and the study driver pass, so that a kernel started in ``notebooks/`` (as JupyterLab does)
    and one started in the root read and write the same files."""
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def rooted_paths(params: "Params") -> "Params":
    """``params`` with every relative ``paths`` entry taken from the project root (in place; returned)."""
    params.paths = dataclasses.replace(params.paths, **{k: str(project_path(v)) for k, v in
                                                       dataclasses.asdict(params.paths).items()})
    return params


@dataclass
class WorldConfig:
    """The embedded synthetic world (see docs/study.md, "The embedded world")."""

    profile: str = "quick"  # world size: smoke | quick | full
    seed: int = 0  # world seed; the same seed gives byte-identical files

    def __post_init__(self) -> None:
        if self.profile not in ("smoke", "quick", "full"):
            raise ConfigError(f"world.profile must be one of smoke, quick, full (got {self.profile!r})")


@dataclass
class PretrainConfig:
    """Recipe of the tiny base model; its hash is the cache key of the pre-trained checkpoint."""

    hidden_size: int = 128  # language model width
    num_layers: int = 2  # language model depth
    vision_hidden_size: int = 64
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 8
    vision_steps: int = 0  # stage 0: the vision tower alone learns which object fills each patch's cell (CLIP's role)
    stage1_steps: int = 1200  # connector alignment on scene descriptions (whole model: nothing is pre-trained)
    stage1_tune_vision: bool = True  # train the vision tower in stage 1 (false: keep stage 0's tower as it is)
    stage2_steps: int = 3600  # instruction tuning on the seen families (vision tower frozen, like LLaVA)
    format_steps: int = 0  # stage 3: the seen questions in the unseen columns' answer formats (the formats split)
    format_lr: float = 3e-4  # stage 3's peak learning rate
    format_tune_vision: bool = False  # train the vision tower in stage 3 too
    format_replay_share: float = 0.0  # share of stage 3's records replayed from stage 2's (native formats)
    yesno_steps: int = 0  # a stage between 1 and 2 on the seen yes/no questions only (whole model trains)
    stage1_qa_share: float = 0.0  # share of the seen families' questions mixed into stage 1 (curriculum)
    stage2_align_share: float = 0.2  # share of stage-1 descriptions mixed into stage 2 (keeps captions naming objects)
    stage2_tune_vision: bool = False  # train the vision tower in stage 2 too (LLaVA freezes its pre-trained CLIP)
    case_sensitive: bool = False  # the word-level tokenizer keeps case (models.build_tokenizer)
    image_after_text: bool = False  # the chat template puts the question before the image (models.py)
    loss_average: str = "token"  # token | sample: how the pre-training loss averages (train.TrainSettings)
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    seed: int = 0
    eval_size: int = 200  # items per seen family for the image-use check

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "vision_hidden_size", "vision_layers", "image_size", "patch_size",
                     "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"pretrain.{name} must be positive (got {getattr(self, name)})")
        if self.image_size % self.patch_size:
            raise ConfigError("pretrain.image_size must be a multiple of pretrain.patch_size")
        _check_finite(self, "pretrain")
        if self.lr <= 0:
            raise ConfigError(f"pretrain.lr must be positive (got {self.lr})")
        if self.loss_average not in ("token", "sample"):
            raise ConfigError(f"pretrain.loss_average must be token or sample (got {self.loss_average!r})")
        if not 0 <= self.stage1_qa_share < 1:
            raise ConfigError(f"pretrain.stage1_qa_share must be in [0, 1) (got {self.stage1_qa_share})")
        if not 0 <= self.stage2_align_share < 1:
            raise ConfigError(f"pretrain.stage2_align_share must be in [0, 1) (got {self.stage2_align_share})")


@dataclass
class RunConfig:
    """One fine-tuning run: base model x method x dataset x training settings. Its hash is the run id."""

    model: str = "tiny-llava"  # "tiny-llava", a local checkpoint folder or a hub id of an image-text-to-text model
    dataset: str = "iconqa_txt"  # a synthetic world family, or a dataset folder (docs/data_format.md)
    method: str = "lora"  # PEFT method; "none" evaluates the base model without training
    method_params: dict = field(default_factory=dict)  # for the chosen method, e.g. {r: 8, alpha: 16}
    # Per-method parameter presets of a profile ({lora: {r: 16}, ...}): the chosen method's entry is merged under
    # method_params. Only the resolved method_params enter a run's spec and id.
    method_presets: dict = field(default_factory=dict)
    placement: str | None = None  # attention | mlp | both; null = the method's default (LoRA both, adapter mlp)
    layers: list | None = None  # decoder-block indices to adapt; null = all
    connector: str = "frozen"  # frozen | tuned
    connector_lr: float = 2e-5
    # The vision encoder: frozen (the study's setting) or tuned (the paper's appendix tries it) with its own LR.
    # While frozen, neither key enters a run's spec, so run ids are the same as before the option existed.
    vision: str = "frozen"  # frozen | tuned
    vision_lr: float = 2e-6
    lr: float | None = None  # null = the profile's preset for the method (method_presets.<m>.lr), else the paper's
    epochs: float = 3.0
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train_size: int | None = None  # subsample the train split (seeded); None = all
    test_size: int | None = None  # subsample the test split (fixed seed 0, same items for every run)
    eval_batch_size: int = 64
    eval_datasets: list = field(default_factory=list)  # also evaluate on these (families/folders; "pope" = 3 splits)
    eval_every_epoch: bool = False  # evaluate (and measure held-out loss) after every epoch, not only at the end
    max_new_tokens: int | None = None  # None = the dataset's own limit
    eval_split: str = "test"  # test, or val: train on train minus a carved validation split and score on it
    seed: int = 42
    # Named metric variants, {metric: variant}, e.g. {vqa_score: official-2021, pope: llava}; a metric not named
    # uses its default (vqa_score official-2016, pope strict: the study's numbers). mllm_study.metrics lists them.
    metric_variants: dict = field(default_factory=dict)
    # Real-model keys (each enters a run's spec and id only when set away from its default, so the tiny model's
    # ids stay as they were). precision: the dtype the frozen base is loaded in; "auto" = the checkpoint's own
    # (float16 for llava-1.5-hf, bfloat16 for Qwen2-VL); trainable weights are fp32 master weights in every case.
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    attn_implementation: str | None = None  # null = transformers' default (sdpa); auto = flash_attention_2 where
    # flash_attn and a CUDA GPU are there, else sdpa (models.resolve_attn_implementation); eager | sdpa | flash_...
    min_pixels: int | None = None  # Qwen2-VL image processor: image size bounds in pixels (null = the checkpoint's)
    max_pixels: int | None = None
    # per evaluation dataset (its dataset.json name): batch size and answer-length limit overrides
    eval_batch_sizes: dict = field(default_factory=dict)
    max_new_tokens_per_task: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_finite(self, "run")
        if self.connector not in ("frozen", "tuned"):
            raise ConfigError(f"run.connector must be 'frozen' or 'tuned' (got {self.connector!r})")
        if self.vision not in ("frozen", "tuned"):
            raise ConfigError(f"run.vision must be 'frozen' or 'tuned' (got {self.vision!r})")
        if self.vision == "tuned" and self.method == "none":
            raise ConfigError("run.vision 'tuned' needs a method that trains; run.method 'none' trains nothing")
        if self.eval_split not in ("test", "val"):
            raise ConfigError(f"run.eval_split must be 'test' or 'val' (got {self.eval_split!r})")
        if self.placement not in (None, "attention", "mlp", "both"):
            raise ConfigError(f"run.placement must be attention, mlp or both (got {self.placement!r})")
        for name in ("lr", "connector_lr", "vision_lr"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"run.{name} must be >= 0 (got {getattr(self, name)})")
        if self.epochs <= 0:  # the loop would still take one step: zero epochs is never what was meant
            raise ConfigError(f"run.epochs must be positive (got {self.epochs})")
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"run.{name} must be positive (got {getattr(self, name)})")
        for name in ("train_size", "test_size", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"run.{name} must be positive or null (got {value})")
        for name, preset in self.method_presets.items():
            if not isinstance(preset, dict):
                raise ConfigError(f"run.method_presets.{name} must be a mapping of parameters, got {preset!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"run.warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        from .metrics import resolve_variant

        for metric, variant in self.metric_variants.items():
            try:
                resolve_variant(str(metric), variant if isinstance(variant, str) else repr(variant))
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"run.metric_variants.{metric}: {exc}") from None
        if self.precision not in PRECISIONS:
            raise ConfigError(f"run.precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.attn_implementation not in (None, "auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3",
                                            "flex_attention"):
            raise ConfigError(f"run.attn_implementation must be auto, eager, sdpa, flash_attention_2, "
                              f"flash_attention_3, flex_attention or null (got {self.attn_implementation!r})")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"run.{name} must be a positive integer or null (got {value!r})")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError(f"run.min_pixels ({self.min_pixels}) exceeds run.max_pixels ({self.max_pixels})")
        for name in ("eval_batch_sizes", "max_new_tokens_per_task"):
            for task, value in getattr(self, name).items():
                if not isinstance(value, int) or value <= 0:
                    raise ConfigError(f"run.{name}.{task} must be a positive integer (got {value!r})")


#: run.precision values: the base model's load dtype
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _non_finite(value: Any, where: str) -> str | None:
    """The first non-finite number (NaN, inf) inside ``value`` (nested lists and mappings), as ``where = value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} = {value}"
    if isinstance(value, dict):
        return next((bad for k, v in value.items() if (bad := _non_finite(v, f"{where}.{k}"))), None)
    if isinstance(value, (list, tuple)):
        return next((bad for i, v in enumerate(value) if (bad := _non_finite(v, f"{where}[{i}]"))), None)
    return None


def _check_finite(config: Any, section: str) -> None:
    """NaN and infinity are never valid settings (``nan < 0`` is false, so range checks alone let NaN through)."""
    for f in dataclasses.fields(config):
        bad = _non_finite(getattr(config, f.name), f"{section}.{f.name}")
        if bad:
            raise ConfigError(f"{bad}: must be a finite number")


@dataclass
class PathsConfig:
    """Where generated things go (all git-ignored)."""

    cache: str = ".cache"  # worlds and pre-trained base models, keyed by content
    runs: str = "runs"  # one directory per run
    reports: str = "reports"


#: The run settings that identify a result's setting, in the results table's order: RunConfig field -> its column in
#: the results table (``dataset``, the trained-on dataset, is ``train_dataset``). The results table's factor columns
#: (``results.FACTOR_COLUMNS``), the keys runs are paired on (``contrasts.MATCH_KEYS``, and the setting keys of
#: datasize and findings) and the design tables (``study.design_table``) all read this one definition.
RUN_FACTORS: dict[str, str] = {
    "model": "model", "method": "method", "method_params": "method_params", "placement": "placement",
    "layers": "layers", "connector": "connector", "vision": "vision", "dataset": "train_dataset",
    "train_size": "train_size", "seed": "seed", "lr": "lr", "connector_lr": "connector_lr", "epochs": "epochs",
}


def factor_value(key: str, value: Any) -> Any:
    """A run setting as its results-table column holds it: method_params as sorted JSON, placement null as
    "default", layers null as "all" (else the sorted indices as JSON), a dataset folder by its name."""
    if key == "method_params":
        return json.dumps(value or {}, sort_keys=True)
    if key == "placement":
        return value or "default"
    if key == "layers":
        return "all" if value is None else json.dumps(sorted(int(i) for i in value))
    if key == "dataset":
        return Path(value).name
    return value


def factor_row(run: dict[str, Any]) -> dict[str, Any]:
    """The results-table factor columns of a resolved run (a run spec's ``run`` section); a setting the spec lacks
    (a run recorded before it existed) takes its RunConfig default."""
    defaults = RunConfig.__dataclass_fields__
    out = {}
    for key, column in RUN_FACTORS.items():
        if key in run:
            value = run[key]
        else:
            f = defaults[key]
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[column] = factor_value(key, value)
    return out


SECTIONS: dict[str, type] = {"world": WorldConfig, "pretrain": PretrainConfig, "run": RunConfig, "paths": PathsConfig}


@dataclass
class Params:
    """All sections of a resolved params set, plus where each came from."""

    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: dict = field(default_factory=dict)  # the design: {grid: {key: [values]}} or {grids: [...]} (sweep.py)
    sources: list[str] = field(default_factory=list)
    #: ``run.data_file`` / ``test_data_file`` / ``image_folder`` as given, when ``run.dataset`` is their folder
    data_source: dict[str, str] = field(default_factory=dict)

    def resolved_method_params(self) -> dict[str, Any]:
        """The chosen method's parameters: its profile preset (without ``lr``) overlaid by ``run.method_params``."""
        preset = {k: v for k, v in self.run.method_presets.get(self.run.method, {}).items() if k != "lr"}
        return {**preset, **self.run.method_params}

    def resolved_lr(self) -> float:
        """``run.lr`` if set, else the profile's preset for the method, else the method's paper learning rate."""
        if self.run.lr is not None:
            return float(self.run.lr)
        preset = self.run.method_presets.get(self.run.method, {})
        if "lr" in preset:
            return float(preset["lr"])
        from .method_info import paper_lr  # declared in the method's file, read without importing torch

        return paper_lr(self.run.method)

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _unknown(prefix: str, name: str, known: typing.Iterable[str], kind: str) -> ConfigError:
    """``<prefix>.<Did you mean ...?> Known <kind>: a, b, c`` (``prefix`` says where and what was not known)."""
    known = [str(k) for k in known]
    return ConfigError(f"{prefix}.{_suggest(str(name), known)} Known {kind}: {', '.join(known)}")


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints are accepted for floats. Returns the (coerced) value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if expected is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {getattr(expected, '__name__', expected)}, "
                          f"got {type(value).__name__} {value!r}")
    return value


def check_value(section: str, key: str, value: Any, where: str) -> Any:
    """Convert and check one ``section.key`` value exactly as a params file or the command line would (ints for
    floats, YAML-1.1 strings such as ``1.0e9`` for floats); ConfigError naming ``where`` otherwise."""
    hints = typing.get_type_hints(SECTIONS[section])
    if key not in hints:
        raise ConfigError(f"{where}: unknown key '{section}.{key}'.{_suggest(key, hints)}")
    return _check_type(value, hints[key], where)


# ``run`` keys that are not RunConfig fields: load_params turns them into ``run.dataset`` (a cached dataset folder
# built from a LLaVA conversation file, mllm_study/converters/llava_file.py), so run ids stay as they were.
RUN_DATA_KEYS = {
    "data_file": str,  # a LLaVA conversation file (JSON or JSON lines) to train on, instead of run.dataset
    "test_data_file": str,  # conversations to score on (default: the data file's last records, not trained on)
    "image_folder": str,  # folder the files' image paths are relative to (default: the data file's folder)
}


def _merge_section(base: dict, update: dict, section: str, source: str) -> None:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    if section == "run":
        hints = {**hints, **RUN_DATA_KEYS}
    if not isinstance(update, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping, got {type(update).__name__}")
    for key, value in update.items():
        if key not in hints:
            raise _unknown(f"{source}: unknown key '{section}.{key}'", key, hints, f"keys of '{section}'")
        base[key] = _check_type(value, hints[key], f"{source}: '{section}.{key}'")


def _set_inside(merged: dict[str, dict], section: str, name: str, path: list[str], value: Any) -> None:
    """``--set section.name.a.b=value`` where ``section.name`` is a mapping (``run.method_presets.ia3.lr=0.1``): set
    ``value`` at ``a.b`` inside a copy of the merged mapping, keeping its other entries."""
    key = ".".join([section, name, *path])
    if section not in SECTIONS:
        raise _unknown(f"command line: unknown section '{section}'", section, list(SECTIONS), "sections")
    hints = typing.get_type_hints(SECTIONS[section])
    if name not in hints:
        raise _unknown(f"command line: unknown key '{section}.{name}'", name, hints, f"keys of '{section}'")
    if typing.get_origin(hints[name]) is not dict and hints[name] is not dict:
        raise ConfigError(f"override {key}: '{section}.{name}' is not a mapping, so it has no key "
                          f"{'.'.join(path)!r}; set it as {section}.{name}=VALUE")
    current = merged[section].get(name)  # what the layers set (a field's default mapping is empty)
    root = copy.deepcopy(current) if isinstance(current, dict) else {}
    node = root
    for depth, part in enumerate(path[:-1], 1):
        child = node.get(part)
        if child is not None and not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{'.'.join([section, name, *path[:depth]])}' is {child!r}, "
                              f"not a mapping")
        node = node.setdefault(part, {}) if child is None else child
    node[path[-1]] = value
    merged[section][name] = root


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections ({', '.join(SECTIONS)})")
    return data


#: top-level ``_`` blocks of a params file: _profiles (per-profile designs, study.py), _datasets (dataset name ->
#: folder, in a profile file), _report (analysis options read by the notebooks), _design (free-form notes)
BLOCKS = ("_profiles", "_datasets", "_report", "_design")
#: keys of a ``_profiles.<profile>`` block
PROFILE_BLOCK_KEYS = ("world", "pretrain", "run", "paths", "sweep", "_calibration", "_report")
#: ``_report`` options and their types
REPORT_KEYS = {"n_ctx": int}


def check_block(source: str, name: str, value: Any, params_dir: Path = PARAMS_DIR) -> None:
    """Check one top-level ``_`` block of a params file: a known block, known profiles and keys, typed values;
    ConfigError naming the file and the key otherwise."""
    if name not in BLOCKS:
        raise _unknown(f"{source}: unknown block '{name}'", name, BLOCKS, "blocks")
    if name == "_design" or value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: '{name}' must be a mapping, got {type(value).__name__}")
    if name == "_datasets":
        for key, folder in value.items():
            if not isinstance(folder, str):
                raise ConfigError(f"{source}: _datasets.{key} must be a folder path, got {folder!r}")
    elif name == "_report":
        _check_report(source, "_report", value)
    else:
        known = list_profiles(params_dir)
        for profile, block in value.items():
            where = f"{source}: _profiles.{profile}"
            if profile not in known:
                raise _unknown(f"{where}: unknown profile", profile, known, "profiles")
            if not isinstance(block, dict):
                raise ConfigError(f"{where} must be a mapping ({', '.join(PROFILE_BLOCK_KEYS)})")
            for section, values in block.items():
                if section not in PROFILE_BLOCK_KEYS:
                    raise _unknown(f"{where}: unknown key '{section}'", section, PROFILE_BLOCK_KEYS, "keys")
                if section in SECTIONS:
                    if not isinstance(values, dict):
                        raise ConfigError(f"{where}.{section} must be a mapping")
                    for key, v in values.items():
                        if not (section == "run" and key in RUN_DATA_KEYS):
                            check_value(section, key, v, f"{where}.{section}.{key}")
                elif section == "_report":
                    _check_report(source, f"_profiles.{profile}._report", values)


def _check_report(source: str, where: str, values: Any) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {where} must be a mapping")
    for key, v in values.items():
        if key not in REPORT_KEYS:
            raise _unknown(f"{source}: unknown key '{where}.{key}'", key, REPORT_KEYS, "keys")
        _check_type(v, REPORT_KEYS[key], f"{source}: {where}.{key}")


def list_profiles(params_dir: Path = PARAMS_DIR) -> list[str]:
    """Profiles are the params files that are not research-question diffs or defaults."""
    return sorted(p.stem for p in params_dir.glob("*.yaml")
                  if p.stem not in ("defaults", "calibration") and not p.stem.startswith("rq"))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (value in YAML syntax) from the command line."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. run.lr=1e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value: {exc}") from None
    return key.strip(), _yaml12_floats(value)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml12_floats(value: Any) -> Any:
    """``1e-4`` as the float YAML 1.2 reads, not the string PyYAML's YAML 1.1 makes of it (which needs
    ``1.0e-4``), also inside mappings and lists (``run.method_presets.ia3.lr=1e-1``)."""
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _yaml12_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml12_floats(v) for v in value]
    return value


def parse_overrides(items: Any) -> dict[str, Any]:
    """``{"section.key": value}`` from ``--set`` strings (a list, as the notebooks' ``overrides`` parameter holds
    them) or an already parsed mapping; ``None`` or empty gives ``{}``."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = [items]
    return dict(parse_override(str(o)) for o in items)


#: Bump when the conversation reader's output changes (mllm_study/converters/llava_file.py): new folders, new run ids.
CONVERSATION_READER_VERSION = "1"


def conversation_folder(data_file: str | Path, image_folder: str | Path | None = None,
                        test_file: str | Path | None = None, cache: str | Path = ".cache") -> Path:
    """Where the dataset folder of a LLaVA conversation file lives: ``<cache>/data/<stem>-<hash>``, the hash over the
    files' bytes, the absolute image folder and the reader's version (computed here, built by the converter).

    Raises:
        DataError: a named file does not exist.
    """
    data_file = Path(data_file).expanduser()
    if not data_file.is_file():
        raise DataError(f"run.data_file: conversation file not found: {data_file}")
    folder = Path(image_folder).expanduser().resolve() if image_folder is not None else data_file.parent.resolve()
    paths = [data_file]
    if test_file is not None:
        paths.append(Path(test_file).expanduser())
        if not paths[1].is_file():
            raise DataError(f"run.test_data_file: conversation file not found: {paths[1]}")
    h = hashlib.sha256(f"v{CONVERSATION_READER_VERSION}\0{folder}\0".encode())
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return Path(cache) / "data" / f"{data_file.stem}-{h.hexdigest()[:12]}"


def _resolve_data_file(merged: dict[str, dict]) -> dict[str, str]:
    """Set ``run.dataset`` to the folder of ``run.data_file`` (+ ``test_data_file``, ``image_folder``) and return
    those keys: the run resolves the folder through the converter, which builds it on first use."""
    data = {key: merged["run"].pop(key) for key in RUN_DATA_KEYS if merged["run"].get(key) is not None}
    if not data:
        return {}
    if "data_file" not in data:
        raise ConfigError(f"run.{next(iter(data))} needs run.data_file (a LLaVA conversation file)")
    cache = merged["paths"].get("cache", PathsConfig.cache)
    folder = conversation_folder(data["data_file"], data.get("image_folder"), data.get("test_data_file"), cache)
    merged["run"]["dataset"] = str(folder)
    return data


def load_params(path: str | Path | None = None, profile: str | None = None,
                overrides: dict[str, Any] | None = None, params_dir: Path = PARAMS_DIR) -> Params:
    """Load and validate a params set.

    Args:
        path: a params YAML file (optional); may itself name ``profile: NAME`` at top level.
        profile: a profile in ``params/`` (smoke, quick, full, ...); applied before ``path``.
        overrides: ``{"section.key": value}`` applied last (from ``--set`` or CLI options).
        params_dir: folder of defaults.yaml and the profiles.

    Returns:
        The resolved :class:`Params`.

    Raises:
        ConfigError: naming the key and the file for unknown keys, wrong types and bad values.
    """
    layers: list[tuple[str, dict]] = []
    defaults = params_dir / "defaults.yaml"
    if defaults.exists():
        layers.append((str(defaults), _read_yaml(defaults)))
    user: dict = {}
    if path is not None:
        user = _read_yaml(Path(path))
        profile = user.pop("profile", None) or profile
    if profile is not None:
        prof_path = params_dir / f"{profile}.yaml"
        if not prof_path.exists():
            raise _unknown(f"unknown profile {profile!r}", profile, list_profiles(params_dir), "profiles")
        layers.append((str(prof_path), _read_yaml(prof_path)))
    if path is not None:
        layers.append((str(path), user))
    deep: list[tuple[str, str, list[str], Any]] = []  # section.mapping_key.a.b=value: set inside the mapping
    if overrides:
        nested: dict[str, dict] = {}
        for key, value in overrides.items():
            section, _, sub = key.partition(".")
            if "." in sub:
                name, *path = sub.split(".")
                deep.append((section, name, path, value))
                continue
            nested.setdefault(section, {})[sub] = value
        layers.append(("command line", nested))

    merged: dict[str, dict] = {name: {} for name in SECTIONS}
    sweep: dict = {}
    for source, data in layers:
        for section, values in data.items():
            if section.startswith("_"):  # the study's blocks, checked here; read by study.py / calibration.py
                check_block(source, section, values, params_dir)
                continue
            if section == "sweep":  # a later file's design replaces an earlier one as a whole
                if values is not None and not isinstance(values, dict):
                    raise ConfigError(f"{source}: section 'sweep' must be a mapping (grid: or grids:)")
                sweep = dict(values or {})
                continue
            if section not in SECTIONS:
                raise _unknown(f"{source}: unknown section '{section}'", section, [*SECTIONS, "sweep"], "sections")
            _merge_section(merged[section], values or {}, section, source)
    for section, name, path, value in deep:  # after every layer: the key lands inside the merged mapping
        _set_inside(merged, section, name, path, value)
    data_source = _resolve_data_file(merged)
    try:
        built = {name: cls(**merged[name]) for name, cls in SECTIONS.items()}
    except ConfigError as exc:
        raise ConfigError(f"{' <- '.join(s for s, _ in layers)}: {exc}") from None
    return Params(**built, sweep=sweep, sources=[s for s, _ in layers], data_source=data_source)
