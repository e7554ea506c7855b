"""The PEFT method registry as a test matrix on the tiny LLaVA, plus module maps of other architectures.

Matrix rows: method x placement x connector. Every row checks: exactly the expected parameter names train (never a
vision-tower one; the connector only when tuned), the forward pass is finite, a few AdamW steps lower the loss on a
fixed batch, save -> fresh base -> load reproduces the logits. Adding a method = adding rows.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from PIL import Image

from mllm_study.config import PretrainConfig
from mllm_study.data import Collator
from mllm_study.methods import (METHODS, AdapterSettings, apply_method, get_method, list_tuners, load_method,
                                merge_and_unload, resolve_targets, save_method, unload_adapters)
from mllm_study.methods.adapter import adapter_param_count, expected_adapter_params
from mllm_study.methods.placement import (MODULE_MAPS, connector_param_names, connector_save_names, get_module_map,
                                          is_connector_param, is_vision_param)
from mllm_study.models import build_tiny_llava, build_tokenizer
from mllm_study.train import forward_inputs

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
PLACED = {"attention": ATTN, "mlp": MLP, "both": ATTN + MLP}
LAYERS = (0, 1)  # PretrainConfig(): 2 decoder layers, hidden 128, intermediate 256


def _linears(rel, layers=LAYERS):
    return [f"model.language_model.layers.{i}.{r}" for i in layers for r in rel]


TEXTS = ["what color is the square ?", "red", "how many shapes ?", "two", "user : assistant :"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from 2 threads, and on a shared 2-core machine 2 threads can be 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(base model, processor, train batch, generate batch); tests deep-copy the base."""
    root = tmp_path_factory.mktemp("img")
    paths = []
    for k, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        paths.append(str(root / f"{k}.png"))
        Image.new("RGB", (32, 32), colour).save(paths[-1])
    records = [
        {"id": "1", "image_path": paths[0], "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the square ?"}, {"from": "gpt", "value": "red"}]},
        {"id": "2", "image_path": paths[1], "conversations": [
            {"from": "human", "value": "<image>\nhow many shapes ?"}, {"from": "gpt", "value": "two"}]},
        {"id": "3", "image_path": paths[0], "conversations": [
            {"from": "human", "value": "<image>\nred ?"}, {"from": "gpt", "value": "red"}]},
    ]
    model, processor = build_tiny_llava(build_tokenizer(TEXTS), PretrainConfig(), seed=0)
    model.eval()
    train = Collator(processor, mode="train")(records)
    gen = Collator(processor, mode="generate")(records)
    assert (train["attention_mask"] == 0).any() and (gen["attention_mask"] == 0).any()  # left padding is exercised
    return model, processor, train, gen


def _logits(model, batch):
    with torch.no_grad():
        return model(**forward_inputs(model, {k: v for k, v in batch.items() if k != "labels"})).logits


