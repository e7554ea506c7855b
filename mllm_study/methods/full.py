"""Full fine-tuning of the language model (the baseline beyond the paper's four methods).

Usage: ``apply_method(model, "full", connector="tuned")``

Placement ``both`` (default) trains the whole language model: embeddings, every decoder block, the final norm and
``lm_head`` (the module map's ``language_model`` prefixes); the vision tower never trains, the connector only
with ``connector: tuned``. With ``layers`` it trains those decoder blocks entirely; placement ``attention`` or
``mlp`` trains only the mapped linears (of the chosen layers) -- partial fine-tuning. The paper's LR for full
fine-tuning of LLaVA-1.5 is 2e-5. Saved as ``adapter_model.safetensors`` (every trained tensor) +
``adapter_config.json`` with ``peft_type: FULL``; loading copies them into a fresh base model.
"""

from __future__ import annotations

from ..errors import ModelError
from .placement import get_module_map, resolve_targets
from .registry import load_into, read_weights, register_method, write_weights


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _trained_modules(model, placement, layers) -> list[str]:
    module_map = get_module_map(model)
    if placement == "both" and layers is None:
        return list(module_map.language_model)
    if placement == "both":
        prefix = module_map.blocks.replace(r"(\d+)", "{}").replace("\\.", ".")
        return [prefix.format(i) for i in layers]
    return resolve_targets(model, placement, layers)


def _save_full(model, path):
    record = model.mllm_method
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    write_weights(path, state, {"peft_type": "FULL", "library": "mllm_study", "placement": record["placement"],
                                "layers": record["layers"], "connector": record["connector"],
                                "modules_to_save": list(get_module_map(model).connector)
                                if record["connector"] == "tuned" else None})


def _load_full(base, path, record):
    state, _ = read_weights(path)
    load_into(base, state)
    return base


@register_method("full", defaults={}, lr=2e-5, default_placement="both", save=_save_full, load=_load_full,
                 description="full fine-tuning of the language model (vision tower frozen)",
                 display="Full FT", order=50, color="#9467bd")
def apply_full(model, params, placement, connector, layers=None):
    modules = _trained_modules(model, placement, layers)
    connector_modules = get_module_map(model).connector if connector == "tuned" else ()
    for name, p in model.named_parameters():
        p.requires_grad = _under(name, modules) or _under(name, connector_modules)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"full fine-tuning of {modules} found no parameters")
    return model


__all__ = ["apply_full"]
