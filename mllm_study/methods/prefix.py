"""Prefix-tuning through peft: trained key/value vectors prepended in every attention layer (paper: 20, LR 1e-5).

Usage: ``apply_method(model, "prefix", {"num_virtual_tokens": 20}, connector="tuned")``

No reparametrisation MLP (``prefix_projection=False``): the trained parameters are the prefixes themselves,
num_virtual_tokens * 2 (keys, values) * n_layers * (n_kv_heads * head_dim) -- the count the paper's table uses.
(Li & Liang 2021 train through an MLP for stability; with it the count would include the MLP, which peft drops
after training anyway.) Prefix has no placement (every layer) and no layers subset.
Pitfall: with left padding pass ``position_ids`` from the attention mask (``train.forward_inputs``), as generate does.
"""

from __future__ import annotations

from peft import PrefixTuningConfig, get_peft_model

from .registry import peft_modules_to_save, register_method


@register_method("prefix", defaults={"num_virtual_tokens": 20}, lr=1e-5, default_placement=None,
                 placements=("both",), supports_layers=False,
                 description="trained key/value prefixes in every attention layer (Li & Liang 2021)",
                 display="Prefix", order=30, color="#2ca02c", size_knob="num_virtual_tokens", size_label="tokens",
                 study=True)
def apply_prefix(model, params, placement, connector, layers=None):
    config = PrefixTuningConfig(num_virtual_tokens=int(params["num_virtual_tokens"]), prefix_projection=False,
                                task_type="CAUSAL_LM", modules_to_save=peft_modules_to_save(model, connector))
    return get_peft_model(model, config)
