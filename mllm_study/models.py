"""Model registry: the embedded ``tiny-llava`` (built, pre-trained and cached locally) and any hub/local checkpoint.

Usage: ``model, processor = load_model("tiny-llava", params)`` or ``load_model("llava-hf/llava-1.5-7b-hf")``

``tiny-llava`` is a LlavaForConditionalGeneration built from transformers configs (CLIP vision tower, MLP
connector, Llama language model) with a word-level tokenizer trained on the synthetic world's text. It is
pre-trained in two stages like LLaVA (alignment on scene descriptions, then instruction tuning on the three seen
families) and cached under ``<cache>/models/tiny-llava-<key>`` where the key hashes the full recipe and the world.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError, ModelError
from .config import Params, PretrainConfig
from .recipe import (  # noqa: F401 (re-exported: the recipe key and the base model's folder are also this module's API)
    RECIPE_MODULES, RECIPE_VERSION, SEEN_FAMILIES, TINY_MODEL, VOCABULARY_FILE, pretrain_inputs, recipe_code_digest,
    tiny_llava_dir,
)
from .world import ensure_world  # noqa: F401 (re-exported)
from .world.tasks import FORMATS_SPLIT

__all__ = [
    "TINY_MODEL", "TINY_CHAT_TEMPLATE", "build_tokenizer", "build_tiny_llava", "ensure_world", "pretrain_tiny_llava",
    "tiny_llava_dir", "load_model", "load_checkpoint", "image_use_check", "world_corpus",
    "image_only_qwen2_vl_processor", "world_tokenizer", "pretrain_tokenizer", "pretrain_inputs", "VOCABULARY_FILE",
    "has_torchvision",
]

#: the image-use check scores these with and without the image (every column and the POPE probe)
CHECK_FAMILIES = ("sqa", "vizwiz", "iconqa_txt", "iconqa_blank", "flickr30k", "okvqa", "ocrvqa", "vqav2", "pope")
# A plain template the tiny tokenizer can represent: "user : <image> question assistant : answer </s>".
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}user : "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
    "{% else %}assistant : {% for c in m['content'] %}{{ c['text'] }}{% endfor %} </s> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)
#: The same with the question before the image ("user : question <image> assistant : ..."), used when
#: ``pretrain.image_after_text``: with two decoder layers, image tokens that can attend to the question (causal
#: attention) can each check "am I the red circle?", which makes existence questions learnable (README).
TINY_CHAT_TEMPLATE_TEXT_FIRST = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}user : "
    "{% for c in m['content'] %}{% if c['type'] != 'image' %}{{ c['text'] }} {% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% endif %}{% endfor %}"
    "{% else %}assistant : {% for c in m['content'] %}{{ c['text'] }}{% endfor %} </s> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def world_corpus(world_dir: str | Path) -> list[str]:
    """Every piece of text in a generated world (turns, references, choices) plus the chat template's words."""
    texts = ["user : assistant :"]
    for path in sorted(Path(world_dir).glob("*/*.json")):
        if path.name == "dataset.json":
            continue
        for rec in json.loads(path.read_text()):
            texts.extend(t["value"] for t in rec["conversations"])
            texts.extend(rec.get("references") or [])
            texts.extend(rec.get("choices") or [])
    return texts


def build_tokenizer(texts: list[str], case_sensitive: bool = False):
    """A word-level tokenizer over ``texts`` (deterministic: sorted by frequency, then alphabetically); lowercasing
    unless ``case_sensitive`` (then the option letter "A" and the article "a" are different tokens: lowercased, a
    model that learned to answer "a" to lettered options ended some captions after "a")."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    if not case_sensitive:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left")


def world_tokenizer(vocabulary: list[str] | None = None):
    """The tiny model's tokenizer over the committed world vocabulary (the same ids as :func:`build_tokenizer` on the
    quick world's text, which produced it): lowercasing, whitespace/punctuation split, ``<s>`` prepended."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = vocabulary if vocabulary is not None else json.loads(VOCABULARY_FILE.read_text())
    if tokens[:len(SPECIAL_TOKENS)] != SPECIAL_TOKENS or len(set(tokens)) != len(tokens):
        raise DataError(f"{VOCABULARY_FILE}: must start with {SPECIAL_TOKENS} and hold no duplicate")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left")


def pretrain_tokenizer(cfg: PretrainConfig, world_dir: str | Path):
    """The tokenizer a pre-training uses: the committed vocabulary, or (``pretrain.case_sensitive``, a measured
    option) one trained on the world's own text with case kept."""
    return build_tokenizer(world_corpus(world_dir), True) if cfg.case_sensitive else world_tokenizer()


