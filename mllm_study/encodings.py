"""The encoding caches behind :class:`mllm_study.data.Collator`: records are encoded once per processor and reused.

Usage: ``set_encoding_cache(".cache/encodings")`` (or ``MLLM_STUDY_ENCODING_CACHE=<dir>``); ``clear_encoding_cache()``

- in memory, per process: encodings shared by every collator with the same :func:`processor_fingerprint`, mode
  and blank-image setting, least recently used dropped beyond ``MLLM_STUDY_ENCODING_CACHE_MB`` (default 2048);
- on disk, optional: one safetensors shard per fingerprint, mode and dataset, written atomically; a damaged or
  foreign file is a cache miss.
A record's key covers its dataset, id, turns, image path and the image file's size and modification time.

The parts :class:`~mllm_study.data.Collator` builds on: :data:`SHARED` and :func:`share` (memory), :func:`record_key`,
:func:`disk_dir`, :func:`disk_shard`, :func:`read_shard`, :func:`write_shard` and :func:`disk_key` (disk).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["processor_fingerprint", "set_encoding_cache", "clear_encoding_cache", "SHARED", "share", "record_key",
           "disk_dir", "disk_shard", "read_shard", "write_shard", "disk_key"]


_FINGERPRINTS: dict[int, tuple[Any, str]] = {}  # id(processor) -> (weak reference, fingerprint)
SHARED: OrderedDict = OrderedDict()  # (fingerprint, mode, blank, record key) -> encoding, least recent first
_SHARED_BYTES = [0]
_DISK_DIR: list[str | None] = [None]  # set_encoding_cache; None = the MLLM_STUDY_ENCODING_CACHE variable


def _code_digest() -> str:
    """The code that turns records into tensors: data.py (templates, labels) and this module."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in ("data.py", "encodings.py"))).hexdigest()[:16]


def processor_fingerprint(processor: Any) -> str:
    """A digest of everything that determines a processor's output: its class and configuration (image processor
    included), chat templates, the tokenizer (vocabulary, normalisation, special and added tokens), the encoding
    code and the transformers version. Memoised per processor object: build a new processor rather than mutate one
    that has already encoded records.
    """
    memo = _FINGERPRINTS.get(id(processor))
    if memo is not None and memo[0]() is processor:
        return memo[1]
    import transformers

    tok = getattr(processor, "tokenizer", processor)
    parts = [type(processor).__qualname__, type(tok).__qualname__, transformers.__version__, _code_digest(),
             str(getattr(processor, "chat_template", None)), str(getattr(tok, "chat_template", None))]
    to_json = getattr(processor, "to_json_string", None)
    if callable(to_json) and processor is not tok:
        try:
            parts.append(to_json())
        except Exception:  # noqa: BLE001 - a processor that cannot serialise itself: fall back to its attributes
            parts.append(repr(sorted(vars(processor).items(), key=lambda kv: kv[0])))
    backend = getattr(tok, "backend_tokenizer", None)
    parts.append(backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items())))
    parts.append(repr(sorted((k, str(v)) for k, v in getattr(tok, "added_tokens_decoder", {}).items())))
    parts.append(repr(sorted((str(k), str(v)) for k, v in getattr(tok, "special_tokens_map", {}).items())))
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "model_max_length", "truncation_side"):
        parts.append(f"{attr}={getattr(tok, attr, None)}")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    try:
        _FINGERPRINTS[id(processor)] = (weakref.ref(processor), digest)
    except TypeError:  # not weak-referenceable: recompute next time
        pass
    return digest


def set_encoding_cache(directory: str | Path | None) -> None:
    """Keep encodings on disk under ``directory`` (None: back to ``MLLM_STUDY_ENCODING_CACHE``, unset = off)."""
    _DISK_DIR[0] = str(directory) if directory is not None else None


def disk_dir() -> Path | None:
    """The encoding cache directory: :func:`set_encoding_cache`'s, else ``MLLM_STUDY_ENCODING_CACHE``; None: off."""
    directory = _DISK_DIR[0] or os.environ.get("MLLM_STUDY_ENCODING_CACHE") or None
    return Path(directory) if directory else None


