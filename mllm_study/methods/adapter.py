"""Bottleneck adapter (Houlsby et al. 2019; LLM-Adapters, Hu et al. 2023) in plain PyTorch: the paper's 4th method.

Usage: ``apply_method(model, "adapter", {"bottleneck_size": 64}, placement="mlp", connector="tuned")``;
``unload_adapters(model)`` puts the original linears back.

peft has no bottleneck adapter and refuses new method names from outside, so this module implements it, wraps
frozen ``nn.Linear`` s in place and saves/loads with peft's file names. One adapter is
``A(u) = s * up(act(down(drop(u))))`` with ``down: d_in -> r`` and ``up: r -> d_out``. Variants around a frozen
linear ``W``:

- series, input-side  (before W): ``h = x + A(x)``, ``y = W h``          (d_in = d_out = W.in_features)
- series, output-side (after W):  ``z = W x``, ``y = z + A(z)``          (d_in = d_out = W.out_features)
- parallel (beside W):            ``y = W x + A(x)``                     (W.in_features -> W.out_features)

Placement through the module maps (placement.py): ``mlp`` (the paper's, default) = an input-side adapter before
gate_proj, a *separate* one before up_proj, an output-side one after down_proj; ``attention`` = an input-side
adapter before each of q_proj, k_proj and v_proj (one per projection, as the paper does for gate/up, which also
share their input; Qwen-VL's fused c_attn gets one) and an output-side one after o_proj; ``both`` = both sets.
The parallel variant puts one parallel adapter beside each of those linears instead.

Parameter count (closed form, bottleneck r, checked by the tests):
    series adapter of width d:   2*d*r  (+ r + d with bias)  (+ 1 with a learned scale)
    parallel adapter d_in->d_out: r*(d_in + d_out)  (+ r + d_out with bias)  (+ 1 with a learned scale)
    LLaVA-1.5-7B, the paper's setting (mlp, r=256, no bias): 32 layers * 3 adapters * 2*4096*256 = 201,326,592.

Init ``normal`` (the paper's): down and up weights ~ N(0, 0.02), biases 0 (the model changes at step 0);
``identity``: down ~ N(0, 0.02), up = 0, so outputs are bit-identical to the base model at start.
Scaling: a fixed float (paper 1.0) or ``"learned"`` (a scalar parameter initialised to 1).

Removal and merging: :func:`unload_adapters` restores the original linears (bit-exact base outputs). Merging
into W is only possible when the adapter is affine, i.e. ``non_linearity: identity``: with ``A(u) = M u + c``
(``M = s U D``, ``c = s (U b_d + b_u)``) input-side gives ``W' = W (I + M)``, ``b' = b + W c``; output-side
``W' = (I + M) W``, ``b' = (I + M) b + c``; parallel ``W' = W + M``, ``b' = b + c``. With tanh/relu/gelu the map
``u -> u + U act(D u)`` is not linear, no matrix reproduces it, and :func:`merge_and_unload` raises.

Saved folder: ``adapter_config.json`` (``peft_type: BOTTLENECK``, settings, placement, layers, target modules,
connector) + ``adapter_model.safetensors`` (adapter weights, plus the connector's when tuned; keys are the
model's parameter names). :func:`load_adapter` rebuilds the adapters on a fresh base model and copies them in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .placement import get_module_map, placement_roles, resolve_targets
from .registry import load_into, read_weights, register_method, write_weights

__all__ = ["AdapterSettings", "BottleneckAdapter", "AdaptedLinear", "ACTIVATIONS", "add_adapters", "adapter_sites",
           "adapter_param_count", "expected_adapter_params", "adapter_modules", "adapter_state_dict",
           "save_adapter", "load_adapter", "unload_adapters", "merge_and_unload"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
               "identity": nn.Identity}
VARIANTS = ("series", "parallel")
INITS = ("normal", "identity")
PEFT_TYPE = "BOTTLENECK"


@dataclass
class AdapterSettings:
    """One adapter's hyperparameters (defaults = the paper's configuration)."""

    bottleneck_size: int = 256  # r; the budget grid is {32, 64, 128, 256}
    non_linearity: str = "tanh"  # tanh | relu | gelu | silu | sigmoid | identity (identity makes it mergeable)
    dropout: float = 0.05  # on the adapter's input
    scaling: float | str = 1.0  # fixed factor s, or "learned" (scalar parameter initialised to 1)
    init: str = "normal"  # normal: N(0, 0.02) on down and up (paper); identity: up = 0 (model unchanged at start)
    variant: str = "series"  # series (input-side before / output-side after a linear) | parallel (beside it)
    bias: bool = False  # biases in down and up (paper: none)

    def __post_init__(self) -> None:
        if int(self.bottleneck_size) <= 0:
            raise ConfigError(f"adapter bottleneck_size must be positive (got {self.bottleneck_size})")
        self.bottleneck_size = int(self.bottleneck_size)
        if self.non_linearity not in ACTIVATIONS:
            raise ConfigError(f"adapter non_linearity {self.non_linearity!r} unknown; choose {', '.join(ACTIVATIONS)}")
        if not 0 <= float(self.dropout) < 1:
            raise ConfigError(f"adapter dropout must be in [0, 1) (got {self.dropout})")
        if self.scaling != "learned":
            try:
                self.scaling = float(self.scaling)
            except (TypeError, ValueError):
                raise ConfigError(f"adapter scaling must be a number or 'learned' (got {self.scaling!r})") from None
        if self.init not in INITS:
            raise ConfigError(f"adapter init must be one of {', '.join(INITS)} (got {self.init!r})")
        if self.variant not in VARIANTS:
            raise ConfigError(f"adapter variant must be one of {', '.join(VARIANTS)} (got {self.variant!r})")
        self.bias = bool(self.bias)


class BottleneckAdapter(nn.Module):
    """``A(u) = s * up(act(down(drop(u))))``, ``down: in_dim -> r``, ``up: r -> out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, settings: AdapterSettings, device=None, dtype=None):
        super().__init__()
        r = settings.bottleneck_size
        self.drop = nn.Dropout(settings.dropout) if settings.dropout > 0 else nn.Identity()
        self.down = nn.Linear(in_dim, r, bias=settings.bias, device=device, dtype=dtype)
        self.act = ACTIVATIONS[settings.non_linearity]()
        self.up = nn.Linear(r, out_dim, bias=settings.bias, device=device, dtype=dtype)
        if settings.scaling == "learned":
            self.scale = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        else:
            self.scale = float(settings.scaling)
        with torch.no_grad():
            nn.init.normal_(self.down.weight, 0.0, 0.02)
            if settings.init == "normal":
                nn.init.normal_(self.up.weight, 0.0, 0.02)
            else:
                nn.init.zeros_(self.up.weight)
            for lin in (self.down, self.up):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = self.up(self.act(self.down(self.drop(u))))
        return out if isinstance(self.scale, float) and self.scale == 1.0 else out * self.scale

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with ``A(u) = M u + c`` in float64 (only meaningful for the identity non-linearity)."""
        s = float(self.scale) if isinstance(self.scale, float) else float(self.scale.detach())
        down, up = self.down.weight.double(), self.up.weight.double()
        c = torch.zeros(up.shape[0], dtype=torch.float64, device=up.device)
        if self.down.bias is not None:
            c = c + up @ self.down.bias.double()
        if self.up.bias is not None:
            c = c + self.up.bias.double()
        return s * (up @ down), s * c


class AdaptedLinear(nn.Module):
    """A frozen linear with one bottleneck adapter on its input side, output side or in parallel."""

    def __init__(self, base_layer: nn.Module, side: str, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.side = side
        self.bottleneck = adapter

    # transformers code sometimes reads these off the projections (dtype checks, shapes)
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.side == "input":
            return self.base_layer(x + self.bottleneck(x), *args, **kwargs)
        y = self.base_layer(x, *args, **kwargs)
        return y + self.bottleneck(y if self.side == "output" else x)


def adapter_sites(model: nn.Module, placement: str = "mlp", layers: Sequence[int] | None = None,
                  variant: str = "series") -> dict[str, str]:
    """``{linear name: side}`` for a placement: input-side for *_in roles, output-side for *_out (or parallel)."""
    sites: dict[str, str] = {}
    for role in placement_roles(placement):
        side = "parallel" if variant == "parallel" else ("input" if role.endswith("_in") else "output")
        for name in resolve_targets(model, roles=(role,), layers=layers):
            sites[name] = side
    return sites


def adapter_param_count(in_features: int, out_features: int, side: str, settings: AdapterSettings) -> int:
    """Closed form of one adapter's parameters (see the module docstring)."""
    r = settings.bottleneck_size
    if side == "parallel":
        d_in, d_out = in_features, out_features
    else:
        d_in = d_out = in_features if side == "input" else out_features
    n = r * (d_in + d_out)
    if settings.bias:
        n += r + d_out
    if settings.scaling == "learned":
        n += 1
    return n


