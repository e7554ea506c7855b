"""mllm-study: parameter-efficient fine-tuning of multimodal LLMs, measured.

Usage: ``mllm-study --help``
"""

__version__ = "0.1.0"

import warnings as _warnings

# peft calls a transformers property deprecated in 5.x; the warning is about their code, not the user's.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
