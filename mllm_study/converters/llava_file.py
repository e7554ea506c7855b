"""LLaVA conversation files (JSON or JSON lines) -> a cached dataset folder, so ``run --data FILE`` needs no setup.

Usage: ``folder = conversation_dataset("llava_v1_5_mix665k.json", image_folder="data", cache=".cache")``

The records are read by :func:`mllm_study.data.load_conversation_file` (LLaVA's handling of gpt-first turns,
``user``/``assistant`` roles, duplicate ids and text-only records). The folder is
``<cache>/data/<file stem>-<hash>/`` with ``train.json``, ``test.json`` and ``dataset.json`` (metric ``accuracy``
against the last gpt turn, ``image_folder`` the absolute image folder); the hash covers the files' bytes and the
image folder, so an edited file gets a new folder (and new run ids) and an unchanged one is reused as it is.
Without a test file, the test split is the last ``val_size(n)`` records of the file (at most 200, a fifth at most),
which are then not trained on.
"""

from __future__ import annotations

from pathlib import Path

from ..config import CONVERSATION_READER_VERSION, conversation_folder
from .base import write_dataset_folder

__all__ = ["conversation_dataset", "READER_VERSION"]

READER_VERSION = CONVERSATION_READER_VERSION  # bumped in config.py, which names the folder


def conversation_dataset(data_file: str | Path, image_folder: str | Path | None = None,
                         test_file: str | Path | None = None, cache: str | Path = ".cache") -> Path:
    """The dataset folder for a LLaVA conversation file (built on first use, then reused).

    Args:
        data_file: the training conversations (JSON list or JSON lines).
        image_folder: folder the records' ``image`` paths are relative to (default: the file's folder).
        test_file: conversations to score on; default: the last records of ``data_file`` (see the module docstring).
        cache: cache root; the folder is ``<cache>/data/<stem>-<hash>``.

    Returns:
        The dataset folder (``dataset.json`` + ``train.json`` + ``test.json``).

    Raises:
        DataError: a file or record is malformed, or an image is missing (the message names file and record).
    """
    from ..data import DataError, load_conversation_file, val_size

    out = conversation_folder(data_file, image_folder, test_file, cache)  # DataError for a missing file
    data_file = Path(data_file).expanduser()
    folder = Path(image_folder).expanduser().resolve() if image_folder is not None else data_file.parent.resolve()
    paths = [data_file] + ([Path(test_file).expanduser()] if test_file is not None else [])
    if (out / "dataset.json").is_file():
        return out
    train = load_conversation_file(data_file, folder)
    if test_file is not None:
        test = load_conversation_file(paths[1], folder)
        clash = {r["id"] for r in train} & {r["id"] for r in test}
        if clash:
            raise DataError(f"{paths[1]}: {len(clash)} id(s) also in {data_file} (e.g. {sorted(clash)[0]!r}); "
                            "train and test records need distinct ids")
    else:
        if len(train) < 2:
            raise DataError(f"{data_file}: {len(train)} record; a test split needs at least 2 (or pass a test file)")
        n_test = val_size(len(train))
        train, test = train[:-n_test], train[-n_test:]
    meta = {"name": data_file.stem, "family": "custom", "metric": "accuracy", "group": "custom",
            "max_new_tokens": 64, "image_folder": str(folder), "splits": {"train": len(train), "test": len(test)},
            "source": f"LLaVA conversation file {data_file.resolve()}"
                      + (f" + {paths[1].resolve()}" if test_file is not None else " (test = its last records)")}
    write_dataset_folder(out, {"train": train, "test": test}, meta)
    return out
