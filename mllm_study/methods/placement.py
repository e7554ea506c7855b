"""Per-architecture module maps: where the language model's linears, the connector and the vision tower live.

Usage: ``targets = resolve_targets(model, "mlp", layers=[0, 1])`` or ``get_module_map(model).connector``

Every PEFT method targets modules through these maps, never through bare names such as ``q_proj``: the CLIP and
SigLIP vision towers have ``q_proj`` too, Qwen-VL's vision blocks have ``mlp.c_proj`` like its language model, and
a connector is a stack of ``nn.Linear`` as well. A map names modules *inside one decoder block* by role:

- ``attn_in``  linears reading the attention input (q, k, v; Qwen-VL's fused ``c_attn``);
- ``attn_out`` the attention output projection (o_proj / ``c_proj``);
- ``mlp_in``   linears reading the MLP input (gate, up; Qwen-VL's ``w1``, ``w2``);
- ``mlp_out``  the MLP output projection (down_proj / ``mlp.c_proj``);
- ``ia3_attn`` the attention linears whose *outputs* IA3 rescales (keys and values; Qwen-VL has only the fused
  ``c_attn``, so IA3 there also rescales the queries).

Placement ``attention`` = attn_in + attn_out, ``mlp`` = mlp_in + mlp_out, ``both`` = all four; ``layers`` picks
decoder blocks by index. Targets are full-match regexes anchored at the language model's block prefix, so they
can never reach the vision tower or the connector (tests check this on tiny random models of each architecture).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import ConfigError, ModelError

__all__ = ["ModuleMap", "MODULE_MAPS", "PLACEMENTS", "register_module_map", "get_module_map", "unwrap_model",
           "placement_roles", "target_regex", "resolve_targets", "connector_modules", "connector_param_names",
           "is_connector_param", "is_vision_param", "connector_save_names", "vision_param_names", "base_param_name"]

PLACEMENTS = ("attention", "mlp", "both")


@dataclass(frozen=True)
class ModuleMap:
    """Where things are in one family of image-text-to-text models (module names as ``named_modules`` gives them)."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values this map serves first (then any family by structure)
    blocks: str  # regex of the language model's decoder-block prefix; its one group is the layer index
    attn_in: tuple[str, ...]
    attn_out: tuple[str, ...]
    mlp_in: tuple[str, ...]
    mlp_out: tuple[str, ...]
    ia3_attn: tuple[str, ...]
    connector: tuple[str, ...]  # full module names of the multimodal connector (tuned with ``connector: tuned``)
    vision: tuple[str, ...]  # full module names of the vision encoder (always frozen)
    language_model: tuple[str, ...]  # module-name prefixes that make up the language model (full fine-tuning)
    notes: str = ""

    def role_names(self, roles: Iterable[str]) -> tuple[str, ...]:
        out: list[str] = []
        for role in roles:
            out.extend(getattr(self, role))
        return tuple(out)


MODULE_MAPS: dict[str, ModuleMap] = {}


def register_module_map(module_map: ModuleMap) -> ModuleMap:
    """Add a map (adding an architecture = one call with its module names)."""
    MODULE_MAPS[module_map.name] = module_map
    return module_map


_LLAMA_ATTN_IN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LLAMA = dict(attn_in=_LLAMA_ATTN_IN, attn_out=("self_attn.o_proj",), mlp_in=("mlp.gate_proj", "mlp.up_proj"),
              mlp_out=("mlp.down_proj",), ia3_attn=("self_attn.k_proj", "self_attn.v_proj"))

# llava-hf LLaVA-1.5 (Vicuna/LLaMA) in transformers 5.x; ShareGPT4V-7B converted to the llava-hf layout is the same
# architecture (LLaVA-1.5 recipe, CLIP-L/336 + 2-layer MLP connector + Vicuna-7B). LLaVA-NeXT, Mistral3 and Gemma3
# use the same top-level names (``model.{vision_tower, multi_modal_projector, language_model}``) with
# LLaMA-style blocks.
register_module_map(ModuleMap(
    name="llava-hf", model_types=("llava", "llava_next", "mistral3", "gemma3"),
    blocks=r"model\.language_model\.layers\.(\d+)", **_LLAMA,
    connector=("model.multi_modal_projector",), vision=("model.vision_tower",),
    language_model=("model.language_model", "lm_head"),
    notes="transformers 5.x names (4.x had language_model.model...)"))

# The original LLaVA / ShareGPT4V repositories' layout (liuhaotian/llava-v1.5-7b, Lin-Chen/ShareGPT4V-7B):
# LlavaLlamaForCausalLM with the LM at the top and ``mm_projector`` beside it. Needs those repositories' code.
register_module_map(ModuleMap(
    name="llava-original", model_types=("llava_llama", "share4v"),
    blocks=r"model\.layers\.(\d+)", **_LLAMA,
    connector=("model.mm_projector",), vision=("model.vision_tower",),
    language_model=("model.embed_tokens", "model.layers", "model.norm", "lm_head"),
    notes="LLaVA/ShareGPT4V training-repo layout (remote code)"))

