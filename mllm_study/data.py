"""LLaVA conversation JSON + image folder: loading, validation, subsampling, chat formatting and collation.

Usage: ``records = load_split("data/world/vqav2", "train", size=1000, seed=42)``

One loader serves the synthetic world and real datasets alike (format: docs/data_format.md). Records come back
with ``image_path`` resolved to an absolute path (or None for text-only records). The :class:`Collator` turns
records into model inputs with the processor's own chat template, left padding, and labels on answer tokens only.

Encoding cache: a record's encoding (token ids, labels, pixel values) is a pure function of the record, the image
file, the processor and the mode, so each is computed once and only padded per batch. Three levels, all exact
(cached tensors are the very tensors the processor produced, never modified):

- per collator: every record it encoded, for its lifetime (one run's epochs);
- per process: collators of the same processor content (:func:`processor_fingerprint`), mode and image setting
  share encodings, so the runs of a sweep in one process and the per-epoch evaluations encode each record once;
  least recently used entries beyond ``MLLM_STUDY_ENCODING_CACHE_MB`` (default 2048 MiB) are dropped;
- on disk, opt-in: ``MLLM_STUDY_ENCODING_CACHE=<dir>`` (or :func:`set_encoding_cache`) keeps the encodings that
  :meth:`Collator.prepare` computed, one file per processor, mode and dataset, so sharded sweeps and later
  processes skip encoding too. Keys cover the processor's content, the encoding code, the transformers version,
  the record's turns and the image file's size and modification time. The caches live in
  :mod:`mllm_study.encodings`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .errors import DataError
from .encodings import (SHARED, disk_dir, disk_key, disk_shard, read_shard, record_key, share,
                        write_shard, clear_encoding_cache, processor_fingerprint, set_encoding_cache)

__all__ = [
    "CARVED_SPLITS", "VAL_SIZE", "val_size",
    "DataError", "load_dataset_info", "load_split", "load_conversation_file", "validate_record", "subsample",
    "to_messages",
    "prompt_messages", "Collator", "IGNORE_INDEX", "processor_fingerprint", "set_encoding_cache",
    "clear_encoding_cache",
]

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "gpt": "assistant"}


def load_dataset_info(dataset_dir: str | Path) -> dict[str, Any]:
    """Read ``dataset.json`` of a dataset folder (docs/data_format.md), resolving ``image_folder``."""
    dataset_dir = Path(dataset_dir)
    meta_path = dataset_dir / "dataset.json"
    if not meta_path.exists():
        raise DataError(f"{dataset_dir} is not a dataset folder: {meta_path.name} is missing "
                        "(see docs/data_format.md, or `mllm-study data convert` for real datasets)")
    try:
        info = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from None
    for key in ("name", "metric"):
        if key not in info:
            raise DataError(f"{meta_path}: missing key '{key}'")
    folder = Path(info.get("image_folder", "images"))
    info["image_folder"] = str(folder if folder.is_absolute() else (dataset_dir / folder).resolve())
    info["dir"] = str(dataset_dir.resolve())
    return info


def validate_record(record: Any, where: str) -> None:
    """Raise :class:`DataError` unless ``record`` is a valid LLaVA conversation record."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be an object, got {type(record).__name__}")
    if "id" not in record:
        raise DataError(f"{where}: record has no 'id'")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where} (id {record['id']}): 'conversations' must be a non-empty list")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"{where} (id {record['id']}): turn {i} needs 'from' and 'value'")
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise DataError(f"{where} (id {record['id']}): turn {i} is from {turn['from']!r}, expected "
                            f"{expected!r} (turns alternate human/gpt, starting with human)")
        if not isinstance(turn["value"], str):
            raise DataError(f"{where} (id {record['id']}): turn {i} value must be a string")
    refs = record.get("references")
    if refs is not None and (not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs)):
        raise DataError(f"{where} (id {record['id']}): 'references' must be a non-empty list of strings")


