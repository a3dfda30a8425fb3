"""Hidden tests, one module per notebook (``<name>.py`` for ``NN_<name>``), each with ``CHECKS``.

Trusted: each check plans the calls the student's kernel makes and judges what came back, in the
grading worker (``grading.verdict``); nothing of it enters the kernel. See CONTRIBUTING.md.
"""
