"""LoRA through peft on the language model's linears (the paper: r=128, alpha=256, dropout 0.05, LR 2e-4).

Usage: ``apply_method(model, "lora", {"r": 16, "alpha": 32}, placement="both", connector="tuned")``
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

from .registry import CONNECTOR_MODULE, lm_target_regex, register_method


@register_method("lora", defaults={"r": 128, "alpha": 256, "dropout": 0.05},
                 description="low-rank update of every LLM linear (Hu et al. 2021)")
def apply_lora(model, params, placement, connector):
    config = LoraConfig(r=int(params["r"]), lora_alpha=params["alpha"], lora_dropout=params["dropout"], bias="none",
                        target_modules=lm_target_regex(placement), task_type="CAUSAL_LM",
                        modules_to_save=[CONNECTOR_MODULE] if connector == "tuned" else None)
    return get_peft_model(model, config)
