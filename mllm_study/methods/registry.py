"""The registry of PEFT methods: one file per method, each registered with :func:`register_method`.

Usage: ``model = apply_method(model, "lora", {"r": 8}, placement="mlp", connector="tuned")``;
``save_method(model, "out/adapter")``; ``model = load_method(fresh_base, "out/adapter")``

A method turns a frozen base model into a trainable one. Its ``defaults`` are the paper's configuration (Zhou et al.
2024, docs/study.md) and its ``lr`` the paper's learning rate. The same call declares what the report side shows of it
(display name, order, colour, size knob, whether it is one of the study's methods: :class:`mllm_study.method_info.
MethodInfo`, literal arguments the report side reads from the method file's source without importing torch), so a
new method is one new file in this folder (``methods/__init__.py`` imports every module of the package).

Targets come from the per-architecture module maps of :mod:`.placement`, never from bare names. Every applied
model records what was applied (``model.mllm_method``), which :func:`save_method` writes beside the weights
(``mllm_method.json``) so :func:`load_method` can rebuild it on a fresh base model. Folder layout = peft's:
``adapter_config.json`` + ``adapter_model.safetensors`` (+ README.md for peft methods), for the peft methods, the
bottleneck adapter and full fine-tuning alike.

The vision encoder stays frozen unless ``vision="tuned"`` (the paper's appendix also tries tuning it): then every
vision-encoder parameter trains (the connector still follows ``connector``), and :func:`save_method` writes them
beside the method's weights (``vision_encoder.safetensors``, parameter names of the unwrapped model) so that
:func:`load_method` restores them.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError, ModelError
from ..method_info import INFO_FIELDS, MethodInfo, declare_method, undeclare_method
from .placement import (MODULE_MAPS, PLACEMENTS, connector_param_names, connector_save_names, get_module_map,
                        is_connector_param, placement_roles, resolve_targets, target_regex, unwrap_model,
                        vision_param_names)

__all__ = ["Method", "METHODS", "register_method", "unregister_method", "get_method", "list_methods", "apply_method",
           "save_method", "load_method", "lm_target_regex", "lm_targets", "peft_modules_to_save",
           "connector_param_names", "is_connector_param", "CONNECTOR_MODULE", "ATTENTION_LINEARS", "MLP_LINEARS",
           "RECORD_FILE", "VISION_FILE", "vision_param_names"]

CONNECTOR_MODULE = "multi_modal_projector"  # LLaVA's connector; other architectures: placement.connector_modules
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
RECORD_FILE = "mllm_method.json"  # what apply_method applied, written by save_method beside the weights
VISION_FILE = "vision_encoder.safetensors"  # the vision encoder's weights when it was tuned


@dataclass
class Method:
    """A PEFT method: its paper defaults, learning rate, placements and how to apply, save and load it."""

    name: str
    apply: Callable[..., torch.nn.Module]  # (model, params, placement, connector, layers) -> model
    defaults: dict[str, Any] = field(default_factory=dict)  # the paper's configuration (the only accepted keys)
    description: str = ""
    lr: float = 2e-4  # the paper's learning rate for this method (the connector's is separate: 2e-5)
    default_placement: str | None = "both"  # used when placement is None; None = the method has no placement
    placements: tuple[str, ...] = PLACEMENTS  # accepted placements
    supports_layers: bool = True  # whether a ``layers`` subset applies
    free_params: bool = False  # True: params go to a peft config class that validates them (passthrough)
    save: Callable[[torch.nn.Module, Path], None] | None = None  # None = peft ``save_pretrained``
    load: Callable[[torch.nn.Module, Path, dict], torch.nn.Module] | None = None  # None = ``PeftModel.from_pretrained``
    info: MethodInfo | None = None  # what the report side shows of it (None: a passthrough tuner)


METHODS: dict[str, Method] = {}


def register_method(name: str, defaults: dict[str, Any] | None = None, description: str = "", lr: float = 2e-4,
                    default_placement: str | None = "both", placements: Sequence[str] = PLACEMENTS,
                    supports_layers: bool = True, save: Callable | None = None, load: Callable | None = None,
                    **info: Any):
    """Decorator registering ``fn(model, params, placement, connector, layers) -> model`` as method ``name``.

    ``info``: the method's display metadata (:class:`mllm_study.method_info.MethodInfo` fields: ``display``,
    ``order``, ``color``, ``size_knob``, ``size_label``, ``study``), declared for the report side together with
    ``lr``, ``default_placement`` and ``description``. Write them as literals: the report side reads them from the
    method file's source. A ``size_knob`` must be one of ``defaults``."""
    unknown = sorted(set(info) - set(INFO_FIELDS))
    if unknown:
        raise TypeError(f"register_method({name!r}): unknown argument(s) {unknown}; "
                        f"metadata fields: {', '.join(INFO_FIELDS)}")
    meta = MethodInfo(name=name, lr=lr, default_placement=default_placement, description=description, **info)
    if meta.size_knob is not None and meta.size_knob not in (defaults or {}):
        raise TypeError(f"register_method({name!r}): size_knob {meta.size_knob!r} is not one of its defaults "
                        f"{sorted(defaults or {})}")

    def wrap(fn):
        METHODS[name] = Method(name=name, apply=fn, defaults=dict(defaults or {}), description=description, lr=lr,
                               default_placement=default_placement, placements=tuple(placements),
                               supports_layers=supports_layers, save=save, load=load, info=meta)
        declare_method(meta)
        return fn

    return wrap


