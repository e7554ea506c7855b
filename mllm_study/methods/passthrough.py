"""Any other peft tuner by name: method ``peft:<tuner>`` with the tuner's own config parameters.

Usage: ``apply_method(model, "peft:loha", {"r": 8, "alpha": 16}, placement="both")``;
DoRA: ``apply_method(model, "peft:lora", {"r": 16, "lora_alpha": 32, "use_dora": True})``;
VeRA: ``apply_method(model, "peft:vera", {"r": 64})``

Choice: a name prefix (``peft:vera``) rather than one ``peft`` method with a ``tuner`` parameter, so the tuner
shows in run ids, CLI flags and result tables like every other method. The tuner is any key of peft's
``PEFT_TYPE_TO_CONFIG_MAPPING`` (lower case). Its parameters go verbatim to that config class (peft's names,
e.g. ``lora_alpha`` not ``alpha``); unknown ones are an error listing the class's fields. Unset parameters take
*peft's* defaults (not the paper's: the paper did not run these tuners).

``target_modules`` defaults to the placement's LM linears from the module map (never the vision tower), and
``feedforward_modules`` (IA3-style tuners) to the MLP output projections when the placement includes the MLP;
pass ``target_modules`` yourself for tuners that target other modules (``ln_tuning``: norms,
``trainable_tokens``: embeddings). Prompt-learning tuners (prompt_tuning, p_tuning, prefix_tuning, cpt, ...) take
no targets and no placement. ``modules_to_save`` is the connector when tuned (do not pass it). Default LR 2e-4.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import lru_cache

from ..errors import ConfigError
from ..method_info import PASSTHROUGH_LR
from .registry import Method, lm_targets, peft_modules_to_save

__all__ = ["list_tuners", "tuner_config_class", "passthrough_method", "NO_AUTO_TARGETS"]

# tuners whose target_modules are not the LM linears of a placement: the user passes them (or peft's defaults hold)
NO_AUTO_TARGETS = ("adaption_prompt", "ln_tuning", "trainable_tokens", "xlora")
_RESERVED = ("peft_type", "task_type", "modules_to_save")


def _mapping() -> dict:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(getattr(k, "value", k)).lower(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def list_tuners() -> list[str]:
    """Tuner names accepted after ``peft:``."""
    return sorted(_mapping())


def tuner_config_class(tuner: str):
    """peft's config class of ``tuner``; unknown names list the known ones."""
    mapping = _mapping()
    if tuner not in mapping:
        close = difflib.get_close_matches(tuner, list(mapping), n=1)
        hint = f" Did you mean 'peft:{close[0]}'?" if close else ""
        raise ConfigError(f"unknown peft tuner {tuner!r}.{hint} Known tuners: {', '.join(sorted(mapping))}")
    return mapping[tuner]


def _is_prompt_learning(config_cls) -> bool:
    from peft.config import PromptLearningConfig

    return issubclass(config_cls, PromptLearningConfig)


@lru_cache(maxsize=None)
def passthrough_method(name: str) -> Method:
    """The :class:`Method` for ``peft:<tuner>`` (built on demand, not listed by list_methods)."""
    tuner = name.split(":", 1)[1].strip().lower()
    config_cls = tuner_config_class(tuner)
    prompt = _is_prompt_learning(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}

    def apply(model, params, placement, connector, layers=None):
        from peft import get_peft_model

        unknown = sorted(set(params) - fields)
        reserved = sorted(set(params) & set(_RESERVED))
        if unknown or reserved:
            close = {k: difflib.get_close_matches(k, sorted(fields), n=1) for k in unknown}
            hints = "; ".join(f"{k!r}: did you mean {v[0]!r}?" for k, v in close.items() if v)
            known = ", ".join(sorted(fields - set(_RESERVED)))
            raise ConfigError(f"{name}: parameter(s) {unknown + reserved} not accepted by {config_cls.__name__}"
                              f"{' (' + hints + ')' if hints else ''}. Known: {known}"
                              f"{'; set the connector with connector: tuned, not modules_to_save' if reserved else ''}")
        kwargs = dict(params)
        if not prompt and "target_modules" in fields and "target_modules" not in kwargs \
                and tuner not in NO_AUTO_TARGETS:
            kwargs["target_modules"] = lm_targets(model, placement, layers)
            if "feedforward_modules" in fields and "feedforward_modules" not in kwargs:  # IA3-style tuners
                kwargs["feedforward_modules"] = lm_targets(model, layers=layers, roles=("mlp_out",)) \
                    if placement in ("mlp", "both") else []
        elif layers is not None:
            raise ConfigError(f"{name}: a layers subset needs automatic targets (not with prompt learning or "
                              f"explicit target_modules)")
        if "task_type" in fields:
            kwargs["task_type"] = "CAUSAL_LM"
        if "modules_to_save" in fields:
            kwargs["modules_to_save"] = peft_modules_to_save(model, connector)
        elif connector == "tuned":
            raise ConfigError(f"{name}: {config_cls.__name__} cannot save a tuned connector (no modules_to_save)")
        try:
            config = config_cls(**kwargs)
        except ValueError as exc:  # peft's own check of a value (a bad option, not a bug): one line
            raise ConfigError(f"{name}: {exc}") from None
        return get_peft_model(model, config)

    return Method(name=name, apply=apply, defaults={}, description=f"peft {config_cls.__name__} (passthrough)",
                  lr=PASSTHROUGH_LR, default_placement=None if prompt else "both",
                  placements=("both",) if prompt else ("attention", "mlp", "both"),
                  supports_layers=not prompt, free_params=True)
