"""archplay's browser app: ``python -m app`` (or ``archplay``) serves it on http://127.0.0.1:7860.

``app.main`` parses the command line and composes the pages; ``app.explore`` is the Explore
page (layout and wiring) over the pure functions in ``app.handlers``, with the family-specific
views in ``app.translate`` (encoder-decoder), ``app.routing`` (mixture of experts) and
``app.state_space`` (Mamba); ``app.messages`` formats status lines; ``app.registry`` holds
the loaded models, shared read-only by every session.
"""
