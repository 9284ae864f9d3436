"""archplay: a browser playground for looking inside language-model architectures.

The one import root. In a checkout its subpackages are the repository's top-level folders,
mapped in ``pyproject.toml``:

* ``archplay.models``: the architectures, checkpoints, story world, training and analysis
  (computes a ``Trace``; imports neither gradio nor plotly);
* ``archplay.viz``: figure builders (a slice of a Trace in, a Plotly figure out);
* ``archplay.app``: the Gradio page that wires inputs to both (``python -m archplay``).
"""

__version__ = "0.1.0"