def unregister_method(name: str) -> None:
    """Remove method ``name`` from the registry and its metadata (a method registered for a while, e.g. in a test)."""
    METHODS.pop(name, None)
    undeclare_method(name)


def get_method(name: str) -> Method:
    """The registered method ``name``, or ``peft:<tuner>`` for any other peft tuner; unknown names list the known."""
    if name.startswith("peft:"):
        from .passthrough import passthrough_method

        return passthrough_method(name)
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(METHODS))}, "
                          f"or peft:<tuner> for any other peft tuner (e.g. peft:loha, peft:vera)")
    return METHODS[name]


def list_methods() -> list[str]:
    """The registered method names (``peft:<tuner>`` names are resolved on demand, see passthrough.list_tuners)."""
    return sorted(METHODS)


def lm_target_regex(placement: str) -> str:
    """peft ``target_modules`` regex of LLaVA's (llava-hf, transformers 5.x) LM linears for ``placement``.

    Prefer :func:`lm_targets`, which picks the module map of the model at hand.
    """
    module_map = MODULE_MAPS["llava-hf"]
    return target_regex(module_map, module_map.role_names(placement_roles(placement)))


def lm_targets(model: torch.nn.Module, placement: str | None = "both", layers: Sequence[int] | None = None,
               roles: Sequence[str] | None = None) -> str:
    """A peft ``target_modules`` regex for ``model``'s placement/roles, checked to match (ValueError if not)."""
    resolve_targets(model, placement, layers, roles)  # raises naming the patterns that found nothing
    module_map = get_module_map(model)
    roles = tuple(roles) if roles is not None else placement_roles(placement or "both")
    return target_regex(module_map, module_map.role_names(roles), layers)


def peft_modules_to_save(model: torch.nn.Module, connector: str) -> list[str] | None:
    """peft ``modules_to_save`` for the connector when tuned (saved with the adapter, restored on load)."""
    return connector_save_names(model) if connector == "tuned" else None


def check_placement(method: Method, placement: str | None) -> str | None:
    """The placement a run of ``method`` uses (None or "default": the method's default); ConfigError if not accepted."""
    if placement is None or placement == "default":
        return method.default_placement
    if placement not in method.placements:
        if method.default_placement is None:
            raise ConfigError(f"method {method.name!r} has no placement (it acts on every layer); "
                              f"got placement {placement!r}, accepted: None or {', '.join(method.placements)}")
        raise ConfigError(f"placement {placement!r} not available for {method.name!r}; "
                          f"choose one of {', '.join(method.placements)}")
    return placement


