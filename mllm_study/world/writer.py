"""Write the synthetic world to disk as dataset folders (docs/data_format.md), atomically and idempotently.

Usage: ``manifest = generate_world("data/world", profile="quick", seed=0)``

Layout: ``OUT/manifest.json`` and one folder per family ``OUT/<family>/`` holding ``dataset.json``,
``<split>.json`` (a JSON list, one record per line) and ``images/<split>/<index:06d>.png``.

Items are built (scene, record, PNG) in chunks by ``workers`` processes (default: every core, for worlds of at least
``PARALLEL_MIN_ITEMS`` items) and written by this one in the fixed order, so the files are byte-identical whatever
the number of workers (every item depends only on its family, seed, split and index).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from .tasks import FAMILY_ORDER, FORMATS_SPLIT, build_item, family_info

__all__ = ["GENERATOR_VERSION", "PROFILES", "split_sizes", "generate_world", "ensure_world", "load_manifest"]

#: Bump whenever generated content changes: cached worlds (and models pre-trained on them) are keyed by it.
GENERATOR_VERSION = "synthetic-world v4"  # v2: balanced answers, stage-2 formats; v3: the ``formats`` split;
#: v4: the formats split's existence questions 30% "yes"

#: Records per split and profile. ``pretrain`` and ``formats``: align and the three seen families only; ``pope``: per
#: strategy.
PROFILES: dict[str, dict[str, int]] = {
    "smoke": {"align_pretrain": 256, "seen_pretrain": 128, "train": 64, "test": 32, "pope": 30, "formats": 32},
    "quick": {"align_pretrain": 6000, "seen_pretrain": 4000, "train": 1000, "test": 200, "pope": 300, "formats": 1000},
    "full": {"align_pretrain": 20000, "seen_pretrain": 10000, "train": 5000, "test": 500, "pope": 1000,
             "formats": 2500},
}


def split_sizes(family: str, profile: str) -> dict[str, int]:
    """Number of records of each split of ``family`` under ``profile``.

    Args:
        family: one of ``FAMILY_ORDER``.
        profile: one of ``PROFILES``.

    Returns:
        ``{split: n}`` in the family's split order.
    """
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    sizes, info = PROFILES[profile], family_info(family)
    out = {}
    for split in info.splits:
        if family == "pope":
            out[split] = sizes["pope"]
        elif split == FORMATS_SPLIT:
            out[split] = sizes["formats"]
        elif split == "pretrain":
            out[split] = sizes["align_pretrain" if family == "align" else "seen_pretrain"]
        else:
            out[split] = sizes[split]
    return out


def load_manifest(out_dir: str | os.PathLike) -> dict | None:
    """The manifest of a generated world, or None if ``out_dir`` holds none (or an unreadable one)."""
    path = Path(out_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _resolve_families(families) -> list[str]:
    if families is None:
        return list(FAMILY_ORDER)
    unknown = [f for f in families if f not in FAMILY_ORDER]
    if unknown:
        raise KeyError(f"unknown families {unknown}; available: {', '.join(FAMILY_ORDER)}")
    return [f for f in FAMILY_ORDER if f in set(families)]  # canonical order, no duplicates


def world_code_digest() -> str:
    """SHA-256 of the world package's source: a cached world made by other code is regenerated."""
    digest = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(f.name.encode() + b"\n" + f.read_bytes())
    return digest.hexdigest()[:16]


def _matches(manifest: dict | None, profile: str, seed: int, families: list[str]) -> bool:
    return bool(manifest) and manifest.get("generator") == GENERATOR_VERSION and manifest.get("profile") == profile \
        and manifest.get("seed") == seed and set(families) <= set(manifest.get("families", {})) \
        and manifest.get("code") == world_code_digest()


#: worlds smaller than this are built in this process (spawning workers costs about a second)
PARALLEL_MIN_ITEMS = 5000
_CHUNK = 250


def _build_chunk(task: tuple[str, int, str, int, int]) -> list[tuple[dict, bytes]]:
    """``(record, PNG bytes)`` of items ``start..stop-1`` of one family split (a worker's unit of work)."""
    family, seed, split, start, stop = task
    out = []
    for i in range(start, stop):
        record, image = build_item(family, seed, split, i)
        buf = io.BytesIO()
        image.save(buf, format="PNG")  # Pillow writes no timestamp: identical bytes for identical pixels
        out.append((record, buf.getvalue()))
    return out