def _train_steps(model, batch, lr, steps):
    """``steps`` AdamW steps on ``batch`` over the trainable parameters (seeded dropout), then eval mode."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        _loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _loss(model, batch):
    return model(**forward_inputs(model, batch)).loss


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


CONNECTOR_COPY = {f"base_model.model.model.multi_modal_projector.modules_to_save.default.linear_{i}.{w}"
                  for i in (1, 2) for w in ("weight", "bias")}
CONNECTOR = {f"model.multi_modal_projector.linear_{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}


def _expected(method, params, placement, connector, base):
    """The exact trainable names of a row (written independently of the module maps)."""
    if method == "lora":
        names = {f"base_model.model.{lin}.lora_{ab}.default.weight" for lin in _linears(PLACED[placement])
                 for ab in "AB"}
        return names | (CONNECTOR_COPY if connector == "tuned" else set())
    if method == "ia3":
        rel = {"attention": ATTN[1:3], "mlp": MLP[2:], "both": ATTN[1:3] + MLP[2:]}[placement]
        names = {f"base_model.model.{lin}.ia3_l.default" for lin in _linears(rel)}
        return names | (CONNECTOR_COPY if connector == "tuned" else set())
    if method == "adapter":
        settings = AdapterSettings(**params)
        parts = ["down.weight", "up.weight"] + (["down.bias", "up.bias"] if settings.bias else []) \
            + (["scale"] if settings.scaling == "learned" else [])
        names = {f"{lin}.bottleneck.{part}" for lin in _linears(PLACED[placement or "mlp"]) for part in parts}
        return names | (CONNECTOR if connector == "tuned" else set())
    if method == "prefix":
        return {"prompt_encoder.default.embedding.weight"} | \
            ({c.replace("base_model.model.model.", "base_model.model.") for c in CONNECTOR_COPY}
             if connector == "tuned" else set())
    if method == "vera":
        names = {f"base_model.model.{lin}.vera_lambda_{bd}.default" for lin in _linears(PLACED[placement])
                 for bd in "bd"}
        return names | (CONNECTOR_COPY if connector == "tuned" else set())
    if method == "full":
        if placement in (None, "both"):
            names = {n for n, _ in base.named_parameters() if n.startswith(("model.language_model.", "lm_head."))}
        else:
            names = {f"{lin}.weight" for lin in _linears(PLACED[placement])}
        return names | (CONNECTOR if connector == "tuned" else set())
    return None  # passthrough: checked by property (only mapped modules, each of them adapted)


ROWS = [("lora", {"r": 4, "alpha": 8}, pl, c) for pl in PLACED for c in ("frozen", "tuned")]
ROWS += [("ia3", {}, pl, c) for pl in PLACED for c in ("frozen", "tuned")]
ROWS += [("adapter", {"bottleneck_size": 8}, pl, c) for pl in PLACED for c in ("frozen", "tuned")]
ROWS += [("adapter", {"bottleneck_size": 8, "variant": "parallel", "bias": True, "scaling": "learned",
                      "non_linearity": "gelu"}, "both", "tuned"),
         ("adapter", {"bottleneck_size": 8, "init": "identity"}, None, "frozen")]
ROWS += [("prefix", {"num_virtual_tokens": 4}, None, c) for c in ("frozen", "tuned")]
ROWS += [("full", {}, None, "tuned"), ("full", {}, "mlp", "frozen")]
ROWS += [("vera", {"r": 16}, "both", "tuned"), ("vera", {"r": 16, "dropout": 0.1}, "attention", "frozen")]
ROWS += [("peft:loha", {"r": 4, "alpha": 8}, "both", "tuned"),
         ("peft:lora", {"r": 4, "lora_alpha": 8, "use_dora": True}, "mlp", "frozen"),
         ("peft:vera", {"r": 16}, "attention", "frozen")]
LR = {"ia3": 5e-2, "full": 1e-3, "peft:vera": 5e-2, "vera": 5e-2}


def _row_id(method, params, placement, connector):
    extra = "-" + "-".join(map(str, params.values())) if method == "adapter" and len(params) > 1 else ""
    return f"{method}-{placement or 'default'}-{connector}{extra}"


# make test-fast keeps the first row of each method (every method still trains, saves and reloads); the rest is slow
_FIRST = {row[0]: i for i, row in reversed(list(enumerate(ROWS)))}
MATRIX = [pytest.param(*row, id=_row_id(*row), marks=() if _FIRST[row[0]] == i else pytest.mark.slow)
          for i, row in enumerate(ROWS)]


@pytest.mark.parametrize("method, params, placement, connector", MATRIX)
def test_method_matrix(tiny, tmp_path, method, params, placement, connector):
    base0, _, batch, _ = tiny
    model = apply_method(copy.deepcopy(base0), method, params, placement, connector)
    trainable = _trainable(model)
    assert not any("vision_tower" in n for n in trainable)
    assert bool(connector_param_names(model, trainable_only=True)) == (connector == "tuned")
    expected = _expected(method, params, placement, connector, base0)
    if expected is not None:
        assert trainable == expected
    else:  # passthrough: every trainable tensor sits in a mapped linear or the connector copy; each linear adapted
        linears = _linears(PLACED[placement])
        owner = {n: next((lin for lin in linears if n.startswith(f"base_model.model.{lin}.")), None)
                 for n in trainable}
        assert all(lin is not None or n in CONNECTOR_COPY for n, lin in owner.items())
        assert set(owner.values()) - {None} == set(linears)
        assert (trainable >= CONNECTOR_COPY) == (connector == "tuned")
    assert model.mllm_method["placement"] == (placement or get_method(method).default_placement)

    model.eval()
    before = _loss(model, batch).item()
    assert torch.isfinite(torch.tensor(before))
    _train_steps(model, batch, LR.get(method, 1e-2), 5)
    after = _loss(model, batch).item()
    assert after < before, (before, after)

    logits = _logits(model, batch)
    assert torch.isfinite(logits).all()
    save_method(model, tmp_path / "saved")
    assert (tmp_path / "saved" / "adapter_config.json").exists()
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
    loaded = load_method(copy.deepcopy(base0), tmp_path / "saved")
    assert not _trainable(loaded)
    torch.testing.assert_close(_logits(loaded, batch), logits, rtol=0, atol=1e-6)


def test_none_method_is_the_base_model(tiny, tmp_path):
    base0, _, batch, _ = tiny
    model = apply_method(copy.deepcopy(base0), "none", {}, "both", "frozen")
    assert not _trainable(model)
    save_method(model, tmp_path / "none")
    loaded = load_method(copy.deepcopy(base0), tmp_path / "none")
    assert torch.equal(_logits(loaded, batch), _logits(base0, batch))


def test_lora_layers_subset_and_connector_save_name(tiny):
    base0, *_ = tiny
    model = apply_method(copy.deepcopy(base0), "lora", {"r": 2}, "attention", "tuned", layers=[1])
    lora = {n for n in _trainable(model) if "lora_" in n}
    assert lora == {f"base_model.model.{lin}.lora_{ab}.default.weight" for lin in _linears(ATTN, [1]) for ab in "AB"}
    assert model.peft_config["default"].modules_to_save == ["multi_modal_projector"]  # as earlier runs recorded
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist"):
        apply_method(copy.deepcopy(base0), "lora", {}, "mlp", layers=[5])


def test_prefix_forward_matches_left_padded_generate(tiny):
    """Step-0 scores of batched left-padded generate == forward logits with forward_inputs' position ids."""
    base0, processor, _, gen = tiny
    model = apply_method(copy.deepcopy(base0), "prefix", {"num_virtual_tokens": 4}, None, "frozen")
    with torch.no_grad():  # a non-trivial prefix (peft initialises it randomly; make it matter more)
        model.prompt_encoder["default"].embedding.weight.mul_(3.0)
    model.eval()
    forward = _logits(model, gen)[:, -1]
    no_positions = model(**{k: v for k, v in gen.items()}).logits[:, -1]
    out = model.generate(**gen, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=processor.tokenizer.pad_token_id)
    torch.testing.assert_close(out.logits[0], forward, rtol=0, atol=1e-5)
    assert (no_positions - forward).abs().max() > 1e-4  # the pitfall the position ids fix is real here


