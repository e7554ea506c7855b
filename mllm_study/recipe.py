"""The tiny model's recipe key and cache folder, without importing the model code: what the report side (validity,
evidence) needs to find the base model a study used.

Usage: ``folder = tiny_llava_dir(params, world_dir)`` (``<cache>/models/tiny-llava-<key>``)

The key hashes the pre-training config, the content digests of every world file pre-training reads, the code of the
modules that decide the weights (``RECIPE_MODULES``), ``RECIPE_VERSION`` and the torch and transformers versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from .config import Params, PretrainConfig
from .errors import DataError

__all__ = ["TINY_MODEL", "RECIPE_VERSION", "RECIPE_MODULES", "SEEN_FAMILIES", "VOCABULARY_FILE", "recipe_code_digest",
           "pretrain_inputs", "recipe_key", "tiny_llava_dir"]

TINY_MODEL = "tiny-llava"
RECIPE_VERSION = "2"  # bump when the pre-training code changes what it produces (the key also hashes the code)
SEEN_FAMILIES = ("okvqa", "ocrvqa", "vqav2")
#: the modules whose code decides the pre-trained weights (with the world's own package): hashed into the recipe key
RECIPE_MODULES = ("models.py", "train.py", "data.py")
#: The word-level vocabulary of the embedded world, in id order (committed; measured from the quick world, seed 0).
#: The tiny model's tokenizer is built from it, not from the generated text, so that an unseen family's generator can
#: change (its prompts, its answer formats) without moving the pre-trained weights; a word outside it is a test failure
#: (tests/test_world.py), and adding one changes the embedding matrix, i.e. the base model.
VOCABULARY_FILE = Path(__file__).parent / "world" / "vocabulary.json"


def recipe_code_digest() -> str:
    """SHA-256 over the source of every module whose code decides the pre-trained weights (RECIPE_MODULES); the
    world's code enters through the data it generated (:func:`pretrain_inputs`)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for f in [root / m for m in RECIPE_MODULES]:
        digest.update(f"{f.relative_to(root)}\n".encode() + f.read_bytes())
    return digest.hexdigest()


def pretrain_inputs(cfg: PretrainConfig, world_dir: Path) -> dict[str, str]:
    """Content digests of every world file a pre-training reads: the ``pretrain`` split (records and images) of the
    alignment and seen families (and their ``formats`` split when stage 3 trains), and the vocabulary (the
    committed file, or with ``case_sensitive`` the whole world, whose text then trains the tokenizer). Unseen
    families do not enter: they can change without moving the base model."""
    manifest = json.loads((world_dir / "manifest.json").read_text())
    splits = manifest.get("split_fingerprints") or {}
    out = {}
    names = ("pretrain", "formats") if cfg.format_steps > 0 else ("pretrain",)
    for family in ("align", *SEEN_FAMILIES):
        for split in names:
            key = f"{family}/{split}"
            if key not in splits:
                raise DataError(f"{world_dir}/manifest.json: no fingerprint of {key} (a world from older code: "
                                f"delete {world_dir} and it is regenerated)")
            out[key] = splits[key]
    out["vocabulary"] = manifest["fingerprint"] if cfg.case_sensitive else \
        hashlib.sha256(VOCABULARY_FILE.read_bytes()).hexdigest()
    return out


def _version(package: str) -> str:
    """``package.__version__`` without importing it (a report finds its base model without loading torch, 2 s):
    the installed distribution's version, the same string for torch ("2.13.0+cpu") and transformers."""
    from importlib import import_module, metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # not installed as a distribution (a source checkout on sys.path)
        return import_module(package).__version__


def recipe_key(cfg: PretrainConfig, world_dir: Path) -> str:
    """12 hex digits of SHA-256 over everything that decides the pre-trained weights (module docstring)."""
    recipe = {"pretrain": dataclasses.asdict(cfg), "inputs": pretrain_inputs(cfg, world_dir),
              "recipe_version": RECIPE_VERSION, "code": recipe_code_digest(),
              "versions": [_version("torch"), _version("transformers")]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def tiny_llava_dir(params: Params, world_dir: Path) -> Path:
    """Cache folder of the pre-trained tiny model for this recipe and world."""
    return Path(params.paths.cache) / "models" / f"{TINY_MODEL}-{recipe_key(params.pretrain, world_dir)}"
