"""Realistic tiny checkpoints of real architectures, built offline (test fixtures and a quick way to try a real path).

Usage: ``folder = build_checkpoint("llava-1.5", tmp_path / "llava")`` then ``mllm-study run --model <folder> ...``

Each fixture is the real architecture scaled down (hidden 32-64, one or two layers, images of a few patches), saved
with ``save_pretrained`` together with the real processor class, a byte-pair tokenizer trained with ``tokenizers``
that carries the real special tokens, and the real chat template (as the hub checkpoint's ``chat_template``), in
the hub checkpoint's dtype:

| name | hub checkpoint it follows | dtype | processor | chat template end-of-turn |
|---|---|---|---|---|
| ``llava-1.5`` | llava-hf/llava-1.5-7b-hf | float16 | LlavaProcessor + CLIP image processor | none (``</s>`` added) |
| ``qwen2-vl`` | Qwen/Qwen2-VL-2B-Instruct | bfloat16 | Qwen2VLProcessor (min/max pixels) | ``<|im_end|>`` |
| ``idefics3`` | HuggingFaceTB/SmolVLM-Instruct | bfloat16 | Idefics3Processor (image splitting) | ``<end_of_utterance>`` |

Weights are random (seeded): the fixtures test mechanics (labels, precision, methods, saving), not quality.
:func:`build_dataset` writes a matching tiny dataset folder (coloured shapes, one-word answers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["ARCHITECTURES", "build_checkpoint", "build_dataset", "CHAT_TEMPLATES"]

# The hub checkpoints' chat templates (chat_template.json of each repository), as published.
CHAT_TEMPLATES = {
    "llava-1.5": (
        "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
        "{% endif %}{# Render all images first #}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
        "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
        "{% endfor %}{% else %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"),
    "qwen2-vl": (
        "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
        "<|im_end|>\n{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
        "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
        "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "idefics3": (
        "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"),
}
ARCHITECTURES = tuple(CHAT_TEMPLATES)
_DTYPES = {"llava-1.5": torch.float16, "qwen2-vl": torch.bfloat16, "idefics3": torch.bfloat16}

_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
_SHAPES = ("square", "circle")


def _corpus() -> list[str]:
    words = list(_COLOURS) + list(_SHAPES)
    text = ["What colour is the shape? Answer with one word.", "What shape is it? Answer with one word.",
            "You are a helpful assistant.", "USER: ASSISTANT: User: Assistant: system user assistant",
            " ".join(words), "\n".join(words)]
    return text * 20


def _bpe(kind: str, specials: list[str], vocab_size: int = 300):
    """A byte-pair tokenizer trained on the fixture corpus: ``metaspace`` (LLaMA/sentencepiece style, ``▁``) or
    ``bytelevel`` (GPT-2 style, as Qwen2 and SmolLM); ``specials`` get the first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet: list[str] = []
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _llava(folder: Path, seed: int):
    from tokenizers import processors
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    tok = _bpe("metaspace", ["<unk>", "<s>", "</s>", "<image>", "<pad>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
                                        padding_side="left")
    size = 28  # 336 / 14 = 24 patches a side in the real one; 2 here
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                            image_mean=[0.48145466, 0.4578275, 0.40821073],
                                            image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATES["llava-1.5"])
    vision = CLIPVisionConfig(image_size=size, patch_size=14, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=32, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.update(bos_token_id=1, eos_token_id=2, pad_token_id=tokenizer.pad_token_id)
    return model, processor


def _qwen2_vl(folder: Path, seed: int):
    from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessorPil, Qwen2VLProcessor)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok = _bpe("bytelevel", specials, vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        padding_side="left", errors="replace")
    # real: min_pixels 56*56, max_pixels 28*28*1280 (Qwen2-VL-2B-Instruct preprocessor_config.json); tiny: a
    # 56x56 image = 4x4 patches of 14 = 2x2 merged tokens
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14,
                                               temporal_patch_size=2, merge_size=2,
                                               image_mean=[0.48145466, 0.4578275, 0.40821073],
                                               image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = _qwen_processor(Qwen2VLProcessor, image_processor, tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1e6},
                         tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    # as the hub's generation_config.json: sampling defaults and a repetition penalty (greedy evaluation overrides)
    model.generation_config.update(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                   eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                   do_sample=True, temperature=0.01, top_k=1, top_p=0.001, repetition_penalty=1.05)
    return model, processor