def test_method_defaults_are_the_papers():
    assert METHODS["lora"].defaults == {"r": 128, "alpha": 256, "dropout": 0.05}
    assert METHODS["prefix"].defaults == {"num_virtual_tokens": 20}
    assert METHODS["adapter"].defaults == {"bottleneck_size": 256, "non_linearity": "tanh", "dropout": 0.05,
                                           "scaling": 1.0, "init": "normal", "variant": "series", "bias": False}
    assert {m: METHODS[m].lr for m in ("lora", "ia3", "adapter", "prefix")} == \
        {"lora": 2e-4, "ia3": 2e-4, "adapter": 5e-5, "prefix": 1e-5}
    assert METHODS["adapter"].default_placement == "mlp" and METHODS["lora"].default_placement == "both"
    assert METHODS["prefix"].default_placement is None


def test_default_placement_is_the_methods_own(tiny):
    model = apply_method(copy.deepcopy(tiny[0]), "adapter", {"bottleneck_size": 4}, "default")
    assert model.mllm_method["placement"] == "mlp"
    assert sorted(model.mllm_adapter["targets"]) == sorted(_linears(MLP))
    assert set(model.mllm_adapter["targets"].values()) == {"input", "output"}
    assert model.mllm_adapter["targets"]["model.language_model.layers.0.mlp.down_proj"] == "output"


