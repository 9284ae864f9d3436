"""viz: turns archplay's traces (attention weights, staged sampling distributions) into Plotly figures.

Every builder is a pure function, data in and ``plotly.graph_objects.Figure`` out. It accepts
torch tensors or numpy arrays and objects duck-typed like ``models.sampling.StagedDistribution``;
it imports neither gradio nor any model class.
"""

from viz.attention import attention_heatmap, attention_mask_heatmap
from viz.sampling import distribution_figure

__all__ = ["attention_heatmap", "attention_mask_heatmap", "distribution_figure"]
