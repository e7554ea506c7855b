"""Converter registry and shared machinery: source lookup, validation, image resolution, subsampling, atomic writes.

Usage: ``from mllm_study.converters.base import register_converter, Item`` (dataset modules register themselves).

A converter is a ``build(src, seed) -> {split: [Item, ...]}`` function plus the metadata that goes into
``dataset.json`` (docs/data_format.md). :func:`convert` does everything that is common to all datasets: it picks the
image folder, subsamples each split (seeded, skipping records whose image file is missing), writes one
``<split>.json`` per split and ``dataset.json`` last, each through a temp file and an atomic rename.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import ConfigError, DataError

__all__ = [
    "Item", "Converter", "CONVERTERS", "register_converter", "list_converters", "get_converter", "convert",
    "find_source", "load_json", "load_json_lines", "require", "human_turn", "conversation", "most_common_answer",
    "VQA_SUFFIX", "check_out", "write_dataset_folder",
]

# LLaVA-1.5's short-answer instruction (its mix665k VQAv2/OKVQA/OCRVQA data and its VQA evaluations use it).
VQA_SUFFIX = "Answer the question using a single word or phrase."


@dataclass
class Item:
    """One converted record before image resolution.

    Attributes:
        record: the record without its ``image`` key (``id`` first, then ``conversations`` and scoring keys).
        images: image paths relative to the image folder, most likely layout first; the first one that exists is
            written as ``image``. Empty for a text-only record.
    """

    record: dict
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class Converter:
    """A registered real-dataset converter and its ``dataset.json`` metadata.

    Attributes:
        name: registry name and ``dataset.json`` ``name``.
        family: one of the eight paper columns, or ``pope``.
        metric: metric registry name (``vqa_score``, ``accuracy``, ``mc_accuracy``, ``cider``, ``pope``).
        group: ``seen``, ``unseen`` or ``probe``.
        max_new_tokens: generation limit for this task's answers.
        source_format: the public release this reads, named in errors and in ``dataset.json`` ``source``.
        build: ``build(src, seed) -> {split: [Item, ...]}``; raises FileNotFoundError / ValueError on bad sources.
        splits: output split names, in order.
        default_sizes: per-split default subsample size (the paper's 20k/5k for OCRVQA and VQAv2); absent = full.
        image_roots: candidate image folders relative to ``src``; the first under which images resolve is used.
    """

    name: str
    family: str
    metric: str
    group: str
    max_new_tokens: int
    source_format: str
    build: Callable[[Path, int], dict[str, list[Item]]]
    splits: tuple[str, ...] = ("train", "test")
    default_sizes: Mapping[str, int] = field(default_factory=dict)
    image_roots: tuple[str, ...] = (".",)


CONVERTERS: dict[str, Converter] = {}


def register_converter(name: str, **meta: Any) -> Callable:
    """Decorator registering ``build`` as the converter ``name``.

    Args:
        name: registry name (lower case, e.g. ``"vqav2"``).
        **meta: the other :class:`Converter` fields (family, metric, group, max_new_tokens, source_format, ...).

    Returns:
        The decorator; it returns ``build`` unchanged.
    """

    def decorator(build: Callable[[Path, int], dict[str, list[Item]]]) -> Callable:
        if name in CONVERTERS:
            raise ValueError(f"converter {name!r} is already registered")  # internal
        CONVERTERS[name] = Converter(name=name, build=build, **meta)
        return build

    return decorator


def list_converters() -> list[str]:
    """Return the registered converter names, sorted."""
    return sorted(CONVERTERS)


def get_converter(name: str) -> Converter:
    """Look a converter up by name.

    Args:
        name: registry name.

    Returns:
        The :class:`Converter`.

    Raises:
        ValueError: unknown name; the message lists the known names and the closest match.
    """
    if name in CONVERTERS:
        return CONVERTERS[name]
    close = difflib.get_close_matches(name, list_converters(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown dataset converter {name!r}; known: {', '.join(list_converters())}.{hint}")


# ---------------------------------------------------------------------------------------------- source reading
def find_source(src: Path, candidates: Sequence[str], fmt: str) -> Path:
    """Return the first of ``candidates`` (paths relative to ``src``) that is a file.

    Raises:
        FileNotFoundError: none exists; the message names the expected file, where it was looked for and the format.
    """
    for rel in candidates:
        if (src / rel).is_file():
            return src / rel
    looked = ", ".join(str(src / rel) for rel in candidates)
    raise FileNotFoundError(f"expected {Path(candidates[0]).name} of the {fmt} under {src} (looked for: {looked})")


def load_json(path: Path) -> Any:
    """Load a JSON file; a syntax error becomes a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def load_json_lines(path: Path) -> list:
    """Load a JSON-lines file (or, if it is one JSON list, that list); bad lines name the file and line."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return load_json(path)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number} is not valid JSON ({err})") from None
    return rows


def require(obj: Any, key: str, path: Path, where: str, kind: type | tuple = object) -> Any:
    """Return ``obj[key]``, raising a ValueError naming the file, the entry and the key if it is absent or mistyped.

    Args:
        obj: the JSON object (dict) expected to hold ``key``.
        key: the required key.
        path: the source file, for the message.
        where: which entry of the file (e.g. ``"problem '12'"``), for the message.
        kind: accepted type(s) of the value.
    """
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path}: {where} is missing the key {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {where} has {key!r} of type {type(value).__name__}, expected {names}")
    return value


# ---------------------------------------------------------------------------------------------- record helpers
def human_turn(*lines: str) -> str:
    """First human turn: the ``<image>`` placeholder, then the non-empty ``lines`` joined by newlines."""
    return "\n".join(["<image>", *(line for line in lines if line)])


def conversation(prompt: str, answer: str) -> list[dict]:
    """A one-round LLaVA conversation."""
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]


def most_common_answer(answers: Iterable[str]) -> str:
    """The most frequent answer; ties go to the one that occurs first in the annotation order (deterministic)."""
    answers = list(answers)
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


# ---------------------------------------------------------------------------------------------- conversion
def _resolve(root: Path, candidates: Sequence[str]) -> str | None:
    return next((rel for rel in candidates if (root / rel).is_file()), None)


def _pick_image_root(src: Path, conv: Converter, splits: dict[str, list[Item]]) -> Path:
    """The first candidate root under which some of the first records' images exist (else ``src``)."""
    probe = [it for items in splits.values() for it in items[:20] if it.images]
    for rel in conv.image_roots:
        root = (src / rel).resolve()
        if root.is_dir() and any(_resolve(root, it.images) for it in probe):
            return root
    return src.resolve()


def _select(items: list[Item], size: int | None, rng: random.Random, root: Path, label: str) -> list[dict]:
    """Seeded subsample of ``items`` whose images exist, kept in source order, with ``image`` filled in.

    Records are visited in a seeded random order (source order when no subsampling is needed) and kept while their
    image exists, until ``size`` are kept: the sample honours ``size`` even when a few images are missing.
    """
    order = list(range(len(items)))
    if size is not None and size < len(items):
        rng.shuffle(order)
    kept: list[tuple[int, str | None]] = []
    missing: list[Item] = []
    for index in order:
        if size is not None and len(kept) >= size:
            break
        item = items[index]
        rel = _resolve(root, item.images) if item.images else None
        if item.images and rel is None:
            missing.append(item)
            continue
        kept.append((index, rel))
    if items and not kept:
        raise FileNotFoundError(f"{label}: none of the {len(missing)} images found under {root} (first expected: "
                                f"{root / items[0].images[0]}); pass the folder holding them with --image-folder "
                                "(image_folder= in Python)")
    if missing:
        shown = "; ".join(f"{it.record['id']} -> {root / it.images[0]}" for it in missing[:3])
        warnings.warn(f"{label}: skipped {len(missing)} record(s) whose image is missing, e.g. {shown}", stacklevel=3)
    records = []
    for index, rel in sorted(kept, key=lambda pair: pair[0]):
        record = dict(items[index].record)
        if rel is not None:
            record = {"id": record.pop("id"), "image": rel, **record}
        records.append(record)
    return records


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _records_json(records: list[dict]) -> str:
    # One record per line: valid JSON, greppable and diff-friendly.
    if not records:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"


def _check_size(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"{name} must be a positive integer or None (got {value!r})")


def convert(name: str, src: str | os.PathLike, out: str | os.PathLike, *, train_size: int | None = None,
            test_size: int | None = None, seed: int = 0, image_folder: str | os.PathLike | None = None,
            overwrite: bool = False) -> dict:
    """Convert a public dataset release at ``src`` into a dataset folder at ``out`` (docs/data_format.md).

    Args:
        name: converter name (see :func:`list_converters`).
        src: folder holding the release's annotation files (and, by default, its images).
        out: dataset folder to write (created if needed): ``dataset.json`` and one ``<split>.json`` per split.
        train_size: subsample the train split to this many records (default: the converter's default, i.e. the
            paper's 20k for OCRVQA/VQAv2, else the full split).
        test_size: subsample each evaluation split (``test``, or POPE's three splits) likewise (paper: 5k).
        seed: subsampling seed (also seeds per-record choices such as Flickr30k's prompt); same seed, same ids.
        image_folder: folder the record ``image`` paths are relative to; default: found under ``src``.
            Written to ``dataset.json`` as an absolute path; images are never copied.
        overwrite: replace an ``out`` folder that is not empty (as a whole, atomically: nothing of the old
            folder is kept). Without it a non-empty ``out`` is an error, so a reused folder never mixes datasets.

    Returns:
        The ``dataset.json`` dict.

    Raises:
        ValueError: unknown converter, bad sizes, a malformed source file (the message names file and key), a split
            without records, or a non-empty ``out`` without ``overwrite``.
        FileNotFoundError: a source file is missing (the message names it and the expected format), or no image
            of a split exists under the image folder.
    """
    conv = get_converter(name)
    out = Path(out).expanduser()
    check_out(out, overwrite)
    _check_size("train_size", train_size)
    _check_size("test_size", test_size)
    if train_size is not None and "train" not in conv.splits:
        raise ConfigError(f"{name} has no train split (splits: {', '.join(conv.splits)}); leave train_size unset")
    src = Path(src).expanduser()
    from .hf_parquet import is_parquet_source

    if is_parquet_source(src):  # a Hugging Face parquet release (lmms-lab/...): its own reader, images from bytes
        from .hf_parquet import convert_parquet

        return convert_parquet(conv, src, out, train_size=train_size, test_size=test_size, seed=seed)
    if not src.is_dir():
        raise FileNotFoundError(f"{name}: source folder {src} does not exist (expected the {conv.source_format}, "
                                "or a Hugging Face parquet file or folder)")
    splits = conv.build(src, seed)
    root = Path(image_folder).expanduser().resolve() if image_folder is not None else \
        _pick_image_root(src, conv, splits)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: image folder {root} does not exist")
    selected = {}
    for split in conv.splits:
        items = splits.get(split, [])
        if not items:
            raise DataError(f"{name} {split}: the split has no records in {src} (expected the {conv.source_format});"
                            " nothing was written")
        override = train_size if split == "train" else test_size
        size = override if override is not None else conv.default_sizes.get(split)
        rng = random.Random(f"{name}/{split}/{seed}")
        selected[split] = _select(items, size, rng, root, f"{name} {split}")
    meta = {
        "name": conv.name, "family": conv.family, "metric": conv.metric, "group": conv.group,
        "max_new_tokens": conv.max_new_tokens, "image_folder": str(root),
        "splits": {split: len(records) for split, records in selected.items()},
        "source": f"{conv.source_format} at {src.resolve()} (seed {seed})",
    }
    write_dataset_folder(out, selected, meta)
    return meta


def check_out(out: Path, overwrite: bool) -> None:
    """Raise ValueError if ``out`` is a file, or a non-empty folder and ``overwrite`` is false."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out} is not empty; pass --overwrite (overwrite=True) to replace it as a "
                          "whole, or choose another --out")


def write_dataset_folder(out: Path, splits: Mapping[str, list[dict]], meta: dict,
                         fill: Callable[[Path], None] | None = None) -> None:
    """Write ``<split>.json`` files and ``dataset.json`` into a fresh folder that then replaces ``out`` at once.

    The new folder is built beside ``out`` (same file system) and swapped in by renames, so ``out`` is either the
    old folder or the complete new one, never a mix; an interrupted write leaves only a hidden ``.<name>.tmp-*``
    sibling. ``fill(tmp_dir)`` may add files (e.g. decoded images) before the swap.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        if fill is not None:
            fill(tmp)
        for split, records in splits.items():
            _atomic_write(tmp / f"{split}.json", _records_json(records))
        _atomic_write(tmp / "dataset.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
