"""Reference implementations of every graded function of the course, one module per notebook.

``forward_process`` (01), ``ddpm_training`` (02), ``sampling`` (03), ``conditional`` (04),
``classifier_free_guidance`` (05) and ``score_matching`` (06). The names and signatures follow
the contract in ``docs/conventions.md`` exactly; the hidden checks, the tests and the instructor
tools import them from here (``from grading.reference import sampling as ref``). This package
imports nothing by itself.

Trusted: the hidden checks use it in the grading worker to judge what the student's kernel sent
back (as do the instructor tools and the tests in their own processes); it never enters the kernel.
"""
