"""Hidden tests, one module per notebook (``<name>.py`` for ``NN_<name>``), each with ``CHECKS``.

They run inside the grading kernel through :func:`grading.hidden.run`; see CONTRIBUTING.md.
"""
