"""Parameter/FLOP accounting on the real architectures (meta device, no weights) against closed forms."""

from __future__ import annotations

import json

import pytest
import torch

from mllm_study.accounting import (PAPER_METHODS, ParamsRow, count_method, format_params_table, list_model_configs,
                                   load_model_config, main_params, params_rows)

# LLaVA-1.5-7B (llava-hf): Vicuna-7B h=4096, intermediate 11008, 32 layers, vocab 32064; CLIP-L/336 + 2-layer MLP.
H, FF, L, V = 4096, 11008, 32, 32064
BASE_7B = 7_063_427_072  # sum of the llava-hf checkpoint's tensors
CONNECTOR_7B = 1024 * H + H + H * H + H  # linear_1 (1024 -> 4096) + linear_2 (4096 -> 4096), with biases = 20,979,712
LORA_7B = 128 * (4 * (H + H) + 2 * (H + FF) + (FF + H)) * L  # r (in + out) over q,k,v,o, gate,up, down = 319,815,680
IA3_7B = (H + H + FF) * L  # k and v outputs, down_proj input = 614,400
PREFIX_7B = 20 * 2 * L * H  # virtual tokens x (key, value) x layers x width = 5,242,880
ADAPTER_7B = 3 * 2 * H * 256 * L  # gate-in, up-in, down-out adapters of width 4096, r=256 = 201,326,592
# non-embedding LM parameters: per layer 4 h^2 (attention) + 3 h i (MLP) + 2 h (norms); final norm; lm_head
P_LM_7B = L * (4 * H * H + 3 * H * FF + 2 * H) + H + V * H


@pytest.fixture(scope="module")
def rows_7b():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # meta tensors: nothing to parallelise, and the machine's 2 cores are shared
    rows = params_rows("llava-1.5-7b")
    torch.set_num_threads(before)
    return {(r.method, r.connector): r for r in rows}, rows


def test_configs_are_kept_in_the_repo():
    assert {"llava-1.5-7b", "llava-1.5-13b", "qwen2-vl-7b"} <= set(list_model_configs())
    cfg = load_model_config("llava-1.5-13b")
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.intermediate_size) == \
        (5120, 40, 13824)
    with pytest.raises(ValueError, match="unknown model config 'llava-2'"):
        load_model_config("llava-2")


@pytest.mark.slow
def test_paper_configurations_on_llava_7b_match_closed_forms(rows_7b):
    by, rows = rows_7b
    # one row per paper method x connector, in that order, all on the same 7B base at the default context
    assert [(r.method, r.connector) for r in rows] == [(m, c) for m, _, _ in PAPER_METHODS for c in ("frozen", "tuned")]
    assert {(r.model, r.n_ctx, r.vision, r.all_params - r.peft_params) for r in rows} == \
        {("llava-1.5-7b", 2048, "frozen", BASE_7B)}
    expected = {"lora": LORA_7B, "ia3": IA3_7B, "prefix": PREFIX_7B, "adapter": ADAPTER_7B}
    assert LORA_7B == 319_815_680 and ADAPTER_7B == 201_326_592 and PREFIX_7B == 5_242_880 and IA3_7B == 614_400
    for method, n in expected.items():
        frozen, tuned = by[method, "frozen"], by[method, "tuned"]
        assert frozen.peft_params == tuned.peft_params == frozen.trainable == n
        assert tuned.trainable == n + CONNECTOR_7B
        assert frozen.all_params == BASE_7B + n  # the tuned connector is not counted twice
        assert frozen.trainable_percent == pytest.approx(100 * n / (BASE_7B + n))
    assert by["lora", "tuned"].trainable_percent == pytest.approx(100 * (LORA_7B + CONNECTOR_7B) / (BASE_7B + LORA_7B))
    assert by["adapter", "frozen"].placement == "mlp" and by["prefix", "frozen"].placement is None


