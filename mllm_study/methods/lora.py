"""LoRA through peft on the language model's linears (the paper: r=128, alpha=256, dropout 0.05, no bias, LR 2e-4).

Usage: ``apply_method(model, "lora", {"r": 16, "alpha": 32}, placement="both", connector="tuned")``

Placement ``both`` (the paper's) = every LLM linear: q, k, v, o, gate, up, down; never the vision tower, the
connector or ``lm_head``. Trainable parameters per adapted linear: r * (in_features + out_features).
DoRA, rsLoRA and other LoRA options: ``peft:lora`` with ``{use_dora: true}`` etc. (passthrough.py).
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

from .registry import lm_targets, peft_modules_to_save, register_method


@register_method("lora", defaults={"r": 128, "alpha": 256, "dropout": 0.05}, lr=2e-4, default_placement="both",
                 description="low-rank update of the LLM linears (Hu et al. 2021)",
                 display="LoRA", order=10, color="#1f77b4", size_knob="r", size_label="r", study=True)
def apply_lora(model, params, placement, connector, layers=None):
    config = LoraConfig(r=int(params["r"]), lora_alpha=params["alpha"], lora_dropout=params["dropout"], bias="none",
                        target_modules=lm_targets(model, placement, layers), task_type="CAUSAL_LM",
                        modules_to_save=peft_modules_to_save(model, connector))
    return get_peft_model(model, config)
