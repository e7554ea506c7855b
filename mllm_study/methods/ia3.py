"""IA3 through peft: learned vectors (initialised to 1) rescaling attention keys/values and the feed-forward input.

Usage: ``apply_method(model, "ia3", placement="both", connector="tuned")``

The paper's configuration (placement ``both``, LR 2e-4): outputs of k_proj and v_proj, input of down_proj
(peft's ``feedforward_modules``: IA3 scales a feed-forward linear's input instead of its output). Placement
``attention`` = k and v only; ``mlp`` = down_proj only. Trainable parameters: out_features of k and v plus
in_features of down, per layer. IA3 has no size knob. On Qwen-VL the fused ``c_attn`` is rescaled as a whole
(queries included), see placement.py.
"""

from __future__ import annotations

from peft import IA3Config, get_peft_model

from .registry import lm_targets, peft_modules_to_save, register_method

ROLES = {"attention": ("ia3_attn",), "mlp": ("mlp_out",), "both": ("ia3_attn", "mlp_out")}


@register_method("ia3", defaults={}, lr=2e-4, default_placement="both",
                 description="learned rescaling of keys, values and feed-forward input (Liu et al. 2022)",
                 display="IA3", order=20, color="#ff7f0e", study=True)
def apply_ia3(model, params, placement, connector, layers=None):
    roles = ROLES[placement]
    feedforward = lm_targets(model, layers=layers, roles=("mlp_out",)) if "mlp_out" in roles else []
    config = IA3Config(target_modules=lm_targets(model, layers=layers, roles=roles), feedforward_modules=feedforward,
                       task_type="CAUSAL_LM", modules_to_save=peft_modules_to_save(model, connector))
    return get_peft_model(model, config)
