"""The Explore tab, one module per job.

``page`` lays the tab out and wires its events; ``run`` is the Run (the one model call and every
view's first picture); ``attention`` (heatmap, grid, mask), ``sampling`` (distribution, samples,
position) and ``generation`` redraw or continue from the session's Run. Views of their own, named
after the family registry's view names, belong to the families that list them: ``translation``
(encoder-decoders), ``routing`` (mixtures of experts) and ``scan`` (state-space models).

Nothing is imported here, so that ``app.session`` can import the view modules' data types.
"""