def expected_adapter_params(model: nn.Module, settings: AdapterSettings, placement: str = "mlp",
                            layers: Sequence[int] | None = None) -> int:
    """Closed-form total for ``model`` (from the linears' shapes; nothing is created)."""
    total = 0
    for name, side in adapter_sites(model, placement, layers, settings.variant).items():
        lin = model.get_submodule(name)
        total += adapter_param_count(lin.in_features, lin.out_features, side, settings)
    return total


def adapter_modules(model: nn.Module) -> dict[str, AdaptedLinear]:
    """The wrapped linears of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def add_adapters(model: nn.Module, settings: AdapterSettings, placement: str = "mlp",
                 layers: Sequence[int] | None = None) -> nn.Module:
    """Wrap the placement's linears in place (adapter weights trainable, on the linears' device and dtype)."""
    if adapter_modules(model):
        raise ValueError("model already has bottleneck adapters; unload_adapters(model) first")  # internal
    sites = adapter_sites(model, placement, layers, settings.variant)
    for name, side in sites.items():
        lin = model.get_submodule(name)
        if not hasattr(lin, "in_features") or not hasattr(lin, "weight"):
            raise ModelError(f"{name} is a {type(lin).__name__}, not a linear layer: cannot place an adapter")
        if side == "parallel":
            d_in, d_out = lin.in_features, lin.out_features
        else:
            d_in = d_out = lin.in_features if side == "input" else lin.out_features
        adapter = BottleneckAdapter(d_in, d_out, settings, device=lin.weight.device, dtype=lin.weight.dtype)
        _replace(model, name, AdaptedLinear(lin, side, adapter))
    object.__setattr__(model, "mllm_adapter", {"settings": dataclasses.asdict(settings), "placement": placement,
                                               "layers": list(layers) if layers is not None else None,
                                               "targets": sites})
    return model


def adapter_state_dict(model: nn.Module, connector: bool = False) -> dict[str, torch.Tensor]:
    """The adapters' tensors (and the connector's when ``connector``), keyed by parameter name."""
    connectors = get_module_map(model).connector if connector else ()
    return {n: p for n, p in model.named_parameters()
            if ".bottleneck." in n or any(n.startswith(c + ".") for c in connectors)}


def save_adapter(model: nn.Module, path: str | Path, connector: str = "frozen") -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (connector weights included when tuned)."""
    info = getattr(model, "mllm_adapter", None)
    if info is None:
        raise ValueError("model has no bottleneck adapters to save")  # internal
    module_map = get_module_map(model)
    path = Path(path)
    state = adapter_state_dict(model, connector == "tuned")
    write_weights(path, state, {
        "peft_type": PEFT_TYPE, "library": "mllm_study", **info["settings"], "placement": info["placement"],
        "layers": info["layers"], "target_modules": info["targets"], "module_map": module_map.name,
        "modules_to_save": list(module_map.connector) if connector == "tuned" else None,
        "adapter_params": sum(v.numel() for k, v in state.items() if ".bottleneck." in k)})
    return path


