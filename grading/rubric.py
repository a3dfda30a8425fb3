"""``python -m grading rubric A``: the written questions of an assignment with their model answers
and rubrics, for the people grading by hand (read from ``solutions/``; never released).

Trusted: runs in the instructor's process.
"""
from __future__ import annotations

from pathlib import Path

from . import cells, course

PROMPT_SUFFIX = "_prompt"  # the grade id of a written question's locked prompt: "<answer id>_prompt"


def written_questions(nb: dict) -> list[dict]:
    """``[{id, points, prompt, answer}]`` for every manually graded answer cell, in order."""
    out, prompts = [], {}
    previous_md = ""
    for cell in nb["cells"]:
        m = cells.nbgrader(cell)
        if m.get("grade_id", "").endswith(PROMPT_SUFFIX):
            prompts[m["grade_id"][: -len(PROMPT_SUFFIX)]] = cells.source(cell)
        if cells.is_written(cell):
            text = cells.without_solution_markers(cells.source(cell)).strip()
            out.append({"id": m["grade_id"], "points": m.get("points", 0),
                        "prompt": prompts.get(m["grade_id"], previous_md).strip(),
                        "answer": text})
        if cell["cell_type"] == "markdown":
            previous_md = cells.source(cell)
    return out


def format_rubric(assignment: str, root: Path = course.REPO_ROOT) -> str:
    lines = []
    for path in course.assignment_notebooks(root, assignment):
        qs = written_questions(course.read_json(path))
        total = sum(float(q["points"]) for q in qs)
        lines.append(f"# {assignment}: {len(qs)} written question(s), {total:g} points\n")
        for q in qs:
            lines.append(f"## {q['id']} ({q['points']} points)\n")
            lines.append("Question:\n" + "\n".join("  " + ln for ln in q["prompt"].splitlines()))
            lines.append("\n" + q["answer"] + "\n")
    return "\n".join(lines)


def print_rubric(assignment: str, root: Path = course.REPO_ROOT) -> int:
    (a,) = course.resolve_assignments([assignment], root)
    print(format_rubric(a, root))
    return 0
