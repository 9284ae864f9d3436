"""archplay's models: small, faithful PyTorch implementations that expose a Trace.

    from models import load
    model, tokenizer = load("gpt")            # a built-in
    model, tokenizer = load("path/to/folder")  # a local Hugging Face checkpoint

``models`` imports neither gradio nor plotly.
"""

from .layers import ModelOutput, Trace
from .loading import BUILTIN_NAMES, SUPPORTED, LoadError, load

__all__ = ["load", "LoadError", "BUILTIN_NAMES", "SUPPORTED", "Trace", "ModelOutput"]
