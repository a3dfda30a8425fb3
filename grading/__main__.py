"""``python -m grading ...``: see ``grading.cli``.

Trusted: runs in the instructor's process.
"""
import sys

from .cli import main

sys.exit(main())