@pytest.mark.parametrize("call, message", [
    (lambda m: get_method("lorra"), r"unknown method 'lorra'. Did you mean 'lora'\?.*Known methods: adapter, full"),
    (lambda m: apply_method(m, "lora", {"rank": 4}), r"unknown parameter\(s\) \['rank'\] for method 'lora'"),
    (lambda m: apply_method(m, "peft:lohaa"), r"unknown peft tuner 'lohaa'. Did you mean 'peft:loha'\?.*Known tuners"),
    (lambda m: apply_method(m, "peft:loha", {"rank": 4}), r"'rank'.*not accepted by LoHaConfig"),
    (lambda m: apply_method(m, "peft:lora", {"modules_to_save": ["x"]}), r"connector: tuned, not modules_to_save"),
    (lambda m: apply_method(m, "prefix", placement="mlp"), r"'prefix' has no placement"),
    (lambda m: apply_method(m, "lora", connector="half"), r"connector must be 'frozen' or 'tuned'"),
    (lambda m: apply_method(m, "adapter", {"non_linearity": "swish"}), r"non_linearity 'swish' unknown"),
    (lambda m: apply_method(m, "prefix", layers=[0]), r"does not take a layers subset"),
])
def test_errors_name_the_problem(tiny, call, message):
    with pytest.raises(ValueError, match=message):
        call(copy.deepcopy(tiny[0]))


def test_passthrough_lists_peft_tuners():
    assert {"lora", "loha", "lokr", "vera", "ia3", "prefix_tuning"} <= set(list_tuners())
    assert get_method("peft:vera").free_params and get_method("peft:prompt_tuning").default_placement is None


# ----------------------------------------------------------------------------- bottleneck adapter


@pytest.mark.parametrize("placement, params, closed_form", [
    # hidden h=128, intermediate 256, r=8, 2 layers
    ("mlp", {}, 2 * 3 * (2 * 128 * 8)),  # gate-in, up-in (width 128), down-out (width 128)
    ("attention", {}, 2 * 4 * (2 * 128 * 8)),  # q, k, v input-side + o output-side, all width 128
    ("both", {"bias": True, "scaling": "learned"}, 2 * 7 * (2 * 128 * 8 + 8 + 128 + 1)),
    ("mlp", {"variant": "parallel"}, 2 * (8 * (128 + 256) * 2 + 8 * (256 + 128))),  # gate/up 128->256, down 256->128
])
def test_adapter_parameter_count_closed_form(tiny, placement, params, closed_form):
    settings = AdapterSettings(bottleneck_size=8, **params)
    model = apply_method(copy.deepcopy(tiny[0]), "adapter", {"bottleneck_size": 8, **params}, placement)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == closed_form
    assert expected_adapter_params(model, settings, placement) == closed_form
    assert adapter_param_count(4096, 11008, "output", AdapterSettings()) == 2 * 11008 * 256