def _qwen_processor(cls, image_processor, tokenizer):
    """Qwen2VLProcessor; its video processor needs torchvision, which the pinned CPU environment lacks, so there the
    processor is the image-only variant (:func:`mllm_study.models.image_only_qwen2_vl_processor`), saved as a plain
    Qwen2VLProcessor folder."""
    from .models import has_torchvision, image_only_qwen2_vl_processor

    if has_torchvision():
        from transformers import Qwen2VLVideoProcessor

        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                   chat_template=CHAT_TEMPLATES["qwen2-vl"])
    return image_only_qwen2_vl_processor()(image_processor=image_processor, tokenizer=tokenizer,
                                           chat_template=CHAT_TEMPLATES["qwen2-vl"])


def _idefics3(folder: Path, seed: int):
    from tokenizers import processors
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, PreTrainedTokenizerFast)

    grid = [f"<row_{r}_col_{c}>" for r in range(1, 4) for c in range(1, 4)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                "<end_of_utterance>", "<global-img>", *grid]
    tok = _bpe("bytelevel", specials, vocab_size=400)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", padding_side="left",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"})
    # real (SmolVLM-Instruct): 384-pixel tiles (max_image_size), images up to 1536 split into tiles plus a global
    # view, 81 tokens a tile (scale_factor 3); tiny: 28-pixel tiles of 2x2 patches, scale factor 2 -> 1 token a tile
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": 56},
                                                max_image_size={"longest_edge": 28}, do_resize=True,
                                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1,
                                  chat_template=CHAT_TEMPLATES["idefics3"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=ids["<|im_start|>"],
                         eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<|im_end|>"],
                         tie_word_embeddings=False),
        image_token_id=ids["<image>"], scale_factor=2, pad_token_id=ids["<|im_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.update(bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
                                   pad_token_id=ids["<|im_end|>"])
    return model, processor


_BUILDERS = {"llava-1.5": _llava, "qwen2-vl": _qwen2_vl, "idefics3": _idefics3}


def build_checkpoint(arch: str, folder: str | Path, seed: int = 0, dtype: torch.dtype | None = None) -> Path:
    """Write a tiny random-weight checkpoint of ``arch`` (:data:`ARCHITECTURES`) to ``folder``, in the hub
    checkpoint's dtype unless ``dtype`` is given. Returns the folder (reused when it already holds one)."""
    if arch not in _BUILDERS:
        raise ConfigError(f"unknown fixture architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "fixture.json").exists():
        return folder
    model, processor = _BUILDERS[arch](folder, seed)
    model = model.to(dtype or _DTYPES[arch])
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "fixture.json").write_text(json.dumps({"architecture": arch, "seed": seed,
                                                     "dtype": str(dtype or _DTYPES[arch])}))
    return folder


def build_dataset(folder: str | Path, n_train: int = 16, n_test: int = 8, image_size: int = 40) -> Path:
    """A tiny dataset folder (docs/data_format.md): one coloured shape per image, "what colour" questions, one-word
    answers (metric ``accuracy``). Images are ``image_size`` pixels, not square (40 x 30) so processors resize."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    if (folder / "dataset.json").exists():
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    colours = list(_COLOURS)
    splits = {"train": n_train, "test": n_test}
    for split, n in splits.items():
        records = []
        for i in range(n):
            colour, shape = colours[i % len(colours)], _SHAPES[(i // len(colours)) % 2]
            image = Image.new("RGB", (image_size, image_size * 3 // 4), (245, 245, 245))
            draw = ImageDraw.Draw(image)
            box = (8, 6, image_size - 8, image_size * 3 // 4 - 6)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=_COLOURS[colour])
            name = f"{split}-{i:03d}.png"
            image.save(folder / "images" / name)
            records.append({"id": f"shapes-{split}-{i:03d}", "image": name, "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the shape? Answer with one word."},
                {"from": "gpt", "value": colour}], "references": [colour]})
        (folder / f"{split}.json").write_text(json.dumps(records, indent=1))
    info = {"name": "shapes", "family": "vqav2", "group": "seen", "metric": "accuracy", "max_new_tokens": 4,
            "image_folder": "images", "splits": splits, "source": "mllm_study.fixtures"}
    (folder / "dataset.json").write_text(json.dumps(info, indent=1))
    return folder
