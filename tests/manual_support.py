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


def _png(width: int = 96, height: int = 32) -> str:
    """A small RGB PNG (a colour ramp), base64: the student's own "figure"."""
    import struct
    import zlib

    rows = b"".join(b"\0" + bytes(v for x in range(width) for v in (255 * x // width, 90, 200 - 150 * y // height))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


PNG = _png()
PNG_WIDTH = 96


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