def test_adapter_identity_init_and_removal_are_exact(tiny):
    base0, _, batch, _ = tiny
    reference = _logits(base0, batch)
    same = apply_method(copy.deepcopy(base0), "adapter", {"bottleneck_size": 8, "init": "identity"}, "both")
    assert torch.equal(_logits(same.eval(), batch), reference)  # max abs diff 0
    changed = apply_method(copy.deepcopy(base0), "adapter", {"bottleneck_size": 8}, "both").eval()
    assert not torch.equal(_logits(changed, batch), reference)  # the paper's N(0, 0.02) init moves the model
    restored = unload_adapters(changed)
    assert not any("bottleneck" in n for n, _ in restored.named_parameters())
    assert torch.equal(_logits(restored, batch), reference)


@pytest.mark.parametrize("variant", ["series", "parallel"])
def test_adapter_merge_when_affine_and_refusal_otherwise(tiny, variant):
    base0, _, batch, _ = tiny
    params = {"bottleneck_size": 8, "non_linearity": "identity", "bias": True, "scaling": 0.5, "variant": variant}
    model = apply_method(copy.deepcopy(base0), "adapter", params, "both").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "bottleneck" in n and n.endswith("bias"):
                p.normal_(0, 0.05)
    adapted = _logits(model, batch)
    merged = merge_and_unload(model)
    assert not any("bottleneck" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), adapted, rtol=0, atol=2e-5)
    tanh = apply_method(copy.deepcopy(base0), "adapter", {"bottleneck_size": 8}, "mlp")
    with pytest.raises(ValueError, match=r"cannot merge .*Tanh.*not a linear map.*unload_adapters"):
        merge_and_unload(tanh)


def test_adapter_saved_like_peft_with_connector(tiny, tmp_path):
    import json

    base0, _, batch, _ = tiny
    model = apply_method(copy.deepcopy(base0), "adapter", {"bottleneck_size": 8}, None, "tuned")
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight.add_(0.1)  # "trained" connector must come back on load
    save_method(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "BOTTLENECK" and config["placement"] == "mlp"
    assert config["modules_to_save"] == ["model.multi_modal_projector"]
    assert config["adapter_params"] == 2 * 3 * (2 * 128 * 8)
    loaded = load_method(copy.deepcopy(base0), tmp_path / "a")
    torch.testing.assert_close(_logits(loaded, batch), _logits(model.eval(), batch), rtol=0, atol=0)


# ----------------------------------------------------------------------------- module maps of other architectures

def _tiny_other(kind):
    import transformers as tf

    txt = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)
    vis = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
               patch_size=8)
    torch.manual_seed(0)
    if kind == "qwen2_vl":
        cfg = tf.Qwen2VLConfig(text_config=dict(**txt, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                               vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2,
                                                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2))
        return tf.Qwen2VLForConditionalGeneration(cfg)
    if kind == "idefics3":
        return tf.Idefics3ForConditionalGeneration(tf.Idefics3Config(text_config=txt, vision_config=vis,
                                                                     scale_factor=2))
    if kind == "smolvlm":
        return tf.SmolVLMForConditionalGeneration(tf.SmolVLMConfig(text_config=dict(model_type="llama", **txt),
                                                                  vision_config=vis, scale_factor=2))
    if kind == "llava_next":
        return tf.LlavaNextForConditionalGeneration(tf.LlavaNextConfig(
            text_config=dict(model_type="llama", **txt), vision_config=dict(model_type="clip_vision_model", **vis)))
    if kind == "mistral3":  # Pixtral vision tower has gate/up/down and q/k/v/o too: a real trap for bare names
        return tf.Mistral3ForConditionalGeneration(tf.Mistral3Config(
            text_config=dict(model_type="mistral", head_dim=8, **txt),
            vision_config=dict(model_type="pixtral", head_dim=8, **vis)))
    raise KeyError(kind)


