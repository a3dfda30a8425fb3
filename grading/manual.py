"""``python -m grading manual``: TAs grade the written answers, by question across all students,
on a local page (``--serve``, ``grading.manual_server``) or offline in a CSV (``export`` /
``import``). Scores and comments land in the nbgrader gradebook as the grade's ``manual_score``
and the comment's ``manual_comment``, so formgrader and ``nbgrader export`` see them, and a later
``autograde`` (``--force`` included) keeps them.

Trusted: runs in the grader's own process; it reads the gradebook, the kept submissions
(``grading.submitted``) and the source notebooks (model answers and rubrics, never released).

CSV (one row per student and written question; :data:`CSV_COLUMNS`)::

    student,assignment,notebook,question,max_points,points,comment,status,answer

``import`` reads ``student``, ``assignment``, ``question`` (``notebook`` when the assignment has
several), ``points`` and ``comment``; the other columns are for reading (an answer that starts like a
spreadsheet formula, ``=...``, gets a leading ``'`` so that it stays text). A row with empty
``points`` and ``comment`` changes nothing; ``points`` may use a decimal comma. Every row is
checked before anything is written (:class:`ManualGradeError` lists each bad row by its line
number: an unknown student, assignment or question, points not a number, negative or above the
maximum, a comment without points, a repeated row), then all of them are written in one gradebook
transaction.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import cells, course
from .rubric import written_questions
from .submitted import load_submitted

log = logging.getLogger("grading.manual")

CSV_COLUMNS = ["student", "assignment", "notebook", "question", "max_points", "points", "comment",
               "status", "answer"]
IMPORT_REQUIRED = ("student", "assignment", "question", "points", "comment")
#: Where ``manual export`` writes when no file is named (in the current folder).
DEFAULT_CSV = "written_answers.csv"
MAX_ERRORS_SHOWN = 50


class ManualGradeError(ValueError):
    """Bad manual grades: ``errors`` holds one line per bad row; nothing was written."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = errors[:MAX_ERRORS_SHOWN]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__("\n".join(shown) + more)


@dataclass(frozen=True)
class Question:
    """A written question of one notebook, with what graders read beside the answers."""
    assignment: str
    notebook: str
    id: str
    max_points: float
    prompt: str
    model_answer: str   # the source cell's text: "**Model answer.** ... **Rubric (N points).** ..."

    @property
    def key(self) -> str:
        return f"{self.assignment}/{self.notebook}/{self.id}"


@dataclass
class Answer:
    """One student's answer to a written question and its grade in the gradebook."""
    student: str
    question: Question
    text: str | None                 # None: not in the submission (or graded before it was kept)
    cells: list[dict] = field(default_factory=list)   # the kept cells the question is about
    note: str = ""                   # why the outputs are missing, when they are
    auto_score: float | None = None
    manual_score: float | None = None
    needs_manual_grade: bool = False
    auto_comment: str = ""
    manual_comment: str = ""

    @property
    def graded(self) -> bool:
        return self.manual_score is not None

    @property
    def status(self) -> str:
        if self.manual_score is not None:
            return "graded"
        if self.needs_manual_grade:
            return "pending"
        if self.auto_score is not None:
            return f"auto {self.auto_score:g}" + (f": {self.auto_comment}" if self.auto_comment else "")
        return "pending"


@dataclass(frozen=True)
class GradeEntry:
    """A validated manual grade to write (``points`` None: leave the score as it is)."""
    student: str
    question: Question
    points: float | None
    comment: str | None