def load_adapter(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild the saved adapters on a fresh ``base_model`` and copy the saved weights (and connector) in."""
    state, config = read_weights(Path(path))
    if config.get("peft_type") != PEFT_TYPE:
        raise ModelError(f"{path} holds {config.get('peft_type')!r} weights, not a bottleneck adapter")
    fields = {f.name for f in dataclasses.fields(AdapterSettings)}
    settings = AdapterSettings(**{k: v for k, v in config.items() if k in fields})
    add_adapters(base_model, settings, config["placement"], config["layers"])
    load_into(base_model, state)
    return base_model


def unload_adapters(model: nn.Module) -> nn.Module:
    """Remove every adapter, putting the original (untouched) linears back; returns the model."""
    for name, module in adapter_modules(model).items():
        _replace(model, name, module.base_layer)
    model.__dict__.pop("mllm_adapter", None)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold affine adapters (``non_linearity: identity``) into their linears, then remove them.

    Raises:
        ValueError: a non-linear adapter (tanh, relu, ...): not mergeable; use :func:`unload_adapters`.
    """
    modules = adapter_modules(model)
    acts = {type(m.bottleneck.act).__name__ for m in modules.values()}
    if acts - {"Identity"}:
        raise ConfigError(f"cannot merge bottleneck adapters with non-linearity {sorted(acts)}: x + U act(D x) is not "
                          f"a linear map. Use unload_adapters(model) to remove them, or non_linearity 'identity'.")
    for name, module in modules.items():
        base = module.base_layer
        W = base.weight.detach().double()
        b = base.bias.detach().double() if base.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64,
                                                                                  device=W.device)
        M, c = module.bottleneck.affine()
        if module.side == "input":
            W_new, b_new = W + W @ M, b + W @ c
        elif module.side == "output":
            W_new, b_new = W + M @ W, b + M @ b + c
        else:
            W_new, b_new = W + M, b + c
        needs_bias = base.bias is not None or bool(torch.any(b_new != 0))
        merged = nn.Linear(base.in_features, base.out_features, bias=needs_bias, device=W.device,
                           dtype=base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(W_new.to(base.weight.dtype))
            if needs_bias:
                merged.bias.copy_(b_new.to(base.weight.dtype))
        merged.weight.requires_grad = base.weight.requires_grad
        _replace(model, name, merged)
    model.__dict__.pop("mllm_adapter", None)
    return model


def _save(model, path):
    save_adapter(model, path, model.mllm_method["connector"])


def _load(base, path, record):
    return load_adapter(base, path)


@register_method("adapter", defaults=dataclasses.asdict(AdapterSettings()), lr=5e-5, default_placement="mlp",
                 save=_save, load=_load, description="series/parallel bottleneck adapters (Houlsby et al. 2019)",
                 display="Adapter", order=40, color="#d62728", size_knob="bottleneck_size", size_label="bottleneck",
                 study=True)
def apply_adapter(model, params, placement, connector, layers=None):
    add_adapters(model, AdapterSettings(**params), placement, layers)
    if connector == "tuned":
        for name in get_module_map(model).connector:
            for p in model.get_submodule(name).parameters():
                p.requires_grad = True
    return model
