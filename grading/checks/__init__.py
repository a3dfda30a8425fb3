"""Hidden tests, one module per notebook (``<name>.py`` for ``NN_<name>``), each with ``CHECKS``.

Kernel side: they run inside the student's grading kernel, after the student's code, through
:func:`grading.hidden.run`; see CONTRIBUTING.md.
"""
