"""The registry of PEFT methods and the module patterns they target.

Usage: ``get_method("lora").apply(model, {"r": 8}, placement="mlp", connector="frozen")``
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Method", "METHODS", "register_method", "get_method", "list_methods", "apply_method",
           "lm_target_regex", "CONNECTOR_MODULE", "ATTENTION_LINEARS", "MLP_LINEARS"]

CONNECTOR_MODULE = "multi_modal_projector"
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Method:
    """A PEFT method: its defaults and how it turns a base model into a trainable one."""

    name: str
    apply: Callable[..., torch.nn.Module]  # (model, params, placement, connector) -> model
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


METHODS: dict[str, Method] = {}


def register_method(name: str, defaults: dict[str, Any] | None = None, description: str = ""):
    """Decorator registering ``fn(model, params, placement, connector) -> model`` as method ``name``."""

    def wrap(fn):
        METHODS[name] = Method(name=name, apply=fn, defaults=dict(defaults or {}), description=description)
        return fn

    return wrap


def get_method(name: str) -> Method:
    """The registered method ``name``; unknown names list the known ones."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def list_methods() -> list[str]:
    return sorted(METHODS)


def lm_target_regex(placement: str) -> str:
    """A full-match regex for the language model's linears of ``placement`` (never the vision tower/connector).

    transformers 5.x names: ``model.language_model.layers.N.self_attn.q_proj`` etc.
    """
    names = {"attention": ATTENTION_LINEARS, "mlp": MLP_LINEARS, "both": ATTENTION_LINEARS + MLP_LINEARS}[placement]
    return rf".*language_model.*\.({'|'.join(names)})$"


def apply_method(model: torch.nn.Module, name: str, params: dict[str, Any] | None = None,
                 placement: str = "both", connector: str = "frozen") -> torch.nn.Module:
    """Freeze the base model and apply method ``name``; unknown method parameters are an error."""
    method = get_method(name)
    unknown = set(params or {}) - set(method.defaults)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for method {name!r}; "
                         f"known: {', '.join(sorted(method.defaults)) or 'none'}")
    merged = {**method.defaults, **(params or {})}
    for p in model.parameters():
        p.requires_grad = False
    return method.apply(model, merged, placement, connector)