@dataclass
class Course:
    """The autograde output folder (``--out``), its gradebook and the course's source notebooks."""
    out: Path
    db_url: str
    root: Path = course.REPO_ROOT

    @classmethod
    def open(cls, out: Path | str = "autograded", db_url: str | None = None,
             root: Path | str = course.REPO_ROOT) -> "Course":
        out = Path(out).resolve()
        db_url = db_url or f"sqlite:///{out / 'gradebook.db'}"
        if db_url.startswith("sqlite:///") and not Path(db_url[len("sqlite:///"):]).is_file():
            raise FileNotFoundError(f"no gradebook at {db_url[len('sqlite:///'):]}: run "
                                    f"`python -m grading autograde ... --out {out}` first")
        course.ensure_path()
        return cls(out, db_url, Path(root).resolve())

    def gradebook(self):
        from nbgrader.api import Gradebook

        return Gradebook(self.db_url, "diffusion")

    # -- questions ---------------------------------------------------------------------------

    def _source_questions(self, assignment: str, notebook: str) -> dict[str, dict]:
        path = self.root / course.SOURCE_DIR / assignment / f"{notebook}.ipynb"
        if not path.is_file():
            return {}
        return {q["id"]: q for q in written_questions(course.read_json(path))}

    def questions(self) -> list[Question]:
        """Every written question of the gradebook's assignments, in notebook order."""
        out = []
        with course.quiet_nbgrader(), self.gradebook() as gb:
            for a in sorted(gb.assignments, key=lambda a: a.name):
                for nb in sorted(a.notebooks, key=lambda n: n.name):
                    written = {c.name for c in nb.solution_cells}
                    src = self._source_questions(a.name, nb.name)
                    order = {q: k for k, q in enumerate(src)}
                    grade_cells = sorted((g for g in nb.grade_cells if g.name in written),
                                         key=lambda g: (order.get(g.name, len(order)), g.name))
                    for g in grade_cells:
                        s = src.get(g.name, {})
                        out.append(Question(a.name, nb.name, g.name, float(g.max_score),
                                            s.get("prompt", ""),
                                            s.get("answer", "(the source notebook was not found "
                                                            f"in {self.root / course.SOURCE_DIR})")))
        return out

    def question(self, assignment: str, question: str, notebook: str | None = None) -> Question:
        hits = [q for q in self.questions() if q.assignment == assignment and q.id == question
                and (notebook is None or q.notebook == notebook)]
        if len(hits) != 1:
            raise KeyError(f"{assignment}: no written question {question!r}" if not hits else
                           f"{assignment}: {question!r} is in several notebooks: name the notebook")
        return hits[0]

    # -- answers and grades ------------------------------------------------------------------

    def _answer_from_graded(self, student: str, q: Question) -> str | None:
        p = self.out / "autograded" / student / q.assignment / f"{q.notebook}.ipynb"
        if not p.is_file():
            return None
        try:
            nb = course.read_json(p)
        except (OSError, ValueError):
            return None
        hits = [c for c in nb.get("cells", []) if cells.grade_id(c) == q.id]
        return cells.source(hits[-1]) if hits else None

    def answers(self, q: Question, only: str | None = None) -> list[Answer]:
        """Every student's answer to ``q`` with its grade, by student id (``only``: that
        student's alone)."""
        out = []
        with course.quiet_nbgrader(), self.gradebook() as gb:
            a = gb.find_assignment(q.assignment)
            for sub in sorted(a.submissions, key=lambda s: s.student.id):
                s = sub.student.id
                if only is not None and s != only:
                    continue
                snb = next((n for n in sub.notebooks if n.name == q.notebook), None)
                if snb is None:
                    continue
                grade = next((g for g in snb.grades if g.name == q.id), None)
                comment = next((c for c in snb.comments if c.name == q.id), None)
                if grade is None:
                    continue
                kept = load_submitted(self.out, s, q.assignment, q.notebook)
                kq = (kept or {}).get("questions", {}).get(q.id)
                if kq is not None:
                    text, kept_cells, note = kq.get("answer"), kq.get("cells", []), ""
                    if kq.get("missing"):
                        note = "not in the submission: cell(s) " + ", ".join(kq["missing"])
                else:
                    text, kept_cells = self._answer_from_graded(s, q), []
                    note = (kept or {}).get("note") or (
                        "the submitted outputs were not kept (graded before autograde kept them: "
                        "run `autograde --force`)")
                out.append(Answer(
                    s, q, text, kept_cells, note,
                    auto_score=grade.auto_score, manual_score=grade.manual_score,
                    needs_manual_grade=bool(grade.needs_manual_grade),
                    auto_comment=(comment.auto_comment or "") if comment else "",
                    manual_comment=(comment.manual_comment or "") if comment else ""))
        return out

    def progress(self) -> dict[str, tuple[int, int]]:
        """``{question key: (graded, answers)}``."""
        out = {}
        with course.quiet_nbgrader(), self.gradebook() as gb:
            for a in gb.assignments:
                for sub in a.submissions:
                    for snb in sub.notebooks:
                        written = {c.name for c in snb.notebook.solution_cells}
                        for g in snb.grades:
                            if g.name in written:
                                k = f"{a.name}/{snb.name}/{g.name}"
                                done, n = out.get(k, (0, 0))
                                out[k] = (done + (g.manual_score is not None), n + 1)
        return out

    # -- checking and writing grades ---------------------------------------------------------

    def check(self, rows: list[dict], where: str = "row") -> list[GradeEntry]:
        """Validate raw rows (``student``, ``assignment``, ``question``, optional ``notebook``,
        ``points``, ``comment``, and ``_line``: its label in errors) into entries; raises
        :class:`ManualGradeError` naming every bad row."""
        qs = self.questions()
        students: dict[str, set[str]] = {}
        with course.quiet_nbgrader(), self.gradebook() as gb:
            for a in gb.assignments:
                students[a.name] = {sub.student.id for sub in a.submissions}
        errors, entries, seen = [], [], {}
        for k, row in enumerate(rows):
            label = f"{where} {row.get('_line', k + 1)}"
            s, a = (row.get("student") or "").strip(), (row.get("assignment") or "").strip()
            qid, nb = (row.get("question") or "").strip(), (row.get("notebook") or "").strip()
            if not (s and a and qid):
                errors.append(f"{label}: student, assignment and question must all be given")
                continue
            if a not in students:
                errors.append(f"{label}: unknown assignment {a!r} (in the gradebook: "
                              f"{', '.join(sorted(students)) or 'none'})")
                continue
            hits = [q for q in qs if q.assignment == a and q.id == qid and (not nb or q.notebook == nb)]
            if not hits:
                written = sorted({q.id for q in qs if q.assignment == a})
                errors.append(f"{label}: {qid!r} is not a written question of {a}"
                              + (f" notebook {nb}" if nb else "") + f" (written: {', '.join(written)})")
                continue
            if len(hits) > 1:
                errors.append(f"{label}: {qid!r} is in several notebooks of {a}: fill in `notebook`")
                continue
            q = hits[0]
            if s not in students[a]:
                errors.append(f"{label}: unknown student {s!r}: no submission of {a} by them")
                continue
            key = (s, q.key)
            if key in seen:
                errors.append(f"{label}: repeats {seen[key]} (student {s}, {a} {qid})")
                continue
            seen[key] = label
            raw = (row.get("points") or "").strip()
            comment = (row.get("comment") or "").strip()
            if not raw:
                if comment:
                    errors.append(f"{label}: a comment but no points (student {s}, {qid}): give "
                                  "the points too")
                continue  # nothing to change
            try:
                pts = float(raw.replace(",", ".") if raw.count(",") == 1 and "." not in raw else raw)
            except ValueError:
                pts = math.nan
            if not math.isfinite(pts):
                errors.append(f"{label}: points {raw!r} is not a number (student {s}, {qid})")
            elif pts < 0:
                errors.append(f"{label}: points {raw} is negative (student {s}, {qid})")
            elif pts > q.max_points + 1e-9:
                errors.append(f"{label}: {raw} points is above the maximum of {q.max_points:g} "
                              f"for {qid} (student {s})")
            else:
                entries.append(GradeEntry(s, q, pts, comment))
        if errors:
            raise ManualGradeError(errors)
        return entries

    def write(self, entries: list[GradeEntry]) -> int:
        """Write validated entries in one gradebook transaction (all or nothing); returns how many."""
        from nbgrader.api import Comment, Grade

        with course.quiet_nbgrader(), self.gradebook() as gb:
            try:
                for e in entries:
                    q = e.question
                    grade: Grade = gb.find_grade(q.id, q.notebook, q.assignment, e.student)
                    if e.points is not None:
                        grade.manual_score = e.points
                    # as formgrader does: a grade with a score needs no more grading
                    grade.needs_manual_grade = grade.manual_score is None and grade.auto_score is None
                    if e.comment is not None:
                        comment: Comment = gb.find_comment(q.id, q.notebook, q.assignment, e.student)
                        comment.manual_comment = e.comment or None
                gb.db.commit()
            except Exception:
                gb.db.rollback()
                raise
        return len(entries)

    def save(self, rows: list[dict], where: str = "row") -> int:
        """:meth:`check` then :meth:`write`."""
        return self.write(self.check(rows, where))


