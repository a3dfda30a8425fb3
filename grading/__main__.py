"""``python -m grading ...``: see ``grading.cli``."""
import sys

from .cli import main

sys.exit(main())