def apply_method(model: torch.nn.Module, name: str, params: dict[str, Any] | None = None,
                 placement: str | None = None, connector: str = "frozen",
                 layers: Sequence[int] | None = None, vision: str = "frozen") -> torch.nn.Module:
    """Freeze the base model and apply method ``name`` (the vision encoder stays frozen unless ``vision="tuned"``).

    Args:
        model: a transformers image-text-to-text model (any architecture with a module map).
        name: a registered method or ``peft:<tuner>``.
        params: method parameters; unset ones take the paper's defaults; unknown ones are an error.
        placement: attention | mlp | both, or None / "default" for the method's own (adapter: mlp, LoRA: both).
        connector: ``frozen`` or ``tuned`` (fully trained, saved with the method's weights).
        layers: decoder-block indices to adapt (None = all).
        vision: ``frozen`` (the study's setting) or ``tuned`` (every vision-encoder parameter trains, saved with the
            method's weights). Not with method ``none``, which trains nothing.

    Returns:
        The trainable model (a peft ``PeftModel`` for peft methods, the same model otherwise) carrying
        ``mllm_method`` (what was applied).
    """
    method = get_method(name)
    if connector not in ("frozen", "tuned"):
        raise ConfigError(f"connector must be 'frozen' or 'tuned' (got {connector!r})")
    if vision not in ("frozen", "tuned"):
        raise ConfigError(f"vision must be 'frozen' or 'tuned' (got {vision!r})")
    if vision == "tuned" and name == "none":
        raise ConfigError("vision 'tuned' needs a method that trains; method 'none' trains nothing")
    if not method.free_params:
        unknown = set(params or {}) - set(method.defaults)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {sorted(unknown)} for method {name!r}; "
                              f"known: {', '.join(sorted(method.defaults)) or 'none'}")
    if layers is not None and not method.supports_layers:
        raise ConfigError(f"method {name!r} does not take a layers subset")
    layers = sorted({int(i) for i in layers}) if layers is not None else None
    placement = check_placement(method, placement)
    merged = {**method.defaults, **(params or {})}
    for p in model.parameters():
        p.requires_grad = False
    out = method.apply(model, merged, placement, connector, layers)
    if vision == "tuned":
        names = set(vision_param_names(out))
        for p_name, p in out.named_parameters():
            if p_name in names:
                p.requires_grad = True
    if name != "none":
        _check_trainable(out, name, connector, vision)
    try:
        map_name = get_module_map(out).name
    except ModelError:  # only "none" gets here on an architecture without a map
        map_name = None
    fp32_master_weights(out)
    record = {"method": name, "params": merged, "placement": placement, "connector": connector, "layers": layers,
              "module_map": map_name, "vision": vision}
    object.__setattr__(out, "mllm_method", record)
    return out


def fp32_master_weights(model: torch.nn.Module) -> int:
    """Trainable float16/bfloat16 parameters become float32 (AdamW's in-place updates in half precision underflow:
    NaN within a few steps in float16, most weights never changing in bfloat16), while the frozen base keeps the
    checkpoint's dtype; the forward then runs under autocast in that dtype (:func:`mllm_study.train.
    precision_context`). Returns how many parameters were converted (none for a float32 model)."""
    converted = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
            converted += 1
    return converted


def _check_trainable(model: torch.nn.Module, name: str, connector: str, vision: str = "frozen") -> None:
    """Guard the study's invariants: the vision encoder trained exactly when tuned (all of it), the connector
    trained exactly when tuned."""
    params = dict(model.named_parameters())
    names = vision_param_names(model)
    trainable = [n for n in names if params[n].requires_grad]
    if vision == "frozen" and trainable:
        raise RuntimeError(f"method {name!r} made vision-encoder parameters trainable: {trainable[:3]}")
    if vision == "tuned":
        frozen = [n for n in names if not params[n].requires_grad]
        if not trainable or frozen:
            raise RuntimeError(f"method {name!r}: vision 'tuned' but {len(frozen)} vision-encoder parameters are "
                               f"frozen (e.g. {frozen[:3]}) and {len(trainable)} train")
    tuned = connector_param_names(model, trainable_only=True)
    if (connector == "tuned") != bool(tuned):
        raise RuntimeError(f"method {name!r}: connector {connector!r} but {len(tuned)} connector parameters train")


# ----------------------------------------------------------------------------- save / load


def _peft_save(model: torch.nn.Module, path: Path) -> None:
    model.save_pretrained(str(path))


