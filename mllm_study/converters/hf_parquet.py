"""Hugging Face parquet releases (lmms-lab/...) -> dataset folders, with the images decoded from the parquet bytes.

Usage: ``mllm-study data convert vqav2 --src VQAv2/data --out datasets/vqav2 --test-size 5000``

``convert(name, src, ...)`` comes here when ``src`` is a ``.parquet`` file, a folder holding parquet files (up to
three levels down, e.g. a downloaded ``lmms-lab/VQAv2`` repository or its ``data/`` folder), or ``hf:<dataset id>``
(optionally ``hf:<id>:<config>``) read through the ``datasets`` library when it is installed. The split of a file is
taken from its name (``validation-00000-of-00068.parquet``) or its folder (``validation/0000.parquet``).

Schemas read (the dataset cards of the lmms-lab releases) and the splits they become; other splits are ignored:

=========  =====================  ===============================================  ==============================
converter  release                columns used                                     splits
=========  =====================  ===============================================  ==============================
vqav2      lmms-lab/VQAv2         question_id, question, answers[{answer}], image  validation -> test
okvqa      lmms-lab/OK-VQA        question_id, question, answers[str], image       val2014 -> test
vizwiz     lmms-lab/VizWiz-VQA    question_id, question, answers[str], image       val -> test
scienceqa  lmms-lab/ScienceQA     question, choices, answer, hint, image           train, test (image rows only)
           (config ScienceQA-IMG)
pope       lmms-lab/POPE          question_id, question, answer, category, image   test (or random/popular/
                                                                                   adversarial) -> by category
flickr30k  lmms-lab/flickr30k     filename, caption[str] x5, image                 test (all 31,783 images)
=========  =====================  ===============================================  ==============================

Records are built exactly as the JSON converters build them (same prompts, gold answers, references and ids, except
ScienceQA, whose parquet rows have no problem id: ``scienceqa-<split>-<row>``). Subsampling (``train_size``,
``test_size``) happens before any image is decoded; the kept images are written to ``<out>/images/<split>/`` and
``dataset.json`` ``image_folder`` is ``images`` (relative, so the folder can move).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError
from .base import VQA_SUFFIX, Converter, conversation, human_turn, most_common_answer, \
    write_dataset_folder

__all__ = ["PARQUET_READERS", "is_parquet_source", "convert_parquet", "parquet_splits"]

_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")


@dataclass(frozen=True)
class _Reader:
    release: str
    columns: tuple[str, ...]  # required columns besides ``image``
    splits: dict[str, str]  # source split -> output split (POPE: "*" = split by category)
    row: Callable[[dict, str, int, int], dict | None]  # (row, out split, row number, seed) -> record or None


def _vqa_row(name: str, suffix: str) -> Callable:
    def build(row: dict, split: str, n: int, seed: int) -> dict | None:
        answers = row["answers"]
        if not answers:
            return None  # test-dev / test rows: answers are private
        answers = [str(a["answer"] if isinstance(a, dict) else a) for a in answers]
        return {"id": f"{name}-{split}-{row['question_id']}",
                "conversations": conversation(human_turn(str(row["question"]).strip(), suffix),
                                              most_common_answer(answers)),
                "references": answers}
    return build


def _sqa_row(row: dict, split: str, n: int, seed: int) -> dict | None:
    from .scienceqa import LETTERS, sqa_prompt

    choices = [str(c) for c in row["choices"]]
    letter = LETTERS[int(row["answer"])]
    return {"id": f"scienceqa-{split}-{n}",
            "conversations": conversation(sqa_prompt(row["question"], choices, row.get("hint") or ""), letter),
            "references": [letter], "choices": choices}


def _pope_row(row: dict, split: str, n: int, seed: int) -> dict | None:
    label = str(row["answer"]).strip().lower()
    if label not in ("yes", "no"):
        raise DataError(f"POPE row {n} has 'answer' {row['answer']!r}, expected 'yes' or 'no'")
    return {"id": f"pope-{split}-{row['question_id']}",
            "conversations": conversation(human_turn(str(row["question"]).strip(), VQA_SUFFIX), label),
            "references": [label], "label": label}


def _flickr_row(row: dict, split: str, n: int, seed: int) -> dict | None:
    from .flickr30k import CAPTION_PROMPTS

    captions = [str(c).strip() for c in row["caption"]]
    rid = f"flickr30k-{split}-{Path(str(row['filename'])).stem}"
    rng = random.Random(f"{seed}/{rid}")  # the JSON converter's per-record draw: same prompt and caption
    prompt = rng.choice(CAPTION_PROMPTS)
    return {"id": rid, "conversations": conversation(human_turn(prompt), rng.choice(captions)), "references": captions}


def _vizwiz_suffix() -> str:
    from .vizwiz import VIZWIZ_SUFFIX

    return VIZWIZ_SUFFIX


PARQUET_READERS: dict[str, _Reader] = {
    "vqav2": _Reader("lmms-lab/VQAv2", ("question_id", "question", "answers"), {"validation": "test"},
                     _vqa_row("vqav2", VQA_SUFFIX)),
    "okvqa": _Reader("lmms-lab/OK-VQA", ("question_id", "question", "answers"), {"val2014": "test"},
                     _vqa_row("okvqa", VQA_SUFFIX)),
    "vizwiz": _Reader("lmms-lab/VizWiz-VQA", ("question_id", "question", "answers"), {"val": "test"},
                      _vqa_row("vizwiz", _vizwiz_suffix())),
    "scienceqa": _Reader("lmms-lab/ScienceQA (ScienceQA-IMG)", ("question", "choices", "answer", "hint"),
                         {"train": "train", "test": "test"}, _sqa_row),
    "pope": _Reader("lmms-lab/POPE", ("question_id", "question", "answer"),
                    {"test": "*", "random": "random", "popular": "popular", "adversarial": "adversarial"}, _pope_row),
    "flickr30k": _Reader("lmms-lab/flickr30k", ("filename", "caption"), {"test": "test"}, _flickr_row),
}


def _parquet_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src] if src.suffix == ".parquet" else []
    if not src.is_dir():
        return []
    return sorted({p for pattern in ("*.parquet", "*/*.parquet", "*/*/*.parquet") for p in src.glob(pattern)})


def is_parquet_source(src: Path) -> bool:
    """True for ``hf:<id>``, a ``.parquet`` file, or a folder with parquet files up to three levels down."""
    return str(src).startswith("hf:") or bool(_parquet_files(src))


def _split_of(path: Path) -> str:
    m = _SHARD.match(path.name)
    if m:
        return m["split"]
    return path.parent.name if re.fullmatch(r"\d+", path.stem) else path.stem


class _Table:
    """Rows of one split from local parquet files or a ``datasets`` split; images are read on demand."""

    def __init__(self, label: str, rows: list[dict], images: Callable[[list[int]], dict[int, Any]]):
        self.label, self.rows, self.images = label, rows, images


def _local_tables(files: list[Path]) -> dict[str, list[_Table]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is in requirements.txt
        raise DataError("reading parquet files needs pyarrow (pip install -r requirements.txt)") from None
    out: dict[str, list[_Table]] = {}
    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable parquet file ({err})") from None
        names = pf.schema_arrow.names
        rows = pf.read(columns=[c for c in names if c != "image"]).to_pylist()
        # which rows have an image, without reading the bytes (the struct's path field; null struct = no image)
        present = pf.read(columns=["image.path"]).column(0).is_valid().to_pylist() if "image" in names else None
        for n, row in enumerate(rows):
            row["_has_image_column"] = present is not None
            row["_image"] = bool(present and present[n])

        def images(wanted: list[int], pf=pf, names=names) -> dict[int, Any]:
            if "image" not in names:
                return {}
            got, start = {}, 0
            for group in range(pf.num_row_groups):  # only the row groups that hold a wanted row are read
                count = pf.metadata.row_group(group).num_rows
                inside = [n for n in wanted if start <= n < start + count]
                if inside:
                    column = pf.read_row_group(group, columns=["image"]).column(0)
                    got.update({n: column[n - start].as_py() for n in inside})
                start += count
            return got

        out.setdefault(_split_of(path), []).append(_Table(str(path), rows, images))
    return out


def _hub_tables(spec: str) -> dict[str, list[_Table]]:
    ident, _, config = spec[3:].partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(f"--src {spec}: reading a dataset id needs the `datasets` library (pip install "
                        "datasets==5.2.0), or download its parquet files and pass their folder") from None
    loaded = datasets.load_dataset(ident, config or None)
    out: dict[str, list[_Table]] = {}
    for split, ds in loaded.items():
        has_image = "image" in ds.column_names
        rows = ds.remove_columns(["image"]).to_list() if has_image else ds.to_list()
        raw = ds.cast_column("image", datasets.Image(decode=False)) if has_image else None
        present = [value is not None for value in raw["image"]] if has_image else []
        for n, row in enumerate(rows):
            row["_has_image_column"], row["_image"] = has_image, bool(has_image and present[n])

        def images(wanted: list[int], raw=raw) -> dict[int, Any]:
            return {} if raw is None else {i: raw[i]["image"] for i in wanted}

        out[split] = [_Table(f"{spec} split {split}", rows, images)]
    return out


def parquet_splits(src: Path) -> dict[str, list[_Table]]:
    """The source's tables grouped by split name (see the module docstring for how splits are named)."""
    if str(src).startswith("hf:"):
        return _hub_tables(str(src))
    files = _parquet_files(src)
    if not files:
        raise FileNotFoundError(f"no parquet files in {src}")
    return _local_tables(files)


