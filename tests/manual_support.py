"""A graded fixture course for the TAs' grading tests: a few students of ``00_fixture`` whose
notebooks carry outputs of their own (a number and a figure in the cell the written question is
about), autograded into an ``--out`` folder with a gradebook."""
from __future__ import annotations

import base64
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

A = gc.ASSIGNMENT
QUESTION = "why"
#: A 1x1 red PNG: the student's own "figure".
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763"
    "f8cfc000000301010018dd8db40000000049454e44ae426082")).decode()


def student_notebook(answer: str | None, number: str) -> dict:
    """The fixture's correct code, ``answer`` as the written answer (None: left blank), and
    outputs in the `train` cell (the one the question is about) as if the student ran it: ``number`` printed and a figure."""
    nb = gc.perfect() if answer is not None else gc.blank()
    if answer is not None:
        gc.find(nb, QUESTION)["source"] = answer
    setup = next(c for c in nb["cells"] if c.get("id") == "train")
    setup["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": f"loss = {number}\n"},
        {"output_type": "display_data", "metadata": {},
         "data": {"image/png": PNG, "text/plain": "<Figure size 10x10>"}},
        {"output_type": "display_data", "metadata": {},
         "data": {"text/html": "<script>window.pwned = 1</script>", "text/plain": "a table"}}]
    setup["execution_count"] = 1
    return nb


ANSWERS = {
    "ada": ("Squares of equal signs: $x \\cdot x = |x|^2 \\geq 0$, and $0^2 = 0$ is the minimum.", "0.125"),
    "bob": ("Because $(-x)^2 = x^2$. <img src=x onerror=\"window.pwned=2\"> **bold**", "0.250"),
    "cyd": (None, "0.500"),
}


def write_submissions(dest: Path, answers: dict = ANSWERS) -> Path:
    for student, (answer, number) in answers.items():
        p = dest / student / A / f"{A}.ipynb"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(gc.dump(student_notebook(answer, number)))
    return dest


def graded_course(tmp: Path, answers: dict = ANSWERS, jobs: int = 2):
    """Autograde the students of ``answers`` into ``tmp/out``; returns the report."""
    from grading.autograde import autograde

    write_submissions(tmp / "subs", answers)
    return autograde(tmp / "subs", out=tmp / "out", jobs=jobs, timeout=30, root=gc.COURSE,
                     progress=False)


def copy_answers(n: int) -> dict:
    """``n`` students (for timing a TA through one question)."""
    base = list(ANSWERS.values())
    return {f"s{k:02d}": copy.deepcopy(base[k % len(base)]) for k in range(n)}
