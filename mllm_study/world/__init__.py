"""The embedded synthetic image world: 32x32 scenes, eight task families mirroring the paper's columns, POPE probes.

Usage: ``from mllm_study.world import generate_world; manifest = generate_world("data/world", profile="smoke")``

Modules: ``scenes`` (scene graphs, sampling, rendering), ``font`` (built-in bitmap font), ``language`` (synonyms,
knowledge base, answer variation, captions), ``tasks`` (the families), ``pope`` (hallucination probes), ``writer``
(dataset folders on disk).
"""

from .language import (
    ALIGN_PROMPTS, CAPTION_PROMPTS, COLOR_VARIANTS, KNOWLEDGE_BASE, NUMBER_WORDS, OBJECT_SYNONYMS, POSITION_VARIANTS,
    caption_set, describe_scene, object_name,
)
from .pope import STRATEGIES as POPE_STRATEGIES
from .pope import build_pope_item, object_statistics
from .scenes import (
    COLOR_RGB, COLORS, IMAGE_SIZE, NUMBERS, OBJECT_TYPES, POPULAR_OBJECTS, POSITIONS, SHAPES, THEMES, WORDS,
    item_rng, render_scene, sample_degradation, sample_scene,
)
from .tasks import ALIGN, FAMILIES, FAMILY_ORDER, POPE, FamilyInfo, build_item, family_info
from .writer import GENERATOR_VERSION, PROFILES, ensure_world, generate_world, load_manifest, split_sizes

__all__ = [
    # world generation
    "generate_world", "ensure_world", "load_manifest", "split_sizes", "PROFILES", "GENERATOR_VERSION",
    # families
    "FamilyInfo", "FAMILIES", "ALIGN", "POPE", "FAMILY_ORDER", "family_info", "build_item",
    # scenes
    "sample_scene", "sample_degradation", "render_scene", "item_rng", "SHAPES", "COLORS", "COLOR_RGB", "POSITIONS",
    "IMAGE_SIZE", "WORDS", "NUMBERS", "OBJECT_TYPES", "POPULAR_OBJECTS", "THEMES",
    # language
    "OBJECT_SYNONYMS", "KNOWLEDGE_BASE", "COLOR_VARIANTS", "POSITION_VARIANTS", "NUMBER_WORDS", "CAPTION_PROMPTS",
    "ALIGN_PROMPTS", "describe_scene", "caption_set", "object_name",
    # POPE
    "POPE_STRATEGIES", "build_pope_item", "object_statistics",
]