def _image_suffix(value: dict) -> str:
    data, path = value.get("bytes") or b"", value.get("path") or ""
    for magic, ext in ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
                       (b"RIFF", ".webp")):
        if data.startswith(magic):
            return ext
    return Path(path).suffix or ".img"


def convert_parquet(conv: Converter, src: Path, out: Path, *, train_size: int | None = None,
                    test_size: int | None = None, seed: int = 0) -> dict:
    """Convert a Hugging Face parquet release (see the module docstring); called by :func:`convert`.

    Raises:
        ValueError: no reader for this dataset, missing columns, no usable split, or a row without image bytes.
    """
    reader = PARQUET_READERS.get(conv.name)
    if reader is None:
        raise ConfigError(f"{conv.name}: no Hugging Face parquet reader (readers: {', '.join(sorted(PARQUET_READERS))})"
                          f"; convert the {conv.source_format} instead")
    tables = parquet_splits(src)
    found = sorted(tables)
    items: dict[str, list[tuple[dict, _Table, int]]] = {}
    for source_split, split_tables in tables.items():
        target = reader.splits.get(source_split)
        if target is None:
            continue
        for table in split_tables:
            for n, row in enumerate(table.rows):
                missing = [c for c in reader.columns if c not in row]
                if missing:
                    raise DataError(f"{table.label}: column {missing[0]!r} is missing; expected the {reader.release} "
                                    f"schema ({', '.join(reader.columns)}, image)")
                if not row["_has_image_column"]:
                    raise DataError(f"{table.label}: column 'image' is missing; expected the {reader.release} schema")
                if not row["_image"]:
                    if conv.name == "scienceqa":  # text-only question: not part of SQA (img), as the JSON converter
                        continue
                    raise DataError(f"{table.label}: row {n} has no image")
                split = target
                if target == "*":
                    split = str(row.get("category") or "").strip().lower()
                    if split not in ("random", "popular", "adversarial"):
                        raise DataError(f"{table.label}: row {n} has 'category' {row.get('category')!r}, expected "
                                        "random, popular or adversarial")
                record = reader.row(row, split, len(items.get(split, [])), seed)
                if record is not None:
                    items.setdefault(split, []).append((record, table, n))
    if not items:
        raise DataError(f"{conv.name}: {src} has no split this reader uses (found: {', '.join(found) or 'none'}; "
                        f"uses: {', '.join(reader.splits)} of {reader.release})")
    if train_size is not None and "train" not in items:
        raise ConfigError(f"{conv.name}: {src} has no train split (found: {', '.join(found)}); leave train_size unset")
    selected: dict[str, list[tuple[dict, _Table, int]]] = {}
    for split, rows in items.items():
        size = train_size if split == "train" else test_size
        if size is None:
            size = conv.default_sizes.get(split)
        order = list(range(len(rows)))
        if size is not None and size < len(rows):
            random.Random(f"{conv.name}/{split}/{seed}").shuffle(order)
            order = sorted(order[:size])
        selected[split] = [rows[i] for i in order]
    images_needed: dict[int, tuple[_Table, dict[int, tuple[str, dict]]]] = {}
    for split, rows in selected.items():
        for record, table, n in rows:
            images_needed.setdefault(id(table), (table, {}))[1][n] = (split, record)
    records = {split: [r for r, _, _ in rows] for split, rows in selected.items()}

    def fill(tmp: Path) -> None:
        for table, wanted in images_needed.values():
            values = table.images(sorted(wanted))
            for n, (split, record) in wanted.items():
                value = values.get(n)
                if not isinstance(value, dict) or not value.get("bytes"):
                    raise DataError(f"{table.label}: row {n} (id {record['id']}) has no image bytes")
                safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(record["id"]))
                rel = f"{split}/{safe}{_image_suffix(value)}"
                (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
                (tmp / "images" / rel).write_bytes(value["bytes"])
                rest = dict(record)
                record.clear()  # ``image`` right after ``id``, as the JSON converters write it
                record.update({"id": rest.pop("id"), "image": rel, **rest})

    order = [s for s in conv.splits if s in records] + sorted(s for s in records if s not in conv.splits)
    meta = {"name": conv.name, "family": conv.family, "metric": conv.metric, "group": conv.group,
            "max_new_tokens": conv.max_new_tokens, "image_folder": "images",
            "splits": {s: len(records[s]) for s in order},
            "source": f"{reader.release} parquet at {src if str(src).startswith('hf:') else src.resolve()} "
                      f"(seed {seed})"}
    write_dataset_folder(out, {s: records[s] for s in order}, meta, fill)
    return meta
