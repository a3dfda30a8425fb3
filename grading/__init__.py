"""The course's grading tools (``python -m grading``), its hidden tests and reference answers.

Where the code runs:

- kernel side, imported inside a student's grading kernel after the student's code ran there:
  ``grading.hidden``, ``grading.checks`` and ``grading.reference`` (nothing else of the package
  is imported there, and ``grading.hidden`` refuses to grade when the notebook imported it);
- trusted, everything else: it runs in the grader's or the instructor's own processes.

Each module's docstring says which, on its second paragraph; CONTRIBUTING.md has the table.
"""
