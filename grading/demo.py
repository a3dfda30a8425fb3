"""``python -m grading demo``: a throw-away course that shows the whole grading pipeline.

In a temporary folder: copy ``solutions/``, release the student notebooks, make three submissions
per assignment and autograde them, then print the grade table (student x assignment):

- ``perfect``: the solution notebooks with outputs cleared (written answers: the model answers);
- ``partial``: the same with one or two answer cells per notebook replaced by typical mistakes
  (a wrong return value, an off-by-one in the time index);
- ``blank``: the released notebooks as handed out.

Trusted: runs in the instructor's process.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from . import cells, course
from .autograde import autograde
from .release import release
from .state import grade_table

#: A code cell's solution region, from the line of its begin marker to the line of its end marker.
_REGION = re.compile(rf"^(?P<indent>[ \t]*)### {cells.BEGIN_SOLUTION}.*?^[ \t]*### {cells.END_SOLUTION}[^\n]*",
                     re.S | re.M)


def _clear(nb: dict) -> dict:
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    return nb


def mistake(source: str, k: int) -> str:
    """A plausible wrong answer: the solution region replaced by a wrong body."""
    def repl(m):
        ind = m.group("indent")
        body = m.group(0)
        if k % 2 == 0 and re.search(r"\[\s*t\s*\]", body):
            # off-by-one in the time index (t + 1 instead of t) - a classic of these notebooks
            return re.sub(r"\[\s*t\s*\]", "[(t + 1).clamp(max=len(alpha_bar) - 1)]" if "alpha_bar"
                          in body else "[t - 1]", body)
        if ind:
            return f"{ind}return None  # forgot to finish this one"
        return "pass  # not done"
    return _REGION.sub(repl, source, count=1)


def make_submissions(root: Path, assignments: list[str], dest: Path) -> None:
    for a in assignments:
        for nb_path in course.assignment_notebooks(root, a):
            sol = _clear(course.read_json(nb_path))
            rel = course.read_json(root / course.RELEASE_DIR / a / nb_path.name)
            for student, nb in (("perfect", sol), ("blank", rel), ("partial", json.loads(json.dumps(sol)))):
                if student == "partial":
                    answers = [c for c in nb["cells"] if cells.is_answer(c)]
                    for k, cell in enumerate(answers[:2] if len(answers) < 4 else answers[:3:2]):
                        cell["source"] = mistake(cells.source(cell), k)
                out = dest / student / a / nb_path.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(nb, indent=1))


def run_demo(assignments: list[str] | None = None, jobs: int | None = None, keep: bool = False,
             root: Path = course.REPO_ROOT, timeout: int | None = None) -> int:
    root = Path(root)
    chosen = course.resolve_assignments(assignments, root)
    if not chosen:
        print(f"no assignments in {root / course.SOURCE_DIR}")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="grading-demo-"))
    try:
        for a in chosen:
            shutil.copytree(root / course.SOURCE_DIR / a, tmp / course.SOURCE_DIR / a)
        print(f"demo course in {tmp}" + ("" if keep else " (deleted at the end; --keep keeps it)"))
        released = release(chosen, root=tmp)   # the demo's own copy, not the repository's notebooks/
        print(f"released {len(released)} file(s) of {len(chosen)} assignment(s) into "
              f"{tmp / course.RELEASE_DIR}")
        make_submissions(tmp, chosen, tmp / "submissions")
        print(f"autograding 3 submissions x {len(chosen)} assignment(s) ...")
        rep = autograde(tmp / "submissions", out=tmp / "graded", jobs=jobs, root=tmp, timeout=timeout)
        print()
        print(grade_table(rep.out))
        print(f"\n({rep.graded} notebooks in {rep.seconds:.0f} s; '+N?' = written answers awaiting "
              "manual grading; 'pending' = a total that waits for them)")
        page = next(iter(sorted((rep.out / "feedback" / "partial").glob("*/*.html"))), None)
        where = [("grade table (one row per student and assignment)", rep.out / "grades.csv"),
                 ("every graded question", rep.out / "questions.csv"),
                 ("files not graded, and why", rep.out / "unmatched.csv"),
                 ("a feedback page (open it in a browser)", page),
                 ("the gradebook (nbgrader)", rep.out / "gradebook.db")]
        print("\n" + ("written:" if keep else "written (deleted when the demo ends; --keep keeps them):"))
        for what, path in where:
            if path is not None and path.exists():
                print(f"  {what}: {path}")
        return 0 if not rep.errors else 1
    finally:
        if keep:
            print(f"kept the demo course in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