# Qwen2-VL (transformers 5.x Qwen2VLForConditionalGeneration): the patch merger sits inside the vision model.
register_module_map(ModuleMap(
    name="qwen2-vl", model_types=("qwen2_vl",),
    blocks=r"model\.language_model\.layers\.(\d+)", **_LLAMA,
    connector=("model.visual.merger",), vision=("model.visual",),
    language_model=("model.language_model", "lm_head"),
    notes="connector = the visual patch merger (inside model.visual, excluded from the frozen vision tower)"))

# Qwen-VL-Chat (remote code, GPT-2-style names). c_attn is the fused q/k/v projection; the MLP is
# c_proj(w1(x) * silu(w2(x))), so w1 and w2 both read the MLP input. Connector = the cross-attention resampler.
register_module_map(ModuleMap(
    name="qwen-vl", model_types=("qwen",),
    blocks=r"transformer\.h\.(\d+)", attn_in=("attn.c_attn",), attn_out=("attn.c_proj",),
    mlp_in=("mlp.w1", "mlp.w2"), mlp_out=("mlp.c_proj",), ia3_attn=("attn.c_attn",),
    connector=("transformer.visual.attn_pool",), vision=("transformer.visual",),
    language_model=("transformer.wte", "transformer.h", "transformer.ln_f", "lm_head"),
    notes="fused c_attn: one input-side adapter / one IA3 vector covers q, k and v"))

# Idefics3 and SmolVLM (SigLIP vision model, pixel-shuffle connector, Llama text model).
register_module_map(ModuleMap(
    name="idefics3", model_types=("idefics3", "smolvlm"),
    blocks=r"model\.text_model\.layers\.(\d+)", **_LLAMA,
    connector=("model.connector",), vision=("model.vision_model",),
    language_model=("model.text_model", "lm_head")))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model of a peft ``PeftModel`` (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _module_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in unwrap_model(model).named_modules()]


def get_module_map(model: torch.nn.Module | None = None, model_type: str | None = None,
                   names: Sequence[str] | None = None) -> ModuleMap:
    """The module map of ``model`` (or of a ``model_type`` and a list of module ``names``).

    Maps declaring the config's ``model_type`` are tried first, then every map; the first whose decoder-block
    pattern matches a module wins (so a LLaVA-layout model of an unlisted type still resolves).

    Raises:
        ValueError: no map matches; the message lists the known maps and the model's top-level modules.
    """
    if model is not None:
        base = unwrap_model(model)
        model_type = model_type or getattr(getattr(base, "config", None), "model_type", None)
        names = _module_names(base)
    names = list(names or [])
    ordered = [m for m in MODULE_MAPS.values() if model_type in m.model_types]
    ordered += [m for m in MODULE_MAPS.values() if m not in ordered]
    for module_map in ordered:
        block = re.compile(module_map.blocks + r"(?:\.|$)")
        if any(block.match(n) for n in names):
            return module_map
    tops = sorted({n.split(".")[0] + ("." + n.split(".")[1] if "." in n else "") for n in names if n})[:12]
    raise ModelError(f"no module map for model_type {model_type!r}: none of the maps' decoder-block patterns match. "
                     f"Known maps: {', '.join(f'{m.name} ({m.blocks})' for m in MODULE_MAPS.values())}. "
                     f"The model's top modules: {', '.join(tops)}. Add one with register_module_map().")


