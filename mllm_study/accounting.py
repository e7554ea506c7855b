"""Parameter and FLOP accounting of the PEFT methods on real architectures, without downloading any weights.

Usage: ``print(format_params_table("llava-1.5-7b"))`` or ``python -m mllm_study.accounting --model llava-1.5-7b``

The real architecture is built on the meta device (accelerate ``init_empty_weights``: shapes, no memory) from a
config kept in the repository (``mllm_study/configs/<name>.json``: the public ``config.json`` of
llava-hf/llava-1.5-7b-hf, llava-hf/llava-1.5-13b-hf and Qwen/Qwen2-VL-7B-Instruct) or from any config.json path;
each method is applied through the registry exactly as in training (peft and the bottleneck adapter both work on
meta tensors) and the parameters are counted.

Conventions (docs/study.md, "Methods and their hyperparameters" and RQ 3):
- trainable % = trainable / (all base parameters + PEFT parameters), like peft's ``print_trainable_parameters``,
  except that peft's trainable *copy* of a tuned connector (``modules_to_save``) is not counted twice: the
  connector is a base parameter that trains.
- FLOPs per text token of the language model (Kaplan et al. 2020, sec. 2.1: forward 2 N, backward 4 N; the
  backward splits into activation gradients (2 N) and weight gradients (2 N), Narayanan et al. 2021, sec. 3):
  train = 4 * P_frozen + 6 * P_trainable, because PEFT modules sit in every layer, so activation gradients flow
  back through every frozen weight of the language model, while only trainable weights need weight gradients;
  inference = 2 * (P_non-embedding + n_layer * d_model * n_ctx). ``train_flops_per_token_study`` keeps the older
  docs/study.md reading, 2 * P_frozen + 4 * P_trainable, which leaves out those activation gradients (it comes out
  below inference for every PEFT method) and is shown beside the count only for comparison.
  P counts the parameters a text token passes through: the language model without its input embedding table
  (``lm_head`` included) plus the PEFT parameters in it (unmerged; LoRA and IA3 merged would cost nothing extra).
  Prefix vectors are keys/values, not weights: for inference they lengthen every attention context
  (n_ctx + num_virtual_tokens) instead; for training they count in P_trainable (the formula's literal reading).
  n_ctx = 2048 by default (the paper's maximum length).
- FLOPs per image: the vision tower (frozen in the study) runs on its patches and the connector on the image
  tokens. Nothing below a frozen vision tower trains, so it runs forward only (2); tuned it costs 6. The connector
  costs 2 forward, + 2 for its weight gradients when tuned, + 2 for activation gradients when the vision tower
  below it trains: train = (2 | 6) * P_vision * n_patches
  + (2 + 2 [tuned] + 2 [vision tuned]) * P_connector * n_image_tokens,
  inference = 2 * (P_vision * n_patches + P_connector * n_image_tokens). LLaVA-1.5: 577 patches (CLS included),
  576 image tokens; Qwen2-VL (dynamic resolution): a 448x448 image is assumed, 1024 patches, 256 tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from .errors import ModelError, StudyError
from .method_info import LiveSequence, method_infos

__all__ = ["CONFIG_DIR", "PAPER_METHODS", "paper_methods", "list_model_configs", "load_model_config",
           "build_meta_model", "ParamsRow", "count_method", "params_rows", "format_params_table", "main_params"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def paper_methods() -> list[tuple[str, dict, str | None]]:
    """The paper's configurations, (method, params, placement), one per study method in display order: params {}
    = the method's paper defaults (LoRA r=128, alpha=256; IA3; prefix 20 virtual tokens, no reparametrisation MLP;
    adapter series bottleneck 256, tanh), placement = its default (LoRA and IA3 all LM linears, adapter mlp,
    prefix none), as each method declares them in ``methods/<name>.py``."""
    return [(i.name, {}, i.default_placement) for i in method_infos().values() if i.study]


#: :func:`paper_methods` as a live sequence (a method registered later appears too).
PAPER_METHODS = LiveSequence(paper_methods)


def list_model_configs() -> list[str]:
    """Architecture configs kept in the repository (``--model`` names)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model_config(name_or_path: str):
    """A transformers config from ``configs/<name>.json``, a config.json path, a checkpoint folder (its
    config.json) or a hub id (through the hub cache, or the network where allowed)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ModelError(f"{name_or_path}: a folder without config.json (not a checkpoint folder)")
    elif not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.exists():
        if "/" in name_or_path and not Path(name_or_path).parent.exists():  # a hub id such as org/name
            from transformers import AutoConfig

            try:
                return AutoConfig.from_pretrained(name_or_path)
            except OSError as exc:
                raise ModelError(f"cannot read the config of hub model {name_or_path!r} (not in the hub cache and "
                                 f"the hub not reachable: {str(exc).splitlines()[0]})") from None
        raise ModelError(f"unknown model config {name_or_path!r}: not a file, a checkpoint folder or a hub id, and "
                         f"not one of {', '.join(list_model_configs())} in {CONFIG_DIR}")
    data = json.loads(path.read_text())
    return CONFIG_MAPPING[data["model_type"]].from_dict(data)


def build_meta_model(name_or_path: str):
    """The real architecture with meta tensors (shapes only)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    config = load_model_config(name_or_path)
    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(config)


