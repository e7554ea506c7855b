"""Golden regression of the embedded model's pre-training: the smoke base model's weights, fingerprinted per tensor.

CPU training is deterministic, so any change to the code that pre-trains (world, tokenizer, models, data, train)
that alters what it computes moves these numbers; the quick profile's base model (README) moves with them. A
change that is meant to alter the weights regenerates the fixture with

    MLLM_STUDY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

and says so in its commit message. The tolerance (relative 1e-4) absorbs float rounding differences between CPU
instruction sets, not changes of the recipe (those move the fingerprints by orders of magnitude more).

Attention key biases are not compared: adding a constant to every key shifts each query's scores by the same amount,
which softmax ignores, so their gradient is zero up to rounding and AdamW, which normalises the gradient, turns that
rounding into steps of the learning rate's size. Their values are rounding noise of the machine (seen: two CPUs give
different vision-tower ``k_proj.bias``, every other tensor equal within 1e-4), and nothing the model computes
depends on them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "smoke_pretrain.json"


def _fingerprint(model_dir: Path) -> dict[str, list[float]]:
    from safetensors.torch import load_file

    out = {}
    for name, t in sorted(load_file(str(model_dir / "model.safetensors")).items()):
        t = t.double().flatten()
        out[name] = [float(t.sum()), float(t.abs().sum()), float((t * t).sum()), float(t[0]), float(t[-1])]
    return out


def _compared(name: str) -> bool:
    """False for attention key biases: softmax ignores them, so they hold only rounding noise (module docstring)."""
    return not name.endswith("k_proj.bias")


def test_smoke_pretraining_matches_the_golden_weights(smoke_model_dir):
    got = _fingerprint(smoke_model_dir)
    record = json.loads((smoke_model_dir / "pretrain_record.json").read_text())
    losses = {k: v["final_loss"] for k, v in record["stages"].items()}
    if os.environ.get("MLLM_STUDY_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"final_losses": losses, "tensors": got}, indent=1) + "\n")
        pytest.skip(f"golden fixture rewritten: {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(golden["tensors"]), "the smoke model's tensors changed names"
    for stage, loss in golden["final_losses"].items():
        assert math.isclose(losses[stage], loss, rel_tol=1e-4), (stage, losses[stage], loss)
    moved = [name for name, values in got.items() if _compared(name)
             and not all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
                        for a, b in zip(values, golden["tensors"][name]))]
    assert not moved, (f"{len(moved)} tensors differ from the golden fixture, e.g. {moved[:3]} "
                       "(see this file's docstring)")