@pytest.mark.slow
def test_flops_follow_the_study_formulas(rows_7b):
    by, *_ = rows_7b
    ia3 = by["ia3", "frozen"]
    # train = 4 P_frozen + 6 P_trainable (forward 2, activation gradients 2 through every weight, weight
    # gradients 2 for trainable ones); inference = 2 (P_non-embedding + n_layer d_model n_ctx)
    assert ia3.train_flops_per_token == 4 * P_LM_7B + 6 * IA3_7B
    assert ia3.train_flops_per_token_study == 2 * P_LM_7B + 4 * IA3_7B  # the older reading, kept beside it
    assert ia3.infer_flops_per_token == 2 * (P_LM_7B + IA3_7B + L * H * 2048)
    lora = by["lora", "frozen"]
    assert lora.train_flops_per_token == 4 * P_LM_7B + 6 * LORA_7B
    for r in by.values():  # training a token always costs more than inferring it (the old formula failed this)
        assert r.train_flops_per_token > r.infer_flops_per_token
    prefix = by["prefix", "frozen"]  # prefixes lengthen every attention context instead of adding weights
    assert prefix.infer_flops_per_token == 2 * (P_LM_7B + L * H * (2048 + 20))
    # per image: CLIP-L/336 on 577 patches (frozen), connector on 576 image tokens (x2 frozen, x4 tuned)
    vision = by["lora", "tuned"].infer_flops_per_image / 2 - CONNECTOR_7B * 576
    assert by["lora", "tuned"].train_flops_per_image - by["lora", "frozen"].train_flops_per_image == \
        2 * CONNECTOR_7B * 576
    assert vision / 577 == pytest.approx(303.5e6, rel=0.01)  # CLIP ViT-L/14-336 vision tower ~303.5M parameters


@pytest.mark.slow
def test_table_prints_every_row(rows_7b):
    _, rows = rows_7b
    table = format_params_table("llava-1.5-7b", rows=rows)
    lines = table.splitlines()
    assert len(lines) == 3 + 8 and "7,063,427,072 base parameters" in lines[0]
    assert any(line.startswith("lora") and "319,815,680" in line and "4.332" in line for line in lines)


@pytest.mark.slow
def test_qwen2_vl_prefix_counts_grouped_kv_heads():
    row = count_method("qwen2-vl-7b", "prefix")
    # 28 layers, 4 key/value heads x head_dim 128 = 512-wide keys and values
    assert row.trainable == 20 * 2 * 28 * 512
    assert row.all_params - row.peft_params == 8_291_375_616


@pytest.mark.slow
def test_main_params_json(capsys):
    assert main_params(["--model", "llava-1.5-7b", "--methods", "ia3", "--connector", "frozen", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["trainable"] == IA3_7B and rows[0]["placement"] == "both"
    assert [m for m, _, _ in PAPER_METHODS] == ["lora", "ia3", "prefix", "adapter"]


# CLIP ViT-L/14-336 in closed form: class embedding 1024, patch conv 3*14*14*1024, 577 positions * 1024,
# pre/post layer norms 2 * 2048, and 24 blocks of q,k,v,o (1024^2 + 1024 each), fc1 (1024*4096 + 4096),
# fc2 (4096*1024 + 1024) and two layer norms (2 * 2048).
VISION_7B = 1024 + 3 * 14 * 14 * 1024 + 577 * 1024 + 2 * 2048 \
    + 24 * (4 * (1024 * 1024 + 1024) + (1024 * 4096 + 4096) + (4096 * 1024 + 1024) + 2 * 2048)


@pytest.mark.slow
def test_a_tuned_vision_encoder_is_counted(capsys):
    assert VISION_7B == 303_507_456
    assert main_params(["--model", "llava-1.5-7b", "--methods", "ia3", "--connector", "frozen",
                        "--vision", "frozen,tuned", "--json"]) == 0
    frozen, tuned = json.loads(capsys.readouterr().out)
    assert (frozen["vision"], tuned["vision"]) == ("frozen", "tuned")
    assert tuned["trainable"] - frozen["trainable"] == VISION_7B and tuned["all_params"] == frozen["all_params"]
    # tuned: 6 instead of 2 FLOPs per vision parameter and patch (577 patches), and the frozen connector above it
    # now passes activation gradients down (+2 per connector parameter and image token); tokens unchanged
    assert tuned["train_flops_per_image"] - frozen["train_flops_per_image"] == 4 * VISION_7B * 577 \
        + 2 * CONNECTOR_7B * 576
    assert tuned["train_flops_per_token"] == frozen["train_flops_per_token"]
    table = format_params_table("llava-1.5-7b", rows=[ParamsRow(**frozen), ParamsRow(**tuned)])
    assert table.splitlines()[1].split()[:4] == ["method", "placement", "connector", "vision"]
    assert table.splitlines()[-1].split()[3:5] == ["tuned", f"{IA3_7B + VISION_7B:,}"]
