"""VeRA through peft: frozen random projections shared by every adapted linear, trained scaling vectors per linear.

Usage: ``apply_method(model, "vera", {"r": 256}, placement="both", connector="tuned")``

Kopiczko et al. 2024 (ICLR), "VeRA: Vector-based Random Matrix Adaptation": ``W x + Λ_b B Λ_d A x`` with ``A``
(r x in) and ``B`` (out x r) random, frozen and shared by all adapted linears (peft draws them once, at the largest
in/out width, from ``prng_key``, and slices them per linear), and the trained vectors ``λ_d`` (r) and ``λ_b``
(out_features, initialised to 0, so the model starts as the base model). Trainable parameters per adapted linear:
r + out_features -- far fewer than LoRA's r * (in + out), which is why VeRA takes larger ranks (peft's default 256).
Targets: the placement's LM linears from the module maps, like LoRA (never the vision tower, the connector or
``lm_head``). ``A`` and ``B`` are saved with the adapter (``save_projection``), so a reload does not depend on the
random generator.

Not one of the paper's methods (``study=False``): no research question runs it and it is not in any study grid.
``peft:vera`` (passthrough.py) still gives peft's raw config; this is the first-class method with this project's
parameter names. The learning rate is of the order the VeRA paper uses (its vectors need rates ~10x LoRA's).
"""

from __future__ import annotations

from peft import VeraConfig, get_peft_model

from .registry import lm_targets, peft_modules_to_save, register_method


@register_method("vera", defaults={"r": 256, "dropout": 0.0, "d_initial": 0.1, "prng_key": 0}, lr=4e-3,
                 default_placement="both",
                 description="shared frozen random projections, trained scaling vectors (Kopiczko et al. 2024)",
                 display="VeRA", order=60, color="#e6ab02", size_knob="r", size_label="r")
def apply_vera(model, params, placement, connector, layers=None):
    config = VeraConfig(r=int(params["r"]), vera_dropout=float(params["dropout"]),
                        d_initial=float(params["d_initial"]), projection_prng_key=int(params["prng_key"]),
                        save_projection=True, bias="none", target_modules=lm_targets(model, placement, layers),
                        task_type="CAUSAL_LM", modules_to_save=peft_modules_to_save(model, connector))
    return get_peft_model(model, config)