def clear_encoding_cache() -> None:
    """Forget the process-wide encodings (collators keep their own until they are dropped)."""
    SHARED.clear()
    _SHARED_BYTES[0] = 0


def _memory_limit() -> int:
    return int(float(os.environ.get("MLLM_STUDY_ENCODING_CACHE_MB", "2048")) * 2**20)


def _nbytes(encoding: dict[str, torch.Tensor]) -> int:
    return sum(t.element_size() * t.nelement() for t in encoding.values())


def share(key: tuple, encoding: dict[str, torch.Tensor]) -> None:
    """Put ``encoding`` in :data:`SHARED` under ``key`` (most recent), dropping the oldest beyond the memory limit."""
    if key in SHARED:
        SHARED.move_to_end(key)
        return
    SHARED[key] = encoding
    _SHARED_BYTES[0] += _nbytes(encoding)
    limit = _memory_limit()
    while _SHARED_BYTES[0] > limit and len(SHARED) > 1:
        _, old = SHARED.popitem(last=False)
        _SHARED_BYTES[0] -= _nbytes(old)


def record_key(record: dict) -> tuple:
    """What a record's encoding depends on: dataset, id, turns, image path and the image file's size and mtime."""
    path = record.get("image_path")
    stat = None
    if path:
        try:
            st = os.stat(path)
            stat = (st.st_size, st.st_mtime_ns)
        except OSError:
            stat = None
    return (record.get("dataset"), record["id"], path, stat, bool(record.get("image")),
            tuple((t["from"], t["value"]) for t in record["conversations"]))


def disk_shard(directory: Path, scope: tuple, dataset: Any, records: list[dict]) -> Path:
    """One file per processor/mode/images setting and dataset (name + image folder), e.g. a world family's split."""
    folders = sorted({os.path.dirname(r["image_path"]) for r in records if r.get("image_path")})
    root = os.path.commonpath(folders) if folders else ""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(dataset))[:60]
    where = hashlib.sha256(root.encode()).hexdigest()[:10]
    fingerprint, mode, blank = scope
    return directory / f"{fingerprint}-{mode}{'-blank' if blank else ''}" / f"{name}-{where}.safetensors"


_SHARD_FORMAT = "mllm_study.encodings.v1"


def read_shard(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A shard: per tensor name and dtype one flat tensor of every record's values, and an index (record key ->
    [(name, group, shape), ...]) in the metadata; records get views of the flat tensors (read-only by contract).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _SHARD_FORMAT:
                return {}
            index = json.loads(meta["index"])
            flat = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        return {}
    except Exception:  # noqa: BLE001 - a damaged or foreign file is a cache miss, rewritten later
        return {}
    offsets = dict.fromkeys(flat, 0)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for record_key, tensors in index:
        entry = {}
        for name, group, shape in tensors:
            count = math.prod(shape)
            entry[name] = flat[group][offsets[group]:offsets[group] + count].view(shape)
            offsets[group] += count
        out[record_key] = entry
    return out


def write_shard(path: Path, data: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write ``data`` (disk key -> encoding) as a shard :func:`read_shard` reads, replacing ``path`` atomically."""
    from safetensors.torch import save_file

    groups: dict[str, list[torch.Tensor]] = {}
    index = []
    for record_key, entry in data.items():
        tensors = []
        for name, tensor in entry.items():
            group = f"{name}|{str(tensor.dtype).removeprefix('torch.')}"
            groups.setdefault(group, []).append(tensor.reshape(-1))
            tensors.append([name, group, list(tensor.shape)])
        index.append([record_key, tensors])
    flat = {group: torch.cat(parts).contiguous() for group, parts in groups.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(flat, str(tmp), metadata={"format": _SHARD_FORMAT, "index": json.dumps(index)})
    os.replace(tmp, path)  # atomic: concurrent writers lose entries (re-encoded later), never corrupt a file


def disk_key(key: tuple) -> str:
    """A shard's index key for a record key (with its scope): a hex digest of its repr."""
    return hashlib.sha256(repr(key).encode()).hexdigest()[:32]
