"""The architectures: shared building blocks (``layers``, ``generation``) and one file per family.

Each family file holds its typed config, its model (``forward(ids, trace=...)`` returning a
``ModelOutput`` with a ``Trace``) and nothing else; ``archplay.models.registry`` says what the rest
of the system needs to know about it.
"""