def _image_tokens(config) -> tuple[int, int]:
    """(vision-tower patches, image tokens given to the LLM) per image (see the module docstring)."""
    vision = config.vision_config
    if config.model_type == "qwen2_vl":
        patches = (448 // vision.patch_size) ** 2
        return patches, patches // vision.spatial_merge_size ** 2
    grid = (vision.image_size // vision.patch_size) ** 2
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    return grid + 1, grid if strategy == "default" else grid + 1


@dataclass
class ParamsRow:
    """One method x placement x connector on one architecture."""

    model: str
    method: str
    placement: str | None
    connector: str
    trainable: int
    peft_params: int  # parameters the method adds (0 for full fine-tuning)
    all_params: int  # base + peft_params
    trainable_percent: float
    train_flops_per_token: float
    infer_flops_per_token: float
    train_flops_per_image: float
    infer_flops_per_image: float
    n_ctx: int
    vision: str = "frozen"  # the vision encoder: frozen (the study) or tuned (all of it trains)
    train_flops_per_token_study: float = 0.0  # 2 P_frozen + 4 P_trainable (no activation gradients), for comparison


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def count_method(model_name: str, method: str, params: dict | None = None, placement: str | None = None,
                 connector: str = "frozen", layers: Sequence[int] | None = None, n_ctx: int = 2048,
                 vision: str = "frozen") -> ParamsRow:
    """Apply ``method`` to a meta-device build of ``model_name`` and count parameters and FLOPs."""
    from accelerate import init_empty_weights

    from .methods import apply_method
    from .methods.placement import base_param_name, get_module_map

    base = build_meta_model(model_name)
    config = base.config
    module_map = get_module_map(base)
    base_total = sum(p.numel() for p in base.parameters())
    embeddings = {f"{n}.weight" for n, m in base.named_modules()
                  if isinstance(m, torch.nn.Embedding) and _under(n, module_map.language_model)}
    vision_params = sum(p.numel() for n, p in base.named_parameters()
                        if _under(n, module_map.vision) and not _under(n, module_map.connector))
    connector_params = sum(p.numel() for n, p in base.named_parameters() if _under(n, module_map.connector))
    with init_empty_weights(include_buffers=False):
        model = apply_method(base, method, params, placement, connector, layers, vision=vision)
    record = model.mllm_method

    trainable = all_params = 0
    p_frozen = p_trainable = p_infer = prefix_params = 0
    for name, p in model.named_parameters():
        n = p.numel()
        if ".modules_to_save." in name:  # peft's trainable copy of the connector: counted once, as trainable
            trainable += n
            continue
        all_params += n
        trainable += n if p.requires_grad else 0
        if name.startswith("prompt_encoder."):
            prefix_params += n
            p_trainable += n
            continue
        base_name = base_param_name(name, model)
        if not _under(base_name, module_map.language_model) or base_name in embeddings:
            continue  # vision tower, connector (per image), input embedding table (a lookup)
        p_infer += n
        if p.requires_grad:
            p_trainable += n
        else:
            p_frozen += n
    text = getattr(config, "text_config", config)
    virtual = int(record["params"].get("num_virtual_tokens", 0)) if record["method"] == "prefix" else 0
    n_patches, n_image = _image_tokens(config)
    conn_factor = 2 + (2 if connector == "tuned" else 0) + (2 if vision == "tuned" else 0)
    vision_factor = 6 if vision == "tuned" else 2  # frozen: nothing below it trains, forward only
    del model, base
    return ParamsRow(
        model=model_name, method=method, placement=record["placement"], connector=connector, trainable=trainable,
        peft_params=all_params - base_total, all_params=all_params,
        trainable_percent=100.0 * trainable / all_params,
        train_flops_per_token=4.0 * p_frozen + 6.0 * p_trainable,
        infer_flops_per_token=2.0 * (p_infer + text.num_hidden_layers * text.hidden_size * (n_ctx + virtual)),
        train_flops_per_image=float(vision_factor * vision_params * n_patches
                                    + conn_factor * connector_params * n_image),
        infer_flops_per_image=2.0 * (vision_params * n_patches + connector_params * n_image), n_ctx=n_ctx,
        vision=vision, train_flops_per_token_study=2.0 * p_frozen + 4.0 * p_trainable)


def params_rows(model_name: str, methods: Sequence[tuple[str, dict, str | None]] = PAPER_METHODS,
                connectors: Sequence[str] = ("frozen", "tuned"), n_ctx: int = 2048,
                visions: Sequence[str] = ("frozen",)) -> list[ParamsRow]:
    """Rows for every method (name, params, placement) x connector x vision encoder setting."""
    return [count_method(model_name, m, p, pl, c, n_ctx=n_ctx, vision=v) for m, p, pl in methods
            for v in visions for c in connectors]


def format_params_table(model_name: str, methods: Sequence[tuple[str, dict, str | None]] = PAPER_METHODS,
                        connectors: Sequence[str] = ("frozen", "tuned"), n_ctx: int = 2048,
                        rows: list[ParamsRow] | None = None) -> str:
    """A plain-text table of :func:`params_rows` (the paper's four methods x connector by default)."""
    rows = rows if rows is not None else params_rows(model_name, methods, connectors, n_ctx)
    base = rows[0].all_params - rows[0].peft_params if rows else 0
    show_vision = any(r.vision != "frozen" for r in rows)  # the column appears only when a row tunes it
    labels = ["method", "placement", "connector"] + (["vision"] if show_vision else [])
    head = labels + ["trainable", "trainable %", "PEFT params", "train GF/tok", "infer GF/tok", "train GF/img",
                     "infer GF/img"]
    body = [[r.method, r.placement or "-", r.connector] + ([r.vision] if show_vision else [])
            + [f"{r.trainable:,}", f"{r.trainable_percent:.3f}", f"{r.peft_params:,}",
               f"{r.train_flops_per_token / 1e9:.2f}", f"{r.infer_flops_per_token / 1e9:.2f}",
               f"{r.train_flops_per_image / 1e9:.1f}", f"{r.infer_flops_per_image / 1e9:.1f}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(cells: list) -> str:
        return "  ".join(str(c).rjust(w) if i >= len(labels) else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"{model_name}: {base:,} base parameters; FLOPs per LM token at n_ctx={n_ctx} and per image "
           f"(GF = 1e9 FLOPs; conventions in mllm_study/accounting.py)", line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def main_params(argv: Sequence[str] | None = None) -> int:
    """``mllm-study params --model llava-1.5-7b [--methods lora,adapter] [--connector tuned] [--vision tuned]
    [--json]``."""
    parser = argparse.ArgumentParser(prog="mllm-study params", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-1.5-7b",
                        help=f"a config in mllm_study/configs ({', '.join(list_model_configs())}), a config.json, a "
                             "checkpoint folder or a hub id")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (default: the paper's lora, ia3, prefix, adapter)")
    parser.add_argument("--placement", default=None, help="attention | mlp | both (default: each method's paper one)")
    parser.add_argument("--connector", default="frozen,tuned", help="frozen, tuned or both (comma-separated)")
    parser.add_argument("--vision", default="frozen",
                        help="the vision encoder: frozen (the study), tuned, or both (comma-separated)")
    parser.add_argument("--method-params", default=None, help="JSON parameters applied to every method")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    args = parser.parse_args(argv)
    paper = {m: (m, p, pl) for m, p, pl in PAPER_METHODS}
    names = args.methods.split(",") if args.methods else list(paper)
    extra = json.loads(args.method_params) if args.method_params else {}
    methods = [(n, {**paper.get(n, (n, {}, None))[1], **extra},
                args.placement if args.placement else paper.get(n, (n, {}, None))[2]) for n in names]
    start = time.perf_counter()
    try:
        rows = params_rows(args.model, methods, args.connector.split(","), args.n_ctx, args.vision.split(","))
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(format_params_table(args.model, rows=rows, n_ctx=args.n_ctx))
        print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main_params())
