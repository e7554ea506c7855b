"""Converters from the paper's public dataset releases to dataset folders (docs/data_format.md).

Usage: ``python -c "from mllm_study.converters import convert; convert('vqav2', 'raw/vqa', 'datasets/vqav2')"``
(the CLI's ``mllm-study data convert NAME --src DIR --out DIR`` calls :func:`convert`).

One module per release, each registering its converter(s) with :func:`register_converter` (every module of this
package is imported here, so a new release is one new file):

==============  ==============================  ===========  ========  =================================
converter       module                          metric       group     splits (default sizes)
==============  ==============================  ===========  ========  =================================
scienceqa       :mod:`.scienceqa`               mc_accuracy  unseen    train / test, image items only
vizwiz          :mod:`.vizwiz`                  vqa_score    unseen    train / test = official val
iconqa_txt      :mod:`.iconqa`                  accuracy     unseen    train / test
iconqa_blank    :mod:`.iconqa`                  accuracy     unseen    train / test
flickr30k       :mod:`.flickr30k`               cider        unseen    Karpathy train / test
okvqa           :mod:`.vqa`                     vqa_score    seen      train / test = val2014
ocrvqa          :mod:`.ocrvqa`                  accuracy     seen      train / test (20k / 5k)
vqav2           :mod:`.vqa`                     vqa_score    seen      train / test = val2014 (20k / 5k)
pope            :mod:`.pope`                    pope         probe     random / popular / adversarial
==============  ==============================  ===========  ========  =================================

Every converter reads the annotation files, never copies images (``dataset.json`` ``image_folder`` is the absolute
source image folder), skips with a warning the records whose image file is missing, and fails with
FileNotFoundError (missing source file, named with the expected format) or ValueError (malformed file, named with the
key). Each module's docstring states its exact prompt and its choices.
"""

import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):  # each converter module registers itself: adding a release is a file
    _importlib.import_module(f"{__name__}.{_module.name}")

from .base import CONVERTERS, Converter, Item, convert, get_converter, list_converters, register_converter  # noqa: E402

__all__ = ["CONVERTERS", "Converter", "Item", "convert", "get_converter", "list_converters", "register_converter"]