OTHER = {  # kind: (module map, LM block prefix, connector, vision)
    "qwen2_vl": ("qwen2-vl", "model.language_model.layers", "model.visual.merger", "model.visual"),
    "idefics3": ("idefics3", "model.text_model.layers", "model.connector", "model.vision_model"),
    "smolvlm": ("idefics3", "model.text_model.layers", "model.connector", "model.vision_model"),
    "llava_next": ("llava-hf", "model.language_model.layers", "model.multi_modal_projector", "model.vision_tower"),
    "mistral3": ("llava-hf", "model.language_model.layers", "model.multi_modal_projector", "model.vision_tower"),
}


@pytest.mark.parametrize("kind", list(OTHER))
def test_module_maps_resolve_exactly_the_lm_linears(kind):
    model = _tiny_other(kind)
    map_name, blocks, connector, vision = OTHER[kind]
    module_map = get_module_map(model)
    assert module_map.name == map_name and module_map.connector == (connector,)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for placement, rel in PLACED.items():
        expected = [f"{blocks}.{i}.{r}" for i in LAYERS for r in rel]
        targets = resolve_targets(model, placement)
        assert sorted(targets) == sorted(expected)
        assert set(targets) <= linears and not any(t.startswith((vision + ".", connector + ".")) for t in targets)
    lora = apply_method(model, "lora", {"r": 2}, "both", "tuned")
    trainable = _trainable(lora)
    assert not any(is_vision_param(n, lora) for n in trainable)
    assert {n for n in trainable if "lora_" not in n} == set(connector_param_names(lora, trainable_only=True))
    assert all(is_connector_param(n, lora) for n in connector_param_names(lora))
    assert len(connector_save_names(lora)) == 1


QWEN_VL_CHAT_NAMES = [  # Qwen/Qwen-VL-Chat (remote code), 2 LM blocks and 2 vision blocks of the real module tree
    "", "transformer", "transformer.wte", "transformer.drop", "transformer.rotary_emb", "transformer.h",
    *[f"transformer.h.{i}{s}" for i in (0, 1) for s in (
        "", ".ln_1", ".attn", ".attn.c_attn", ".attn.c_proj", ".attn.attn_dropout", ".ln_2", ".mlp", ".mlp.w1",
        ".mlp.w2", ".mlp.c_proj")],
    "transformer.ln_f", "transformer.visual", "transformer.visual.conv1", "transformer.visual.ln_pre",
    "transformer.visual.transformer", "transformer.visual.transformer.resblocks",
    *[f"transformer.visual.transformer.resblocks.{i}{s}" for i in (0, 1) for s in (
        "", ".ln_1", ".ln_2", ".attn", ".attn.in_proj", ".attn.out_proj", ".mlp", ".mlp.c_fc", ".mlp.gelu",
        ".mlp.c_proj")],
    "transformer.visual.attn_pool", "transformer.visual.attn_pool.kv_proj", "transformer.visual.attn_pool.attn",
    "transformer.visual.attn_pool.attn.out_proj", "transformer.visual.attn_pool.ln_q",
    "transformer.visual.attn_pool.ln_kv", "transformer.visual.ln_post", "lm_head",
]
LLAVA_ORIGINAL_NAMES = [  # liuhaotian/llava-v1.5-7b, Lin-Chen/ShareGPT4V-7B training-repo layout
    "", "model", "model.embed_tokens", "model.layers",
    *[f"model.layers.{i}.{s}" for i in (0, 1) for s in ATTN + MLP],
    "model.norm", "model.vision_tower", "model.vision_tower.vision_tower",
    *[f"model.vision_tower.vision_tower.vision_model.encoder.layers.{i}.self_attn.{p}"
      for i in (0, 1) for p in ("q_proj", "k_proj", "v_proj", "out_proj")],
    "model.mm_projector", "model.mm_projector.0", "model.mm_projector.2", "lm_head",
]


