"""The base model as it is: no training (zero-shot baseline for every comparison).

Usage: ``mllm-study run --method none --dataset iconqa_txt``

Placement and connector are accepted and ignored (nothing trains); saving writes only ``mllm_method.json``.
"""

from __future__ import annotations

from .registry import register_method


def _save_none(model, path):
    """Nothing to save but the record (written by save_method)."""


def _load_none(base, path, record):
    return base


@register_method("none", defaults={}, lr=0.0, default_placement=None, placements=("attention", "mlp", "both"),
                 save=_save_none, load=_load_none, description="no fine-tuning: evaluate the base model",
                 display="Base model", order=0, color="0.5")
def apply_none(model, params, placement, connector, layers=None):
    return model