def build_tiny_llava(tokenizer, cfg: PretrainConfig, seed: int | None = None):
    """A randomly initialised tiny LLaVA and its processor, from transformers configs only (no download)."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    # The PIL backend explicitly: torchvision is not installed beside the CPU torch wheel (CONTRIBUTING.md), and the
    # default class would warn and fall back to this one anyway.
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": cfg.image_size},
                                         crop_size={"height": cfg.image_size, "width": cfg.image_size},
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # "default" drops the CLS token: (image_size / patch_size)^2 image tokens; num_additional_image_tokens=1 counts it.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TINY_CHAT_TEMPLATE_TEXT_FIRST if cfg.image_after_text
                               else TINY_CHAT_TEMPLATE)
    vision = CLIPVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden_size,
                              intermediate_size=2 * cfg.vision_hidden_size, num_hidden_layers=cfg.vision_layers,
                              num_attention_heads=4)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def image_use_check(model, processor, world_dir: Path, size: int, progress: bool = True,
                    families: tuple[str, ...] = CHECK_FAMILIES) -> dict[str, dict]:
    """Score on each family's test split (POPE: its ``random`` split) with the real images and with blank images."""
    from .data import load_dataset_info, load_split
    from .evaluate import evaluate_records

    out = {}
    for family in families:
        if not (world_dir / family).is_dir():
            continue
        info = load_dataset_info(world_dir / family)
        records = load_split(world_dir / family, "random" if family == "pope" else "test")
        records = records[:size]
        scores = {}
        for blank in (False, True):
            res = evaluate_records(model, processor, records, info["metric"], info.get("max_new_tokens", 8),
                                   blank_images=blank, progress=progress, desc=f"check {family}")
            scores["blank" if blank else "image"] = res.value
        out[family] = {"metric": info["metric"], **scores}
    return out


def pretrain_tiny_llava(params: Params, world_dir: Path, progress: bool = True) -> Path:
    """Build and pre-train the tiny model in stages (or reuse the cached one). Returns its folder.

    Stage 1 (alignment): scene descriptions (``align``); the whole model trains, since here nothing is
    pre-trained (in LLaVA only the connector trains because CLIP and the LLM already are).
    Stage 2 (instruction tuning): the seen families' ``pretrain`` splits (which also ask their questions in the
    unseen columns' answer formats, see ``world.tasks.FORMAT_SHARES``) mixed with a share of stage-1 descriptions
    (``stage2_align_share``, as LLaVA's instruction mix keeps detailed descriptions); the vision tower is frozen like
    LLaVA's unless ``stage2_tune_vision`` (the tiny tower has seen only stage 1's descriptions, CLIP far more).
    Stage 3 (formats, ``format_steps``): the ``formats`` split of the same families, their questions asked mostly in
    the unseen columns' answer formats and the descriptions under varied prompts, at ``format_lr``, vision frozen:
    formats taught after binding is learned, since a change to stage 2's data re-draws whether binding is learned.
    Stage 0 (``vision_steps``, off by default) trains the vision tower alone on which object fills each cell.
    The folder holds the checkpoint, processor and ``pretrain_record.json`` (recipe, losses, timings, image-use check).
    """
    from .data import Collator

    cfg = params.pretrain
    out = tiny_llava_dir(params, world_dir)
    if (out / "pretrain_record.json").exists():
        _refresh_image_use_check(out, world_dir, cfg.eval_size, progress)
        return out
    tokenizer = pretrain_tokenizer(cfg, world_dir)
    model, processor = build_tiny_llava(tokenizer, cfg)
    collator = Collator(processor, mode="train")
    record: dict[str, Any] = {"recipe": dataclasses.asdict(cfg), "world": str(world_dir), "stages": {}}
    if cfg.vision_steps > 0:
        record["stages"]["stage0_vision"] = pretrain_vision_tower(model, processor, world_dir, cfg, progress)
    stages = [("stage1_align", ["align"], cfg.stage1_steps, not cfg.stage1_tune_vision),
              ("stage1b_yesno", ["vqav2"], cfg.yesno_steps, False),
              ("stage2_instruct", list(SEEN_FAMILIES), cfg.stage2_steps, not cfg.stage2_tune_vision),
              ("stage3_formats", ["align", *SEEN_FAMILIES], cfg.format_steps, not cfg.format_tune_vision)]
    for name, families, steps, freeze_vision in stages:
        if steps > 0:
            records, families = stage_records(name, families, cfg, world_dir)
            record["stages"][name] = train_stage(model, collator, name, families, records, cfg, steps, freeze_vision,
                                                 progress)
    for p in model.parameters():
        p.requires_grad = False
    record["image_use_check"] = image_use_check(model, processor, world_dir, cfg.eval_size, progress)
    record["image_use_world"] = _world_fingerprint(world_dir)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "pretrain_record.json").write_text(json.dumps(record, indent=1))
    if out.exists():  # a concurrent process finished first: keep its copy
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out