@pytest.mark.parametrize("placement, expected", [
    ("attention", [f"transformer.h.{i}.attn.{p}" for i in (0, 1) for p in ("c_attn", "c_proj")]),
    ("mlp", [f"transformer.h.{i}.mlp.{p}" for i in (0, 1) for p in ("w1", "w2", "c_proj")]),
])
def test_qwen_vl_chat_map_on_its_real_names(placement, expected):
    module_map = get_module_map(model_type="qwen", names=QWEN_VL_CHAT_NAMES)
    assert module_map.name == "qwen-vl" and module_map.connector == ("transformer.visual.attn_pool",)
    targets = resolve_targets(module_map, placement, names=QWEN_VL_CHAT_NAMES)
    assert targets == expected  # the vision blocks' mlp.c_proj is never hit
    assert resolve_targets(module_map, roles=("ia3_attn", "mlp_out"), names=QWEN_VL_CHAT_NAMES) == \
        [f"transformer.h.{i}.{p}" for i in (0, 1) for p in ("attn.c_attn", "mlp.c_proj")]


def test_original_llava_layout_map_on_its_real_names():
    module_map = get_module_map(model_type="llava", names=LLAVA_ORIGINAL_NAMES)
    assert module_map.name == "llava-original" and module_map.connector == ("model.mm_projector",)
    assert resolve_targets(module_map, "both", names=LLAVA_ORIGINAL_NAMES) == \
        [f"model.layers.{i}.{s}" for i in (0, 1) for s in ATTN + MLP]


def test_a_placement_matching_nothing_names_the_patterns():
    names = [n for n in QWEN_VL_CHAT_NAMES if ".mlp.w" not in n]  # a variant without w1/w2
    with pytest.raises(ValueError, match=r"these patterns found no module: .*mlp\\\.w1.*mlp\\\.w2"):
        resolve_targets(MODULE_MAPS["qwen-vl"], "mlp", names=names)
    with pytest.raises(ValueError, match=r"no module map for model_type 'gpt2'.*Known maps"):
        get_module_map(model_type="gpt2", names=["transformer.blocks.0.attn"])
    assert re.fullmatch(MODULE_MAPS["llava-hf"].blocks, "model.language_model.layers.3")


VISION_ROWS = [("lora", {"r": 4, "alpha": 8}, "frozen"), ("adapter", {"bottleneck_size": 8}, "tuned"),
               ("prefix", {"num_virtual_tokens": 4}, "frozen"), ("full", {}, "tuned")]


@pytest.mark.slow
@pytest.mark.parametrize("method, params, connector", VISION_ROWS, ids=[f"{m}-{c}" for m, _, c in VISION_ROWS])
def test_vision_tuned_adds_exactly_the_vision_encoder_and_reloads(tiny, tmp_path, method, params, connector):
    from safetensors.torch import load_file

    from mllm_study.methods import VISION_FILE, vision_param_names

    base0, _, batch, _ = tiny
    vision = {n for n, _ in base0.named_parameters() if n.startswith("model.vision_tower.")}
    frozen = apply_method(copy.deepcopy(base0), method, params, None, connector)
    model = apply_method(copy.deepcopy(base0), method, params, None, connector, vision="tuned")
    assert model.mllm_method["vision"] == "tuned" and frozen.mllm_method["vision"] == "frozen"
    added = _trainable(model) - _trainable(frozen)
    assert _trainable(frozen) <= _trainable(model) and len(added) == len(vision)
    base_name = {n: "model.vision_tower." + n.split(".vision_tower.", 1)[1] for n in added}  # peft prefixes vary
    assert set(base_name.values()) == vision
    assert bool(connector_param_names(model, trainable_only=True)) == (connector == "tuned")

    _train_steps(model, batch, 1e-2, 3)
    own = dict(base0.named_parameters())
    trained = {base_name[n]: p for n, p in model.named_parameters() if n in added}
    assert any(not torch.equal(p, own[n]) for n, p in trained.items())
    logits = _logits(model, batch)
    save_method(model, tmp_path / "saved")
    assert set(load_file(str(tmp_path / "saved" / VISION_FILE))) == vision
    loaded = load_method(copy.deepcopy(base0), tmp_path / "saved")
    assert not _trainable(loaded) and len(vision_param_names(loaded)) == len(vision)
    torch.testing.assert_close(_logits(loaded, batch), logits, rtol=0, atol=1e-6)
    # a save that records a tuned vision encoder but lacks its file is refused, naming the file
    (tmp_path / "saved" / VISION_FILE).unlink()
    with pytest.raises(ValueError, match="tuned vision encoder but has no vision_encoder.safetensors"):
        load_method(copy.deepcopy(base0), tmp_path / "saved")