def placement_roles(placement: str) -> tuple[str, ...]:
    """The roles of a placement: attention -> (attn_in, attn_out), mlp -> (mlp_in, mlp_out), both -> all four."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)} (got {placement!r})")
    return {"attention": ("attn_in", "attn_out"), "mlp": ("mlp_in", "mlp_out"),
            "both": ("attn_in", "attn_out", "mlp_in", "mlp_out")}[placement]


def _layers_regex(layers: Sequence[int] | None) -> str:
    if layers is None:
        return r"\d+"
    return "(?:" + "|".join(str(int(i)) for i in sorted(set(layers))) + ")"


def target_regex(module_map: ModuleMap, names: Sequence[str], layers: Sequence[int] | None = None) -> str:
    """A full-match regex for block-relative ``names`` in ``layers`` (all when None), for peft ``target_modules``.

    Example (llava-hf, mlp, layers [0, 3]):
    ``model\\.language_model\\.layers\\.(?:0|3)\\.(?:mlp\\.gate_proj|mlp\\.up_proj|mlp\\.down_proj)``
    """
    prefix = module_map.blocks.replace(r"(\d+)", _layers_regex(layers))
    alternatives = "|".join(re.escape(n) for n in names)
    return rf"{prefix}\.(?:{alternatives})"


def resolve_targets(model: torch.nn.Module, placement: str | None = None, layers: Sequence[int] | None = None,
                    roles: Sequence[str] | None = None, names: Sequence[str] | None = None) -> list[str]:
    """The full names of the modules a placement (or explicit ``roles``) designates, in model order.

    Args:
        model: a transformers model (or a peft-wrapped one).
        placement: attention | mlp | both (ignored when ``roles`` is given).
        layers: decoder-block indices; None = all.
        roles: explicit roles (e.g. ``("ia3_attn", "mlp_out")``).
        names: module names to resolve against instead of ``model``'s (e.g. a written list for remote-code
            models); ``model`` may then be a :class:`ModuleMap`.

    Raises:
        ValueError: a pattern found nothing (naming the patterns), or a layer index does not exist.
    """
    if isinstance(model, ModuleMap):
        module_map, all_names = model, list(names or [])
    else:
        all_names = list(names) if names is not None else _module_names(model)
        module_map = get_module_map(model) if names is None else get_module_map(names=all_names)
    roles = tuple(roles) if roles is not None else placement_roles(placement or "both")
    rel_names = module_map.role_names(roles)
    block = re.compile(module_map.blocks)
    present = sorted({int(m.group(1)) for n in all_names if (m := block.match(n))})
    if layers is not None:
        missing = sorted(set(int(i) for i in layers) - set(present))
        if missing or not layers:
            span = f"{present[0]}..{present[-1]}" if present else "none found"
            raise ConfigError(f"layers {missing or list(layers)} do not exist in the language model "
                              f"({module_map.name}: layers {span})")
    empty = [target_regex(module_map, [rel], layers) for rel in rel_names
             if not any(re.fullmatch(target_regex(module_map, [rel], layers), n) for n in all_names)]
    if empty or not rel_names:
        raise ModelError(f"placement {placement!r} (roles {', '.join(roles)}) of module map {module_map.name!r}: "
                         f"these patterns found no module: {', '.join(empty) or '(no names for these roles)'}")
    regex = re.compile(target_regex(module_map, rel_names, layers))
    return [n for n in all_names if regex.fullmatch(n)]


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _peft_prefix(model: torch.nn.Module) -> str:
    """What peft puts before the base model's names: ``base_model.model.`` (tuners such as LoRA, whose
    ``base_model`` is a LoraModel wrapper) or ``base_model.`` (prompt learning, whose ``base_model`` is the model)."""
    get_base = getattr(model, "get_base_model", None)
    if not callable(get_base):
        return ""
    return "base_model." if getattr(model, "base_model", None) is get_base() else "base_model.model."


def base_param_name(name: str, model: torch.nn.Module) -> str:
    """A parameter name as the base model names it (without peft's prefix and wrapper levels)."""
    prefix = _peft_prefix(model)
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    return re.sub(r"\.modules_to_save\.[^.]+(?=\.)|\.original_module(?=\.)|\.base_layer(?=\.)", "", name)


def connector_modules(model: torch.nn.Module) -> tuple[str, ...]:
    """Full module names of the connector(s) of ``model``."""
    return get_module_map(model).connector


def is_connector_param(name: str, model: torch.nn.Module, module_map: ModuleMap | None = None) -> bool:
    """Whether parameter ``name`` (as ``model.named_parameters()`` gives it, peft-wrapped or not) is a connector's."""
    module_map = module_map or get_module_map(model)
    return _under(base_param_name(name, model), module_map.connector)


def is_vision_param(name: str, model: torch.nn.Module, module_map: ModuleMap | None = None) -> bool:
    """Whether parameter ``name`` belongs to the vision encoder (the connector excluded, e.g. Qwen2-VL's merger)."""
    module_map = module_map or get_module_map(model)
    base_name = base_param_name(name, model)
    return _under(base_name, module_map.vision) and not _under(base_name, module_map.connector)


def _param_names(model: torch.nn.Module, belongs, trainable_only: bool) -> list[str]:
    module_map = get_module_map(model)
    return [n for n, p in model.named_parameters()
            if (p.requires_grad or not trainable_only) and belongs(n, model, module_map)]


def connector_param_names(model: torch.nn.Module, trainable_only: bool = False) -> list[str]:
    """Names of the connector's parameters in ``model`` (for a separate learning-rate group).

    runs.py can build its groups with it: ``connector = set(connector_param_names(model, trainable_only=True))``.
    """
    return _param_names(model, is_connector_param, trainable_only)


def vision_param_names(model: torch.nn.Module, trainable_only: bool = False) -> list[str]:
    """Names of the vision encoder's parameters in ``model`` (the connector excluded), as ``named_parameters``."""
    return _param_names(model, is_vision_param, trainable_only)


def connector_save_names(model: torch.nn.Module) -> list[str]:
    """peft ``modules_to_save`` entries for the connector: the shortest dotted suffix naming each one uniquely.

    peft matches ``modules_to_save`` by ``name.endswith(entry)``; the short form (``multi_modal_projector`` for
    LLaVA) keeps adapter configs readable and identical to earlier runs.
    """
    names = _module_names(model)
    out = []
    for full in get_module_map(model).connector:
        parts = full.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if sum(1 for n in names if n == suffix or n.endswith("." + suffix)) == 1:
                out.append(suffix)
                break
        else:
            raise ModelError(f"connector module {full!r} not found in the model")
    return out