#: Splits carved from ``train.json``: ``val`` (its last records, for choosing learning rates without touching the
#: test split) and ``train_minus_val`` (the rest, what a run that is scored on ``val`` trains on).
CARVED_SPLITS = ("val", "train_minus_val")
VAL_SIZE = 200


def val_size(n_train: int) -> int:
    """Size of the validation split carved from a train split of ``n_train`` records (at most a fifth of it)."""
    return max(1, min(VAL_SIZE, n_train // 5))


def subsample(records: list[dict], size: int | None, seed: int) -> list[dict]:
    """A seeded random subset of ``size`` records (in original order); all records when size is None."""
    if size is None:
        return list(records)
    if size > len(records):
        raise DataError(f"asked for {size} records but the split has only {len(records)}")
    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


def load_split(dataset_dir: str | Path, split: str, size: int | None = None, seed: int = 0,
               check_images: bool = True) -> list[dict]:
    """Load, validate and (optionally) subsample one split of a dataset folder.

    Args:
        dataset_dir: a dataset folder (``dataset.json`` + ``<split>.json``).
        split: split name, e.g. ``train`` or ``test``.
        size: number of records to keep (seeded subsample); None keeps all.
        seed: subsampling seed.
        check_images: check that every kept record's image file exists.

    Returns:
        Records with ``image_path`` (absolute str or None) and ``dataset`` (the dataset name) added.
    """
    info = load_dataset_info(dataset_dir)
    carve = split if split in CARVED_SPLITS else None
    path = Path(dataset_dir) / f"{'train' if carve else split}.json"
    if not path.exists():
        known = sorted(p.stem for p in Path(dataset_dir).glob("*.json") if p.stem != "dataset")
        raise DataError(f"{dataset_dir}: no split {split!r} ({path.name} missing); splits: {', '.join(known)}")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: LLaVA conversation JSON must be a list of records, got {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: the split is empty")
    seen: set = set()
    for i, rec in enumerate(records):
        validate_record(rec, f"{path} record {i}")
        if rec["id"] in seen:
            raise DataError(f"{path}: duplicate id {rec['id']!r}")
        seen.add(rec["id"])
    if carve:
        n_val = val_size(len(records))
        records = records[-n_val:] if carve == "val" else records[:-n_val]
    try:
        records = subsample(records, size, seed)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    folder = Path(info["image_folder"])
    out = []
    for rec in records:
        rec = dict(rec)
        image = rec.get("image")
        rec["image_path"] = str(folder / image) if image else None
        if check_images and image and not Path(rec["image_path"]).is_file():
            raise DataError(f"{path} (id {rec['id']}): image file not found: {rec['image_path']}")
        rec["dataset"] = info["name"]
        out.append(rec)
    return out


# Roles of conversation files as LLaVA, ShareGPT4V and Qwen-style (``user``/``assistant``) data write them.
_FILE_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _read_json_or_lines(path: Path) -> list:
    """A JSON list, or JSON lines (one record per line), read by the converters' reader; errors name the file (and
    line) as DataError."""
    from .converters.base import load_json_lines

    try:
        return load_json_lines(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSON syntax (names the file and line) or undecodable text
        raise DataError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _file_turns(raw: dict, where: str) -> list[dict]:
    """``conversations`` (``from``/``value``) or ``messages`` (``role``/``content``) -> human/gpt turns, LLaVA's way."""
    if "conversations" in raw:
        turns, role_key, text_key = raw["conversations"], "from", "value"
    elif "messages" in raw:
        turns, role_key, text_key = raw["messages"], "role", "content"
    else:
        raise DataError(f"{where}: record has neither 'conversations' nor 'messages'")
    if not isinstance(turns, list):
        raise DataError(f"{where}: '{'conversations' if role_key == 'from' else 'messages'}' must be a list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise DataError(f"{where}: turn {i} needs '{role_key}' and '{text_key}'")
        role, text = turn[role_key], turn[text_key]
        if role == "system" and i == 0:  # a leading system prompt: the chat template supplies its own
            continue
        if role not in _FILE_ROLES:
            raise DataError(f"{where}: turn {i} is from {role!r}; known roles: human/user, gpt/assistant "
                            "(and a leading system turn, which is dropped)")
        if not isinstance(text, str):
            raise DataError(f"{where}: turn {i} '{text_key}' must be a string")
        out.append({"from": _FILE_ROLES[role], "value": text})
    if out and out[0]["from"] != "human":  # as llava/train/train.py preprocess: skip a first turn not from the human
        out = out[1:]
    for i, turn in enumerate(out):
        if turn["from"] != ("human" if i % 2 == 0 else "gpt"):
            raise DataError(f"{where}: turns do not alternate human/gpt (turn {i} is from {turn['from']!r} after "
                            "dropping a leading gpt turn, as LLaVA does)")
    if not any(t["from"] == "gpt" for t in out):
        raise DataError(f"{where}: no gpt answer after the first human turn (nothing to train on or score against)")
    return out


def load_conversation_file(path: str | Path, image_folder: str | Path | None = None,
                           check_images: bool = True) -> list[dict]:
    """Read a LLaVA conversation file (JSON list or JSON lines) into records of this project's format.

    Handles the files LLaVA-1.5 (``llava_v1_5_mix665k.json``), ShareGPT4V and LLaVA's own ``train.py`` use:

    - a first turn that is not from the human is dropped, as ``llava/train/train.py`` ``preprocess`` does;
    - roles ``user``/``assistant`` (Qwen-style, also as ``messages`` with ``role``/``content``) are read as
      ``human``/``gpt``; a leading ``system`` turn is dropped;
    - records without ``image`` (or with ``image`` null) are text-only; ``image`` may be a one-element list;
    - duplicate ids are kept: later copies get ``-dup1``, ``-dup2``, ... appended, with one warning for the file;
      a record without ``id`` gets ``<file stem>-<index>``.

    Args:
        path: the conversation file.
        image_folder: folder ``image`` paths are relative to (default: the file's folder).
        check_images: raise if a record's image file is missing.

    Returns:
        Records with ``id``, ``conversations`` (alternating human/gpt), ``image`` when present, and the other keys
        of the source record (e.g. ``references``); each passes :func:`validate_record`.

    Raises:
        DataError: unreadable file, malformed record, unknown role, multi-image record or missing image; the
            message names the file and the record.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise DataError(f"conversation file not found: {path}")
    folder = Path(image_folder) if image_folder is not None else path.parent
    if check_images and not folder.is_dir():
        raise DataError(f"{path}: image folder {folder} does not exist")
    rows = _read_json_or_lines(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list (or JSON lines) of LLaVA records, got {type(rows).__name__}")
    if not rows:
        raise DataError(f"{path}: the file has no records")
    records, seen, renamed = [], {}, []
    for n, raw in enumerate(rows):
        where = f"{path} record {n}"
        if not isinstance(raw, dict):
            raise DataError(f"{where}: a record must be an object, got {type(raw).__name__}")
        rid = str(raw["id"]) if raw.get("id") is not None else f"{path.stem}-{n}"
        where = f"{where} (id {rid})"
        image = raw.get("image")
        if isinstance(image, list):
            if len(image) > 1:
                raise DataError(f"{where}: {len(image)} images; only one image per record is supported")
            image = image[0] if image else None
        if image is not None and not isinstance(image, str):
            raise DataError(f"{where}: 'image' must be a path string, got {type(image).__name__}")
        if image and check_images and not (folder / image).is_file():
            raise DataError(f"{where}: image file not found: {folder / image} (pass --image-folder, the folder "
                            "the 'image' paths are relative to)")
        record = {k: v for k, v in raw.items() if k not in ("id", "image", "conversations", "messages")}
        record = {"id": rid, **({"image": image} if image else {}), "conversations": _file_turns(raw, where),
                  **record}
        if rid in seen:
            seen[rid] += 1
            record["id"] = f"{rid}-dup{seen[rid]}"
            renamed.append(rid)
        else:
            seen[rid] = 0
        validate_record(record, where)
        records.append(record)
    if renamed:
        warnings.warn(f"{path}: {len(renamed)} record(s) repeat an earlier id (e.g. {renamed[0]!r}); kept, renamed "
                      f"with -dup1, -dup2, ... (as LLaVA, which ignores ids)", stacklevel=2)
    return records


def _content(text: str, with_image: bool) -> list[dict]:
    """Chat content items for one user turn: the image where ``<image>`` was, then the text."""
    if with_image and IMAGE_PLACEHOLDER in text:
        before, _, after = text.partition(IMAGE_PLACEHOLDER)
        items = []
        if before.strip():
            items.append({"type": "text", "text": before.strip()})
        items.append({"type": "image"})
        items.append({"type": "text", "text": after.strip()})
        return items
    text = text.replace(IMAGE_PLACEHOLDER, "").strip()
    return ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]


def to_messages(record: dict) -> list[dict]:
    """The record's conversation as chat messages (``role``/``content``) for ``apply_chat_template``."""
    has_image = record.get("image_path") is not None or record.get("image") is not None
    messages = []
    for i, turn in enumerate(record["conversations"]):
        role = _ROLES[turn["from"]]
        if role == "user":
            messages.append({"role": role, "content": _content(turn["value"], has_image and i == 0)})
        else:
            messages.append({"role": role, "content": [{"type": "text", "text": turn["value"].strip()}]})
    return messages


def prompt_messages(record: dict) -> list[dict]:
    """Messages up to and including the last user turn (what the model sees at evaluation)."""
    messages = to_messages(record)
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[: last_user + 1]


def _load_image(record: dict, blank: bool) -> Image.Image:
    try:
        with Image.open(record["image_path"]) as img:
            image = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"record {record['id']}: cannot read image {record['image_path']}: {exc}") from None
    if blank:  # the image-use check: same size, no content (mid grey = 0 after the tiny model's normalisation)
        image = Image.new("RGB", image.size, (128, 128, 128))
    return image


def _noop_geometry(image_processor: Any, images: list[Image.Image]) -> dict[str, bool]:
    """``do_resize=False, do_center_crop=False`` when both would return every image unchanged, else ``{}``.

    A CLIP-style processor resizes the shortest edge to ``size.shortest_edge`` (or to ``size.height x width``) and
    centre-crops to ``crop_size``; for images already at that size both are identities (the pixel values are
    bit-identical, tested) yet cost about 40% of pre-processing. Other processors are left alone.
    """
    if not images or image_processor is None:
        return {}
    size, crop = getattr(image_processor, "size", None), getattr(image_processor, "crop_size", None)
    do_resize = getattr(image_processor, "do_resize", None)
    do_crop = getattr(image_processor, "do_center_crop", None)
    if size is None or do_resize is None or do_crop is None:
        return {}
    sizes = {im.size for im in images}  # (width, height)
    if len(sizes) != 1:
        return {}
    (w, h), = sizes
    shortest = getattr(size, "shortest_edge", None) if not isinstance(size, dict) else size.get("shortest_edge")
    height = getattr(size, "height", None) if not isinstance(size, dict) else size.get("height")
    width = getattr(size, "width", None) if not isinstance(size, dict) else size.get("width")
    longest = getattr(size, "longest_edge", None) if not isinstance(size, dict) else size.get("longest_edge")
    if do_resize and not ((shortest is not None and longest is None and height is None and min(w, h) == shortest)
                          or (shortest is None and (height, width) == (h, w))):
        return {}
    if do_crop:
        ch = getattr(crop, "height", None) if not isinstance(crop, dict) else crop.get("height")
        cw = getattr(crop, "width", None) if not isinstance(crop, dict) else crop.get("width")
        if (ch, cw) != (h, w):
            return {}
    return {"do_resize": False, "do_center_crop": False}


#: end-of-turn tokens of known chat templates, looked for after the assistant's answer
_END_TOKENS = ("<|im_end|>", "<end_of_utterance>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def _end_of_turn(processor: Any, tokenizer: Any) -> tuple[str | None, bool]:
    """(the token that ends an assistant turn, whether the chat template leaves it out).

    The template is rendered for a probe answer; the first of the tokenizer's eos and :data:`_END_TOKENS` found after
    the answer is the end of turn. Templates that end the answer with nothing (llava-hf LLaVA-1.5: ``"answer "``)
    get the eos token appended in training, as LLaVA's own training format ends each answer with ``</s>``.
    """
    probe = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "zq"}]}]
    try:
        prompt = processor.apply_chat_template(probe[:1], add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template(probe, tokenize=False)
    except Exception:  # no chat template: nothing to align against
        return tokenizer.eos_token, False
    tail = full[len(prompt):] if full.startswith(prompt) else full
    tail = tail[tail.find("zq") + 2:] if "zq" in tail else tail
    for token in (tokenizer.eos_token, *_END_TOKENS):
        if token and token in tail:
            return token, False
    return tokenizer.eos_token, tokenizer.eos_token is not None


def _append_end_of_turn(text: str, spans: list[tuple[str, str]], end: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` with ``end`` after each assistant answer (its trailing spaces dropped) and the spans' prefixes
    rewritten to match. Needs a prefix-stable template (each span's texts prefixes of ``text``); else unchanged."""
    if not all(text.startswith(e) and e.startswith(s) for s, e in spans):
        return text, spans
    out, new_spans, cursor = "", [], 0
    for start_text, end_text in spans:
        out += text[cursor:len(start_text)]
        new_start = out
        out += text[len(start_text):len(end_text)].rstrip() + end
        new_spans.append((new_start, out))
        cursor = len(end_text)
    return out + text[cursor:], new_spans


class Collator:
    """Records -> padded model inputs.

    ``mode="train"``: the whole conversation, labels = token ids on assistant turns (answer and end-of-turn),
    IGNORE_INDEX elsewhere. ``mode="generate"``: the prompt up to the last user turn plus the generation prompt.
    Left padding in both modes; ``position_ids`` are derived from the attention mask by :func:`forward_inputs`.
    """

    def __init__(self, processor: Any, mode: str = "train", blank_images: bool = False, cache: bool = True,
                 check_labels: bool = True):
        if mode not in ("train", "generate"):
            raise ValueError(f"mode must be 'train' or 'generate', got {mode!r}")  # internal
        self.check_labels = check_labels
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.mode = mode
        self.blank_images = blank_images
        # Encodings are pure functions of (record, image, processor, mode): cache them so each record is processed
        # once, not once per epoch nor once per run (module docstring: per collator, per process, on disk).
        self._cache: dict[tuple, dict[str, torch.Tensor]] | None = {} if cache else None
        self._scope = (processor_fingerprint(processor), mode, bool(blank_images)) if cache else None
        self.image_token_id = getattr(processor, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = self.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.end_of_turn, self.append_end = (_end_of_turn(processor, self.tokenizer) if mode == "train"
                                             else (None, False))
        self.end_of_turn_id = (self.tokenizer.convert_tokens_to_ids(self.end_of_turn)
                               if self.end_of_turn is not None else None)

    def _template(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)

    def _templates(self, conversations: list[list[dict]], generation_prompt: bool) -> list[str]:
        """:meth:`_template` of many conversations in one call (same strings, a third of the time)."""
        if not conversations:
            return []
        out = self.processor.apply_chat_template(conversations, add_generation_prompt=generation_prompt,
                                                 tokenize=False)
        return [out] if isinstance(out, str) else list(out)

    def encode(self, record: dict) -> dict[str, torch.Tensor]:
        """Encode one record (unpadded, batch dimension 1)."""
        return self.encode_many([record])[0]

    def encode_many(self, records: list[dict]) -> list[dict[str, torch.Tensor]]:
        """Encode records (each unpadded, batch dimension 1) with one processor call for all of them.

        One call amortises the processor's per-call overhead (about 3x faster than record by record here).
        Processors whose image tensors cannot be split per image (e.g. Qwen2-VL's patch lists) go record by record.
        """
        conversations, images, has_image, spans = [], [], [], []
        for rec in records:
            messages = to_messages(rec)
            if self.mode == "generate":
                conversations.append(prompt_messages(rec))
            else:
                conversations.append(messages)
                spans.append([(self._template(messages[:i], True), self._template(messages[: i + 1], False))
                              for i, m in enumerate(messages) if m["role"] == "assistant"])
            has_image.append(bool(rec.get("image_path")))
            if has_image[-1]:
                images.append(_load_image(rec, self.blank_images))
        texts = self._templates(conversations, self.mode == "generate")
        if self.mode == "train" and self.append_end:
            texts, spans = zip(*(_append_end_of_turn(t, sp, self.end_of_turn) for t, sp in zip(texts, spans)))
            texts, spans = list(texts), list(spans)
        enc = self.processor(images=images or None, text=texts, return_tensors="pt", padding=True,
                             **_noop_geometry(getattr(self.processor, "image_processor", None), images))
        enc = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
        extra = set(enc) - {"input_ids", "attention_mask", "pixel_values"}
        pixels = enc.get("pixel_values")
        if len(records) > 1 and (extra or (pixels is not None and pixels.shape[0] != len(images))):
            return [self.encode_many([r])[0] for r in records]
        out, image_i = [], 0
        for j, rec in enumerate(records):
            ids = enc["input_ids"][j][enc["attention_mask"][j].bool()]
            e = {"input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None]}
            if len(records) == 1:
                e.update({k: v for k, v in enc.items() if k not in e})
            elif has_image[j]:
                e["pixel_values"] = pixels[image_i:image_i + 1]
                image_i += 1
            out.append(e)
        if self.mode == "train":
            # Label positions counted from the end: every image is in the prompt before the answers, so the number
            # of tokens after a prefix is the same in the text as in the processor's ids, however the processor
            # expands image placeholders (one token per patch, tiles with row/column markers, ...).
            flat = [t for text, rec_spans in zip(texts, spans) for t in (text, *(x for p in rec_spans for x in p))]
            lengths = iter(len(x) for x in self.tokenizer(flat)["input_ids"]) if flat else iter(())
            for rec, e, rec_spans in zip(records, out, spans):
                ids = e["input_ids"][0]
                n_full = next(lengths)
                labels = torch.full_like(ids, IGNORE_INDEX)
                answers = [m for m in to_messages(rec) if m["role"] == "assistant"]
                for (start_text, end_text), answer in zip(rec_spans, answers):
                    start = max(len(ids) - (n_full - next(lengths)), 0)
                    end = min(len(ids) - (n_full - next(lengths)), len(ids))
                    if self.end_of_turn_id is not None:  # up to the end-of-turn token (not the newline after it)
                        hits = (ids[start:end] == self.end_of_turn_id).nonzero()
                        if hits.numel():
                            end = start + int(hits[-1, 0]) + 1
                    labels[start:end] = ids[start:end]
                    if self.check_labels:
                        self._check_answer(rec, ids[start:end], answer["content"][0]["text"])
                if (labels != IGNORE_INDEX).sum() == 0:
                    raise DataError(f"record {rec['id']}: no answer tokens to train on (empty answer?)")
                e["labels"] = labels[None]
        return out

    def _check_answer(self, record: dict, supervised: torch.Tensor, answer: str) -> None:
        """DataError unless the supervised tokens decode to the answer followed by the end-of-turn token (spaces
        aside): a label offset that is off (image tokens miscounted, a template's trailing space) is caught here."""
        tok = self.tokenizer
        expected_ids = tok(answer, add_special_tokens=False)["input_ids"]
        expected = tok.decode(expected_ids) + (self.end_of_turn or "")
        got = tok.decode(supervised.tolist())
        if "".join(got.split()) != "".join(expected.split()):
            raise DataError(
                f"record {record['id']}: the supervised tokens are not the answer followed by the end-of-turn token "
                f"{self.end_of_turn!r}: labels {tok.convert_ids_to_tokens(supervised.tolist())} vs expected "
                f"{tok.convert_ids_to_tokens(expected_ids) + [self.end_of_turn]} (chat template or label offsets do "
                "not match; Collator(check_labels=False) skips this check)")

    def _encode_cached(self, records: list[dict], keys: list[tuple] | None = None,
                       chunk: int | None = None) -> list[dict[str, torch.Tensor]]:
        if self._cache is None:
            return self.encode_many(records)
        keys = keys if keys is not None else [record_key(r) for r in records]
        missing = []
        for k, r in zip(keys, records):
            if k in self._cache:
                continue
            shared = SHARED.get((*self._scope, k))
            if shared is not None:
                self._cache[k] = shared
                SHARED.move_to_end((*self._scope, k))
            else:
                missing.append((k, r))
        unique = list({k: r for k, r in missing}.items())
        step = chunk or max(len(unique), 1)
        for start in range(0, len(unique), step):
            part = unique[start:start + step]
            for (k, _), e in zip(part, self.encode_many([r for _, r in part])):
                self._cache[k] = e
                share((*self._scope, k), e)
        return [self._cache[k] for k in keys]

    def prepare(self, records: list[dict], chunk: int = 64) -> None:
        """Encode and cache ``records`` now (before training), ``chunk`` records per processor call.

        With an encoding cache directory (module docstring), encodings are read from and written back to disk.
        Without ``cache`` this does nothing.
        """
        if self._cache is None or not records:
            return
        keys = [record_key(r) for r in records]
        directory = disk_dir()
        if directory is None:
            self._encode_cached(records, keys, chunk)
            return
        by_dataset: dict[Any, list[int]] = {}
        for i, r in enumerate(records):
            by_dataset.setdefault(r.get("dataset"), []).append(i)
        for dataset, idx in by_dataset.items():
            part = [records[i] for i in idx]
            part_keys = [keys[i] for i in idx]
            if all(k in self._cache or (*self._scope, k) in SHARED for k in part_keys):
                self._encode_cached(part, part_keys, chunk)  # all in memory (this process wrote or read them)
                continue
            path = disk_shard(directory, self._scope, dataset, part)
            stored = read_shard(path)
            for k in part_keys:
                if k not in self._cache and disk_key(k) in stored:
                    self._cache[k] = stored[disk_key(k)]
                    share((*self._scope, k), self._cache[k])
            before = {k for k in part_keys if disk_key(k) in stored}
            self._encode_cached(part, part_keys, chunk)
            new = {disk_key(k): self._cache[k] for k in part_keys if k not in before}
            if new:
                try:
                    write_shard(path, {**read_shard(path), **stored, **new})
                except OSError:  # a read-only or full disk only costs the re-encoding next time
                    pass

    def lengths(self, records: list[dict]) -> list[int]:
        """Token lengths of ``records`` (encoded and cached as needed)."""
        return [int(e["input_ids"].shape[1]) for e in self._encode_cached(records)]

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        encoded = self._encode_cached(records)
        length = max(e["input_ids"].shape[1] for e in encoded)
        fills = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch: dict[str, Any] = {}
        for key, fill in fills.items():
            rows = [e[key][0] for e in encoded if key in e]
            if len(rows) == len(encoded):  # one left-padding op per key (the same tensor as padding row by row)
                batch[key] = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=fill,
                                                             padding_side="left")
            elif rows:
                batch[key] = torch.cat([torch.cat([torch.full((1, length - e[key].shape[1]), fill,
                                                              dtype=e[key].dtype), e[key]], dim=1)
                                        for e in encoded if key in e], dim=0)
        others: dict[str, list] = {}
        for e in encoded:
            for key, value in e.items():
                if key not in fills:
                    others.setdefault(key, []).append(value)
        for key, values in others.items():
            per_token = len(values) == len(encoded) and all(
                v.dim() == 2 and v.shape == e["input_ids"].shape for v, e in zip(values, encoded))
            if per_token and len(encoded) > 1:  # e.g. Qwen2-VL's mm_token_type_ids: left-padded like the ids
                batch[key] = torch.nn.utils.rnn.pad_sequence([v[0] for v in values], batch_first=True,
                                                             padding_value=0, padding_side="left")
            else:
                batch[key] = torch.cat(values, dim=0)
        return batch
