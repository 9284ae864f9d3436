"""viz: turns archplay's traces (attention weights, staged sampling distributions, router choices,
state-space step sizes) into Plotly figures.

Every builder is a pure function, data in and ``plotly.graph_objects.Figure`` out. It accepts
torch tensors or numpy arrays and objects duck-typed like ``archplay.models.sampling.StagedDistribution``;
it imports neither gradio nor any model class.
"""

from archplay.viz.attention import attention_heatmap, attention_mask_heatmap
from archplay.viz.moe import expert_load_bars, routing_heatmap
from archplay.viz.sampling import distribution_figure
from archplay.viz.ssm import delta_bars, hidden_attention_heatmap

__all__ = [
    "attention_heatmap", "attention_mask_heatmap", "delta_bars", "distribution_figure", "expert_load_bars",
    "hidden_attention_heatmap", "routing_heatmap",
]  # fmt: skip
