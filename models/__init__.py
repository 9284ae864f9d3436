"""archplay's models: small, faithful PyTorch implementations that expose a Trace.

    from archplay.models import load
    model, tokenizer = load("gpt")            # a built-in
    model, tokenizer = load("path/to/folder")  # a local Hugging Face checkpoint
    model, tokenizer = load("EleutherAI/pythia-70m")  # a Hugging Face id, through its cache

Rooms: ``architectures`` (shared blocks, one file per family), ``checkpoints`` (reading and
converting), ``story`` (the story world and its tokenizer), ``training`` (training and
evaluation), ``analysis`` (lens, embedding geometry, card, timing, attention step by step,
interventions); ``registry`` says what each
family is, ``families`` lists them. ``archplay.models`` imports neither gradio nor plotly.
"""

from archplay.models import families, registry  # noqa: F401  (families registers the built-in families)
from archplay.models.analysis.estimate import estimate
from archplay.models.analysis.interventions import ablate, attribution
from archplay.models.analysis.mixers import gate_steps, scan_steps
from archplay.models.analysis.steps import attention_steps
from archplay.models.architectures.layers import ModelOutput, Trace
from archplay.models.checkpoints.convert import LoadError
from archplay.models.checkpoints.loading import BUILTIN_NAMES, load

__all__ = ["load", "LoadError", "BUILTIN_NAMES", "Trace", "ModelOutput", "registry", "attention_steps", "ablate",
           "attribution", "gate_steps", "scan_steps", "estimate"]
