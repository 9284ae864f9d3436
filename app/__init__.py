"""archplay's browser app: ``python -m archplay`` (or ``archplay``) serves it on http://127.0.0.1:7860.

One module (or package) per tab, the shared pieces beside them:

* ``main``: the command line, and the tabs composed into one page
* ``explore/``: the Explore tab (``page`` lays it out and wires it; ``run``, ``attention``,
  ``sampling``, ``generation``; the family views ``translation``, ``routing``, ``scan``)
* ``lens``, ``embeddings``, ``compare``, ``card``: the Logit lens, Embeddings, Compare and
  Architecture tabs
* ``session``: per-session state, the ``Analysis`` one Run leaves (and the traced run behind it)
* ``catalog``: the loaded models, shared read-only by every session
* ``tokens``: text and tokens as every tab handles them (encoding, mask token, token chips)
* ``messages``: status lines (✓ ℹ ⚠ ✕, markdown-safe); ``sliders``: slider values checked or clamped

What a model's family has (views, objective, heads) is asked of ``archplay.models.registry``;
nothing here branches on a family's name.
"""