# -- CSV round trip --------------------------------------------------------------------------

#: A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def inert(text: str) -> str:
    """``text`` as a spreadsheet shows it without running it: a leading ``'`` before a formula
    start (OWASP's advice for CSV files); for the columns ``import`` never reads."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def export_csv(c: Course, to: Path | str | None = None) -> tuple[str, int]:
    """The CSV text of every written answer (and write it to ``to`` when given); returns
    ``(text, rows)``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    n = 0
    for q in c.questions():
        for ans in c.answers(q):
            w.writerow({"student": ans.student, "assignment": q.assignment, "notebook": q.notebook,
                        "question": q.id, "max_points": f"{q.max_points:g}",
                        "points": "" if ans.manual_score is None else f"{ans.manual_score:g}",
                        "comment": ans.manual_comment, "status": inert(ans.status),
                        "answer": inert(ans.text) if ans.text is not None else ""})
            n += 1
    text = buf.getvalue()
    if to is not None:
        Path(to).write_text(text, encoding="utf-8")
    return text, n


def read_csv_rows(path: Path | str) -> list[dict]:
    """The rows of a grades CSV with ``_line`` (their line number in the file); a
    :class:`ManualGradeError` when the file itself is unusable."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ManualGradeError([f"{p}: no such file"]) from None
    except UnicodeDecodeError as exc:
        raise ManualGradeError([f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}): save "
                                "it as CSV UTF-8"]) from None
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in IMPORT_REQUIRED if c not in header]
    if missing:
        raise ManualGradeError([f"{p}: line 1 lacks the column(s) {', '.join(missing)} (a file "
                                "from `python -m grading manual export` has them)"])
    reader.fieldnames = header
    rows = []
    for row in reader:
        if None in row:
            raise ManualGradeError([f"{p}: line {reader.line_num} has more fields than the header"])
        row = {k: v for k, v in row.items() if k}
        if not any((v or "").strip() for v in row.values()):
            continue
        row["_line"] = reader.line_num
        rows.append(row)
    if not rows:
        raise ManualGradeError([f"{p}: no rows"])
    return rows


def import_csv(c: Course, path: Path | str) -> int:
    """Check every row of ``path``, then write them all in one transaction; returns the number
    of grades written."""
    return c.save(read_csv_rows(path), where="line")


# -- command line ----------------------------------------------------------------------------

def summary(c: Course) -> str:
    prog = c.progress()
    lines = [f"{'question':<48} {'points':>6}  graded"]
    for q in c.questions():
        done, n = prog.get(q.key, (0, 0))
        lines.append(f"{q.assignment + ' ' + q.id:<48} {q.max_points:>6g}  {done}/{n}")
    return "\n".join(lines)


def manual_cli(args) -> int:
    try:
        c = Course.open(args.out, args.db, args.root)
    except FileNotFoundError as exc:
        print(f"manual: {exc}", file=sys.stderr)
        return 2
    action = getattr(args, "action", None)
    if args.serve or action == "serve":
        from .manual_server import serve

        return serve(c, port=args.port)
    if action == "export":
        to = Path(args.file or getattr(args, "to", None) or DEFAULT_CSV)
        _, n = export_csv(c, to)
        print(f"wrote {n} row(s) to {to}: fill in points and comment, then "
              f"`python -m grading manual import {to}`")
        return 0
    if action == "import":
        try:
            n = import_csv(c, args.file)
        except ManualGradeError as exc:
            print(f"manual import: nothing imported, {len(exc.errors)} problem(s):\n{exc}",
                  file=sys.stderr)
            return 2
        print(f"imported {n} grade(s) into {c.db_url}")
        return 0
    print(summary(c))
    print("\n`python -m grading manual --serve` opens the grading page; `manual export` / "
          "`manual import FILE` grade in a CSV")
    return 0