def test_vision_option_errors(tiny):
    base0 = tiny[0]
    with pytest.raises(ValueError, match="vision must be 'frozen' or 'tuned'"):
        apply_method(copy.deepcopy(base0), "lora", {}, None, "frozen", vision="half")
    with pytest.raises(ValueError, match="method 'none' trains nothing"):
        apply_method(copy.deepcopy(base0), "none", {}, None, "frozen", vision="tuned")


def test_param_groups_give_the_vision_encoder_its_own_lr(tiny):
    from mllm_study.config import load_params
    from mllm_study.runs import param_groups

    base0 = tiny[0]
    params = load_params(profile="smoke", overrides={"run.vision": "tuned", "run.vision_lr": 3e-6,
                                                      "run.connector": "tuned"})
    model = apply_method(copy.deepcopy(base0), "lora", {"r": 4, "alpha": 8}, None, "tuned", vision="tuned")
    groups = param_groups(model, params)
    vision = [p for n, p in model.named_parameters() if is_vision_param(n, model)]
    connector = [p for n, p in model.named_parameters() if p.requires_grad and is_connector_param(n, model)]
    assert [len(g["params"]) for g in groups[1:]] == [len(connector), len(vision)]
    assert groups[2]["lr"] == 3e-6 and groups[1]["lr"] == params.run.connector_lr
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in vision}
    frozen = apply_method(copy.deepcopy(base0), "lora", {"r": 4, "alpha": 8}, None, "tuned")
    assert len(param_groups(frozen, params)) == 2  # no vision group: the optimiser is exactly as before


def test_vera_trains_on_the_smoke_model_saves_and_reloads(smoke_params, smoke_model_dir, tmp_path):
    """VeRA (methods/vera.py, not in any study grid) on the pre-trained smoke model: only the scaling vectors train
    (r + out_features per adapted linear, the shared projections frozen), a few AdamW steps lower the loss, and the
    saved adapter (projections included) reloads on a fresh base to the same logits."""
    from mllm_study.data import load_split
    from mllm_study.method_info import study_methods
    from mllm_study.models import load_checkpoint
    from mllm_study.runs import resolve_dataset

    assert "vera" in METHODS and "vera" not in study_methods()
    base, processor = load_checkpoint(smoke_model_dir)
    records = load_split(resolve_dataset("iconqa_txt", smoke_params, False), "train", 8, seed=0)
    batch = Collator(processor, mode="train")(records)
    model = apply_method(base, "vera", {"r": 32}, "both", "frozen")
    linears = [m for n, m in load_checkpoint(smoke_model_dir)[0].named_modules()
               if n.startswith("model.language_model.layers.") and isinstance(m, torch.nn.Linear)]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(".vera_lambda_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == sum(32 + lin.out_features for lin in linears)
    model.eval()
    before = _loss(model, batch).item()
    _train_steps(model, batch, 5e-2, 5)
    assert _loss(model, batch).item() < before
    logits = _logits(model, batch)
    save_method(model, tmp_path / "vera")
    loaded = load_method(load_checkpoint(smoke_model_dir)[0], tmp_path / "vera")
    assert loaded.mllm_method["method"] == "vera" and loaded.mllm_method["params"]["r"] == 32
    torch.testing.assert_close(_logits(loaded, batch), logits, rtol=0, atol=1e-6)
