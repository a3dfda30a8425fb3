"""``python -m grading rubric A``: the written questions of an assignment with their model answers
and rubrics, for the people grading by hand (read from ``solutions/``; never released)."""
from __future__ import annotations

import re
from pathlib import Path

from . import course


def _src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _nbg(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader") or {}


def written_questions(nb: dict) -> list[dict]:
    """``[{id, points, prompt, answer}]`` for every manually graded answer cell, in order."""
    out, prompts = [], {}
    previous_md = ""
    for cell in nb["cells"]:
        m = _nbg(cell)
        if m.get("grade_id", "").endswith("_prompt"):
            prompts[m["grade_id"][: -len("_prompt")]] = _src(cell)
        if m.get("solution") and m.get("grade"):
            text = _src(cell)
            text = re.sub(r"^.*(BEGIN|END) SOLUTION.*$\n?", "", text, flags=re.M).strip()
            out.append({"id": m["grade_id"], "points": m.get("points", 0),
                        "prompt": prompts.get(m["grade_id"], previous_md).strip(),
                        "answer": text})
        if cell["cell_type"] == "markdown":
            previous_md = _src(cell)
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