def _main_importable() -> bool:
    """Whether spawned workers can re-import the main module (not so for ``python - < script``)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.isfile(path)


def _chunks(plan: dict[str, dict[str, int]], seed: int, workers: int):
    """Every ``(family, split, [(record, png), ...])`` chunk of ``plan`` in order, built by ``workers`` processes."""
    tasks = [(family, seed, split, start, min(n, start + _CHUNK))
             for family, sizes in plan.items() for split, n in sizes.items() for start in range(0, n, _CHUNK)]
    done = 0
    if workers > 1:
        try:
            with concurrent.futures.ProcessPoolExecutor(workers,
                                                        mp_context=multiprocessing.get_context("spawn")) as pool:
                for task, items in zip(tasks, pool.map(_build_chunk, tasks)):
                    yield task[0], task[2], items
                    done += 1
            return
        except concurrent.futures.process.BrokenProcessPool:
            # the workers could not start: a main module that cannot be re-imported (python - < script, a script
            # without an ``if __name__ == "__main__":`` guard). The items do not depend on who builds them: go on here.
            pass
    for task in tasks[done:]:
        yield task[0], task[2], _build_chunk(task)


def _dumps_records(records: list[dict]) -> str:
    # One record per line: valid JSON, small, and readable with grep/head.
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"


def _write_world(root: Path, profile: str, seed: int, families: list[str], progress: bool,
                 workers: int | None = None) -> dict:
    hashes: dict[str, str] = {}

    split_hashes: dict[str, hashlib._Hash] = {}

    def write(rel: str, data: bytes, split: str | None = None) -> None:
        path = root / rel
        path.write_bytes(data)
        hashes[rel] = hashlib.sha256(data).hexdigest()
        if split is not None:  # what one split's consumers read: its records and images, nothing else
            split_hashes.setdefault(split, hashlib.sha256()).update(f"{rel} {hashes[rel]}\n".encode())

    plan = {f: split_sizes(f, profile) for f in families}
    total = sum(n for sizes in plan.values() for n in sizes.values())
    if workers is None:
        workers = (os.cpu_count() or 1) if total >= PARALLEL_MIN_ITEMS else 1
    if multiprocessing.current_process().daemon or not _main_importable():  # no worker could start here
        workers = 1
    for family, sizes in plan.items():
        for split in sizes:
            (root / family / "images" / split).mkdir(parents=True, exist_ok=True)
    records: dict[tuple[str, str], list[dict]] = {}
    with tqdm(total=total, desc=f"world {profile}/seed{seed}", unit="img", disable=None if progress else True) as bar:
        for family, split, items in _chunks(plan, seed, workers):
            for record, png in items:
                write(f"{family}/images/{record['image']}", png, f"{family}/{split}")
            records.setdefault((family, split), []).extend(record for record, _ in items)
            bar.update(len(items))
    fam_entries = {}
    for family, sizes in plan.items():
        info = family_info(family)
        for split in sizes:
            write(f"{family}/{split}.json", _dumps_records(records.get((family, split), [])).encode(),
                  f"{family}/{split}")
        meta = {
            "name": family, "family": family, "metric": info.metric, "group": info.group,
            "max_new_tokens": info.max_new_tokens, "image_folder": "images", "splits": sizes,
            "source": GENERATOR_VERSION, "column": info.column, "description": info.description,
        }
        write(f"{family}/dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
        fam_entries[family] = {"column": info.column, "metric": info.metric, "group": info.group,
                               "splits": sizes}
    fingerprint = hashlib.sha256("".join(f"{k} {hashes[k]}\n" for k in sorted(hashes)).encode()).hexdigest()
    manifest = {"generator": GENERATOR_VERSION, "code": world_code_digest(), "profile": profile, "seed": seed,
                "families": fam_entries,
                "n_files": len(hashes), "fingerprint": fingerprint,
                "split_fingerprints": {k: h.hexdigest() for k, h in sorted(split_hashes.items())}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def generate_world(
    out_dir: str | os.PathLike,
    profile: str = "quick",
    seed: int = 0,
    families: list[str] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Generate the synthetic world into ``out_dir`` (or return the existing one).

    Idempotent: if ``out_dir/manifest.json`` has the same generator version, profile and seed and covers the
    requested families, nothing is written. Atomic: the world is written into a temporary sibling folder that is
    renamed into place, so a crash never leaves a half-written world behind. A different existing world is replaced;
    a non-empty folder that is not a world is refused.

    Args:
        out_dir: destination folder.
        profile: ``smoke``, ``quick`` or ``full`` (see ``PROFILES``).
        seed: world seed; the same seed gives byte-identical files.
        families: subset of ``FAMILY_ORDER`` (default: all, i.e. align, the 8 families and pope).
        progress: show a tqdm progress bar.
        workers: processes that build the items (default: every core from ``PARALLEL_MIN_ITEMS`` items on, else 1);
            the files do not depend on it.

    Returns:
        The manifest: generator, profile, seed, families (column, metric, group, split sizes), n_files, fingerprint
        (all files) and split_fingerprints (per ``family/split``: its records and images; pre-training keys on those
        it reads).

    Raises:
        KeyError: unknown profile or family.
        FileExistsError: ``out_dir`` is a non-empty folder without a world manifest.
    """
    out, fams, seed = Path(out_dir), _resolve_families(families), int(seed)
    split_sizes(fams[0], profile)  # validates the profile before touching the disk
    existing = load_manifest(out)
    if _matches(existing, profile, seed, fams):
        return existing
    if out.exists() and existing is None and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no world manifest.json; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        manifest = _write_world(tmp, profile, seed, fams, progress, workers)
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}") if out.exists() else None
        if old is not None:
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:  # another process put a world in place meanwhile: keep it if it is the one we want
            if _matches(load_manifest(out), profile, seed, fams):
                return load_manifest(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def ensure_world(params, progress: bool = True) -> Path:
    """Generate (or reuse) the synthetic world of ``params.world`` (profile, seed) under ``params.paths.cache``;
    returns its folder, ``<cache>/world/<profile>-s<seed>``."""
    out = Path(params.paths.cache) / "world" / f"{params.world.profile}-s{params.world.seed}"
    generate_world(out, profile=params.world.profile, seed=params.world.seed, progress=progress)
    return out
