"""The base model as it is: no training (zero-shot baseline for every comparison).

Usage: ``mllm-study run --method none --dataset iconqa_txt``
"""

from __future__ import annotations

from .registry import register_method


@register_method("none", defaults={}, description="no fine-tuning: evaluate the base model")
def apply_none(model, params, placement, connector):
    return model