def _peft_load(base: torch.nn.Module, path: Path, record: dict) -> torch.nn.Module:
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(path), is_trainable=False)
    _restore_fp32(model, path)
    return model


def _restore_fp32(model: torch.nn.Module, path: Path) -> None:
    """peft loads ``modules_to_save`` (the tuned connector) into the base's half precision, rounding away the fp32
    master weights it saved (a bfloat16 LayerNorm weight of 1.0 cannot hold a 1e-3 update): re-load those in fp32."""
    from peft.utils import ModulesToSaveWrapper, set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = path / "adapter_model.safetensors"
    wrappers = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    if not weights.exists() or not wrappers:
        return
    state = load_file(str(weights))
    if not any(v.dtype == torch.float32 for v in state.values()):
        return
    if not any(p.dtype in (torch.float16, torch.bfloat16) for w in wrappers for p in w.modules_to_save.parameters()):
        return
    for w in wrappers:
        w.modules_to_save.float()
    set_peft_model_state_dict(model, state)


def save_method(model: torch.nn.Module, path: str | Path) -> Path:
    """Save what :func:`apply_method` applied (and trained) to folder ``path``; returns the folder.

    peft methods: peft's ``save_pretrained``; adapter and full: the same file names, written by the project.
    ``mllm_method.json`` records method, parameters, placement, connector and layers for :func:`load_method`.
    """
    record = getattr(model, "mllm_method", None)
    if record is None:
        raise ValueError("model was not prepared by apply_method (no mllm_method record): nothing to save")  # internal
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    method = get_method(record["method"])
    (method.save or _peft_save)(model, path)
    if record.get("vision") == "tuned":
        _save_vision(model, path)
    (path / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
    return path


def _save_vision(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    base = unwrap_model(model)
    names = set(vision_param_names(base))
    state = {n: p.detach().to("cpu").clone().contiguous() for n, p in base.named_parameters() if n in names}
    tmp = path / f".{VISION_FILE}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(path / VISION_FILE)


def _load_vision(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not (path / VISION_FILE).exists():
        raise ModelError(f"{path} records a tuned vision encoder but has no {VISION_FILE}")
    base = unwrap_model(model)
    state = load_file(str(path / VISION_FILE))
    expected = set(vision_param_names(base))
    if set(state) != expected:
        raise ModelError(f"{path / VISION_FILE} does not fit this model's vision encoder: "
                         f"{len(set(state) - expected)} unknown and {len(expected - set(state))} missing names")
    load_into(base, state)


def load_method(base_model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Restore a saved method onto a fresh base model (same architecture and weights as at training time).

    Returns the model in eval mode with nothing trainable; connector weights are restored when they were tuned.
    """
    path = Path(path)
    if not (path / RECORD_FILE).exists():
        raise ModelError(f"{path} has no {RECORD_FILE}: not saved by save_method")
    record = json.loads((path / RECORD_FILE).read_text())
    method = get_method(record["method"])
    model = (method.load or _peft_load)(base_model, path, record)
    if record.get("vision") == "tuned":
        _load_vision(model, path)
    for p in model.parameters():
        p.requires_grad = False
    object.__setattr__(model, "mllm_method", record)
    model.eval()
    return model


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (alias of placement.unwrap_model)."""
    return unwrap_model(model)


def write_weights(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (peft's file names) for non-peft methods."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors sharing storage (tied weights) and non-contiguous views
    save_file({k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()},
              str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`write_weights` wrote: (state dict, config)."""
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors")), json.loads((path / "adapter_config.json").read_text())


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``'s parameters by name; every saved tensor must find its parameter."""
    own = dict(model.named_parameters())
    missing = [k for k in state if k not in own]
    if missing:
        raise ModelError(f"saved weights do not fit this model: {len(missing)} unknown names, e.g. {missing[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ModelError(f"saved weight {k} has shape {tuple(v.shape)}, model has {tuple(own[k].shape)}")
            if v.dtype == torch.float32 and own[k].dtype in (torch.float16, torch.bfloat16):
                own[k].data = v.clone()  # fp32 master weights stay fp32 (see fp32_master_weights)
            else:
                own[k].copy_(v.to(own[k].dtype))


__all__ += ["write_weights", "read_weights", "load_into", "base_of", "check_placement"]
