"""mllm-study: parameter-efficient fine-tuning of multimodal LLMs, measured.

Usage: ``mllm-study --help``
"""

__version__ = "0.1.0"
