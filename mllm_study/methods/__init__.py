"""PEFT method registry: one file per method, each registered with :func:`register_method`.

Usage: ``model = apply_method(model, "lora", {"r": 16}, placement="both", connector="tuned")``;
``save_method(model, dir)``; ``model = load_method(fresh_base_model, dir)``

Methods: ``lora``, ``ia3``, ``prefix``, ``adapter`` (bottleneck, plain PyTorch), ``full`` (LM only), ``none``, and
``peft:<tuner>`` for any other peft tuner (DoRA = ``peft:lora`` with ``use_dora: true``, ``peft:vera``,
``peft:loha``, ...). Placements resolve through per-architecture module maps (placement.py).

Every module of this package is imported here (each method module registers itself), so adding a method is adding
its file: nothing here or anywhere else lists the methods.
"""

import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):  # each method module registers itself
    _importlib.import_module(f"{__name__}.{_module.name}")

from .adapter import AdapterSettings, merge_and_unload, unload_adapters  # noqa: E402
from .passthrough import list_tuners  # noqa: E402
from .placement import (MODULE_MAPS, PLACEMENTS, ModuleMap, connector_param_names, get_module_map,  # noqa: E402
                        is_connector_param, register_module_map, resolve_targets)
from .registry import (CONNECTOR_MODULE, METHODS, VISION_FILE, Method, apply_method, get_method,  # noqa: E402
                       list_methods, lm_target_regex, load_method, register_method, save_method, unregister_method,
                       vision_param_names)

__all__ = ["METHODS", "Method", "apply_method", "get_method", "list_methods", "register_method", "save_method",
           "load_method", "unregister_method", "lm_target_regex", "CONNECTOR_MODULE", "connector_param_names",
           "is_connector_param", "get_module_map", "resolve_targets", "register_module_map", "ModuleMap",
           "MODULE_MAPS", "PLACEMENTS", "AdapterSettings", "unload_adapters", "merge_and_unload", "list_tuners",
           "VISION_FILE", "vision_param_names"]
