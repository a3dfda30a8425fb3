"""nbgrader configuration of the diffusion course (nbgrader 0.9.6).

``NbGraderAPI`` does not read this file by itself: ``grading.course.load_config`` loads it with
``PyFileConfigLoader`` and then sets ``CourseDirectory.root`` (the repository for a release, a
temporary course folder for autograding) and ``CourseDirectory.db_url``.

Every name below was checked against the nbgrader 0.9.6 source (note the historical spelling
"delimeter" of the delimiter options). The markers and tags come from ``grading.cells``, the one
place the other tools read them from too.

Trusted: read by the grading tools (and nbgrader) in the grader's processes.
"""
from grading import cells

c = get_config()  # noqa: F821  (injected by traitlets' PyFileConfigLoader)

c.CourseDirectory.course_id = "diffusion"
c.CourseDirectory.source_directory = "solutions"   # nbgrader's "source"
c.CourseDirectory.release_directory = "notebooks"  # nbgrader's "release", committed
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.db"]

# Solution and hidden-test delimiters: nbgrader's defaults, matched as substrings of a line.
c.ClearSolutions.begin_solution_delimeter = cells.BEGIN_SOLUTION
c.ClearSolutions.end_solution_delimeter = cells.END_SOLUTION
c.ClearSolutions.code_stub = {"python": cells.CODE_STUB}
c.ClearSolutions.text_stub = cells.TEXT_STUB
c.ClearSolutions.enforce_metadata = True
c.ClearHiddenTests.begin_test_delimeter = cells.BEGIN_HIDDEN_TESTS
c.ClearHiddenTests.end_test_delimeter = cells.END_HIDDEN_TESTS
c.ClearHiddenTests.enforce_metadata = True

# Execution while autograding (fast mode: DIFFUSION_FAST=1 is put in the environment by
# grading.course.grading_env, and nbgrader itself sets NBGRADER_EXECUTION=autograde).
c.Execute.timeout = 120               # seconds per cell; a runaway cell gets CellTimeoutError
c.Execute.interrupt_on_timeout = True  # ... and the rest of the notebook still runs
c.Execute.startup_timeout = 120
c.Execute.raise_on_iopub_timeout = False
# nbclient skips cells tagged "skip-execution" by default; a student could tag a test cell with
# it and get its points with a blank answer. It skips only the grader's own tag instead, which
# grading.slow puts on the cells the graded run leaves out (sanitize strips it from submissions).
c.Execute.skip_cells_with_tag = cells.GRADER_SKIP_TAG

# The cells tagged "slow" in solutions/ (training loops, long experiments) are not run while
# autograding: no test cell depends on them (tests/test_grading_slow.py), and the TA reads the
# student's own outputs there. True runs every cell, as nbval does.
c.CourseGrading.execute_slow_cells = False

# Our Execute (grading/execute.py): a wall clock per notebook after which the kernel is killed
# even if it ignores interrupts, and a kernel that dies keeps the points of the cells that passed
# before. The memory limit is a cgroup per job (grading/limits.py), made by autograde as root.
c.Autograde.autograde_preprocessors = [
    "grading.execute.CourseExecute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.CourseExecute.notebook_timeout = 900   # seconds per notebook (fast mode runs in about a minute)
# 4 GB per kernel: a fast-mode notebook peaks far below it (autograde logs each job's peak), and
# two jobs per 8 GB leave the machine room; a kill is reported as "ran out of memory at cell N".
c.CourseExecute.memory_limit_mb = 4096
# Other limits of a grading kernel (grading/limits.py reads them; --help of autograde says where).
c.CourseLimits.max_processes = 512    # processes and threads of a job's uid (the kernel has ~40)
c.CourseLimits.shm_mb = 64            # its private /dev/shm (and /tmp is 256 MB)
c.CourseLimits.max_notebook_mb = 20   # a submitted notebook without its outputs
# Each kernel is a fresh process forked from a template that has imported torch, in the same
# bubblewrap sandbox as a cold one (grading/zygote.py): about 3 s of CPU less per notebook.
# Only as root (isolation mode bwrap); False starts every kernel cold.
c.CourseLimits.warm_kernels = True

# Warnings on stderr (Python/PyTorch/NumPy) must not cost the points of a passing test cell:
# nbgrader gives 0 to any test cell with stderr output unless IgnorePattern removes it.
c.IgnorePattern.enabled = True
# Removing stderr can only give points back, so a broad pattern is safe: any "...Warning" line
# (Python warnings module, PyTorch UserWarning, NumPy RuntimeWarning) or PyTorch's NNPACK notice.
WARNING_PATTERN = r"\w*Warning\b|warnings\.warn|NNPACK"
c.IgnorePattern.pattern = WARNING_PATTERN

# A million printed lines or a 1000-frame traceback must not blow up the feedback.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 20

# A deleted test cell is put back (with its hidden tests) and graded instead of zeroing it
# "for manual grading forever" (nbgrader #1682).
c.OverwriteCells.add_missing_cells = True

# Feedback never shows hidden tests (nbgrader #917, #1363).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]

# No late penalties here: the LMS handles due dates.
c.LateSubmissionPlugin.penalty_method = "none"