def _cell_targets(scene: dict, grid: int) -> list[int]:
    """Per image patch (row-major ``grid`` x ``grid``), the class of the object in its cell: 1 + index in
    ``OBJECT_TYPES`` (colour x shape), 0 for an empty cell."""
    from .world.scenes import CELL_SIZE, IMAGE_SIZE, OBJECT_TYPES

    cells = IMAGE_SIZE // CELL_SIZE
    by_cell = {}
    for o in scene["objects"]:
        x, y = o["center"]
        by_cell[(int(y) // CELL_SIZE, int(x) // CELL_SIZE)] = 1 + OBJECT_TYPES.index((o["color"], o["shape"]))
    return [by_cell.get((r * cells // grid, c * cells // grid), 0) for r in range(grid) for c in range(grid)]


def pretrain_vision_tower(model, processor, world_dir: Path, cfg: PretrainConfig, progress: bool = True) -> dict:
    """Stage 0, the tiny model's stand-in for CLIP's own pre-training: the vision tower alone learns, with a
    linear head on every patch token that is then discarded, which object (colour and shape together, or none)
    fills the patch's cell, on the images of the stage-1 and stage-2 records (their scene graphs are the labels).
    A real LLaVA starts from a CLIP that already encodes what is where; the tiny tower otherwise learns it only
    through the language model's loss, and binding a colour to a shape and a cell then succeeds for few seeds."""
    import numpy as np
    from PIL import Image

    from .data import load_split
    from .world.scenes import OBJECT_TYPES

    started = time.perf_counter()
    records = [r for fam in ("align", *SEEN_FAMILIES) for r in load_split(world_dir / fam, "pretrain")]
    grid = cfg.image_size // cfg.patch_size
    pixels = torch.cat([processor.image_processor([Image.open(r["image_path"]).convert("RGB")
                                                   for r in records[i:i + 512]], return_tensors="pt")["pixel_values"]
                        for i in range(0, len(records), 512)])
    targets = torch.tensor([_cell_targets(r["scene"], grid) for r in records])
    tower = model.model.vision_tower
    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(cfg.vision_hidden_size, 1 + len(OBJECT_TYPES))
    params = [p for p in tower.parameters()] + list(head.parameters())
    for p in params:
        p.requires_grad = True
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps, batch = cfg.vision_steps, 4 * cfg.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    order, log, tower_was_training = torch.empty(0, dtype=torch.long), [], tower.training
    tower.train()
    for step in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(len(records), generator=gen)])
        idx, order = order[:batch], order[batch:]
        hidden = tower(pixel_values=pixels[idx], output_hidden_states=True).hidden_states[-1][:, 1:]
        logits = head(hidden)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == targets[idx]).float().mean().item()
            log.append({"step": step + 1, "loss": round(loss.item(), 5), "patch_accuracy": round(acc, 4)})
            if progress:
                print(f"pretrain stage0_vision step {step + 1}/{steps} loss {loss.item():.4f} patch acc {acc:.3f}",
                      flush=True)
    tower.train(tower_was_training)
    return {"families": ["align", *SEEN_FAMILIES], "steps": steps, "seconds": round(time.perf_counter() - started, 2),
            "samples": steps * batch, "final_loss": log[-1]["loss"], "log": log}


def stage_records(name: str, families: list[str], cfg: PretrainConfig, world_dir: Path) -> tuple[list[dict], list[str]]:
    """The records pre-training stage ``name`` trains on, and the families they come from."""
    from .data import load_split

    split = FORMATS_SPLIT if name == "stage3_formats" else "pretrain"
    records = [r for fam in families for r in load_split(world_dir / fam, split)]
    if name == "stage1b_yesno":
        records = [r for r in records if r["scene"]["query"].get("type") == "yesno"]
    if name == "stage1_align" and cfg.stage1_qa_share > 0:
        # the seen families' questions, interleaved (every family equally) up to the share
        qa = [r for group in zip(*(load_split(world_dir / f, "pretrain") for f in SEEN_FAMILIES)) for r in group]
        n_qa = min(len(qa), round(len(records) * cfg.stage1_qa_share / (1 - cfg.stage1_qa_share)))
        records = records + qa[:n_qa]
        families = [*families, *SEEN_FAMILIES]
    if name == "stage2_instruct" and cfg.stage2_align_share > 0:
        align = load_split(world_dir / "align", "pretrain")
        n_align = min(len(align), round(len(records) * cfg.stage2_align_share / (1 - cfg.stage2_align_share)))
        records = records + align[:n_align]
        families = [*families, "align"]
    if name == "stage3_formats" and cfg.format_replay_share > 0:
        # stage 2's own records (native formats), interleaved over the families, up to the share: the seen skills
        # keep training while the formats are taught
        replay = [r for group in zip(*(load_split(world_dir / f, "pretrain") for f in families)) for r in group]
        n_replay = min(len(replay), round(len(records) * cfg.format_replay_share / (1 - cfg.format_replay_share)))
        records = records + replay[:n_replay]
    return records, families


def train_stage(model, collator, name: str, families: list[str], records: list[dict], cfg: PretrainConfig,
                steps: int, freeze_vision: bool, progress: bool = True) -> dict:
    """Train one pre-training stage in place; returns its entry of ``pretrain_record.json``."""
    from .train import TrainSettings, train_model

    for p_name, p in model.named_parameters():
        p.requires_grad = not (freeze_vision and ".vision_tower." in f".{p_name}")
    lr, warmup = (cfg.format_lr, min(cfg.warmup_steps, steps // 10)) if name == "stage3_formats" else \
        (cfg.lr, cfg.warmup_steps)
    group = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    settings = TrainSettings(max_steps=steps, batch_size=cfg.batch_size, warmup_steps=warmup,
                             seed=cfg.seed, desc=f"pretrain {name}", progress=progress, log_every=50,
                             loss_average=cfg.loss_average)
    result = train_model(model, collator, records, group, settings)
    return {"families": families, "steps": result.steps, "seconds": round(result.seconds, 2),
            "samples": result.samples, "final_loss": result.final_loss, "log": result.log}


def _world_fingerprint(world_dir: Path) -> str:
    return json.loads((Path(world_dir) / "manifest.json").read_text())["fingerprint"]


def _refresh_image_use_check(model_dir: Path, world_dir: Path, size: int, progress: bool) -> None:
    """Re-measure the record's image-use check when the world changed since (an unseen family's generator: the
    weights do not depend on it, its zero-shot scores do). Rewrites ``pretrain_record.json`` atomically."""
    path = model_dir / "pretrain_record.json"
    record = json.loads(path.read_text())
    fingerprint = _world_fingerprint(world_dir)
    if record.get("image_use_world") == fingerprint:
        return
    model, processor = load_checkpoint(model_dir)
    model.eval()
    record["image_use_check"] = image_use_check(model, processor, world_dir, size, progress)
    record["image_use_world"] = fingerprint
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


_PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_attn_implementation(value: str | None) -> str | None:
    """``run.attn_implementation`` as transformers takes it: ``auto`` is flash_attention_2 where the ``flash_attn``
    package is installed and a CUDA GPU is there (its kernels run nowhere else), else sdpa; other values pass."""
    if value != "auto":
        return value
    import importlib.util

    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def load_checkpoint(path_or_id: str | Path, dtype: torch.dtype | None = None, device_map: Any = None,
                    precision: str = "auto", attn_implementation: str | None = None,
                    min_pixels: int | None = None, max_pixels: int | None = None):
    """Load any image-text-to-text checkpoint (local folder or hub id) with the transformers Auto classes.

    ``precision`` (run.precision): ``auto`` keeps the checkpoint's dtype (transformers 5 loads ``dtype="auto"``),
    ``fp32``/``bf16``/``fp16`` convert the base; an explicit ``dtype`` wins. ``attn_implementation`` is passed on
    (None: transformers' default, sdpa; ``auto``: :func:`resolve_attn_implementation`). ``min_pixels``/``max_pixels`` bound the image size of processors that
    take them (Qwen2-VL: its default max turns a photo into thousands of tokens).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {}
    if dtype is None and precision != "auto":
        if precision not in _PRECISION_DTYPES:
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16 (got {precision!r})")
        dtype = _PRECISION_DTYPES[precision]
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = resolve_attn_implementation(attn_implementation)
    pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    processor_kwargs = _pixel_size(path_or_id, pixels) if pixels else {}
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(path_or_id), **kwargs)
        try:
            processor = AutoProcessor.from_pretrained(str(path_or_id), **processor_kwargs)
        except (AttributeError, ImportError, ValueError, OSError):  # Qwen2-VL's video processor needs torchvision
            if getattr(model.config, "model_type", "") != "qwen2_vl" or has_torchvision():
                raise
            processor = image_only_qwen2_vl_processor().from_pretrained(str(path_or_id), **processor_kwargs)
    except OSError as exc:
        raise ModelError(f"cannot load model {str(path_or_id)!r}: not the built-in {TINY_MODEL!r}, not a local "
                         f"checkpoint folder and not reachable on the hub ({exc})") from None
    if pixels:
        _check_pixels(processor, pixels)
    if getattr(processor, "tokenizer", None) is not None and processor.tokenizer.padding_side != "left":
        processor.tokenizer.padding_side = "left"  # batched generation needs left padding
    model.eval()
    return model, processor


def _pixel_size(path_or_id: str | Path, pixels: dict[str, int]) -> dict[str, Any]:
    """``size={"shortest_edge": min_pixels, "longest_edge": max_pixels}`` for the processor (transformers 5's form of
    Qwen2-VL's pixel bounds), the unset bound taken from the checkpoint's image processor config."""
    from transformers import AutoImageProcessor

    try:
        image_processor = AutoImageProcessor.from_pretrained(str(path_or_id))
    except (OSError, ValueError):
        image_processor = None
    hints = getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", {})
    if image_processor is not None and "max_pixels" not in hints:
        raise ModelError(f"the image processor {type(image_processor).__name__} does not take "
                         f"{', '.join(pixels)} (run.min_pixels / run.max_pixels are for Qwen2-VL-style processors)")
    size = getattr(image_processor, "size", None)
    current = {k: (size.get(k) if isinstance(size, dict) else getattr(size, k, None))
               for k in ("shortest_edge", "longest_edge")}
    out = {"shortest_edge": pixels.get("min_pixels", current["shortest_edge"]),
           "longest_edge": pixels.get("max_pixels", current["longest_edge"])}
    return {"size": {k: v for k, v in out.items() if v is not None}}


def _check_pixels(processor: Any, pixels: dict[str, int]) -> None:
    """ValueError unless the image processor took the min/max pixel bounds (only Qwen2-VL-style ones do)."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)

    def bound(own: str, key: str):
        value = getattr(image_processor, own, None)
        if value is None:
            value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        return value

    got = {"min_pixels": bound("min_pixels", "shortest_edge"), "max_pixels": bound("max_pixels", "longest_edge")}
    wrong = {k: v for k, v in pixels.items() if got[k] != v}
    if wrong:
        raise ModelError(f"the image processor {type(image_processor).__name__} does not take "
                         f"{', '.join(wrong)} (run.min_pixels / run.max_pixels are for Qwen2-VL-style processors)")


def has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def image_only_qwen2_vl_processor():
    """``Qwen2VLProcessor`` without its video processor, which needs torchvision (absent beside the pinned CPU torch
    wheel: the PyPI torchvision built for torch 2.13 fails to load its operators there). Images and text are
    processed exactly as by the full class (same image processor and tokenizer); videos are not supported."""
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            self.video_processor = None
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            for name in ("processor_config.json", "tokenizer_config.json"):  # a plain Qwen2-VL folder
                path = Path(save_directory) / name
                if path.exists():
                    data = json.loads(path.read_text())
                    if data.get("processor_class") == type(self).__name__:
                        data["processor_class"] = "Qwen2VLProcessor"
                        path.write_text(json.dumps(data, indent=2))
            return out

    ImageOnlyQwen2VLProcessor.__name__ = ImageOnlyQwen2VLProcessor.__qualname__ = "ImageOnlyQwen2VLProcessor"
    return ImageOnlyQwen2VLProcessor


def load_model(name: str, params: Params | None = None, progress: bool = True, **options):
    """The base model and processor for ``name``: ``tiny-llava`` (pre-trained and cached on demand) or any
    local checkpoint folder / hub id, all through :func:`load_checkpoint` (``options``: its keyword arguments).
    """
    if name == TINY_MODEL:
        if params is None:
            raise ValueError("tiny-llava needs the params (world and pre-training recipe)")  # internal
        world_dir = ensure_world(params, progress)
        start = time.perf_counter()
        path = pretrain_tiny_llava(params, world_dir, progress)
        if progress and time.perf_counter() - start > 1:
            print(f"pre-trained {TINY_MODEL} -> {path}")
        return load_checkpoint(path, **options)
    return load_checkpoint(name, **options)
