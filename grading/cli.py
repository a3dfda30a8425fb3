"""The instructors' command line: ``python -m grading {release,check,autograde,feedback,export,
rubric,demo,pack,manual}``. Run ``python -m grading COMMAND --help`` for each command's options.

Trusted: runs in the instructor's process. Each command imports only its own module.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import cells, course


def _cmd_release(args) -> int:
    from .release import ReleaseError, release

    try:
        out = release(args.assignments or None, root=Path(args.root), check=args.check,
                      force=args.force)
    except ReleaseError as exc:
        print(f"release failed: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for p in out:
            print(p)
        if out:
            print(f"{len(out)} released file(s) out of date: run `python -m grading release`",
                  file=sys.stderr)
            return 1
        print("notebooks/ is up to date")
        return 0
    for p in out:
        print(p)
    if not out:
        print("notebooks/ was already up to date")
    return 0


def _cmd_check(args) -> int:
    from .runner import format_table, run_notebook

    path = Path(args.notebook)
    if not path.is_file():
        print(f"no such notebook: {path}", file=sys.stderr)
        return 2
    res = run_notebook(path, skip_tags=tuple(args.skip_tag), timeout=args.timeout)
    print(format_table(res))
    return 0 if all(r.passed for r in res.values()) else 1


def _cmd_autograde(args) -> int:
    from .autograde import autograde_cli

    return autograde_cli(args)


def _cmd_feedback(args) -> int:
    from .feedback import feedback_cli

    return feedback_cli(args)


def _cmd_export(args) -> int:
    from .export import export_cli

    return export_cli(args)


def _cmd_rubric(args) -> int:
    from .rubric import print_rubric

    return print_rubric(args.assignment, root=Path(args.root))


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(assignments=args.assignments or None, jobs=args.jobs, keep=args.keep,
                    root=Path(args.root))


def _cmd_pack(args) -> int:
    from .pack import pack_cli

    return pack_cli(args)


def _cmd_manual(args) -> int:
    from .manual import manual_cli

    return manual_cli(args)


def _add_manual(sub) -> None:
    """``manual [--serve]``, ``manual export [FILE]``, ``manual import FILE`` (``grading.manual``);
    the options are taken before or after the action."""
    def options(p, default):
        d = (lambda v: v) if default else (lambda v: argparse.SUPPRESS)
        p.add_argument("--out", default=d("autograded"), help="autograde output folder")
        p.add_argument("--db", default=d(None),
                       help="gradebook URL (default: sqlite:///<out>/gradebook.db)")
        p.add_argument("--root", default=d(str(course.REPO_ROOT)), help=argparse.SUPPRESS)

    m = sub.add_parser("manual", help="grade the written answers: a local page (--serve) or a "
                                      "CSV (export / import); no action: progress per question")
    options(m, True)
    m.add_argument("--serve", action="store_true",
                   help="serve the grading page on 127.0.0.1 and print its URL")
    m.add_argument("--port", type=int, default=0, help="port for --serve (default: a free one)")
    m.set_defaults(func=_cmd_manual, action=None, file=None)
    acts = m.add_subparsers(dest="action")
    ex = acts.add_parser("export", help="one CSV row per student and written question")
    ex.add_argument("file", nargs="?", default=None, help="CSV to write (default: written_answers.csv)")
    ex.add_argument("--to", default=None, help="the same as FILE")
    options(ex, False)
    im = acts.add_parser("import", help="read points and comments back (all rows or none)")
    im.add_argument("file", help="CSV from `manual export` with points and comments filled in")
    options(im, False)
    sv = acts.add_parser("serve", help="the same as --serve")
    sv.add_argument("--port", type=int, default=argparse.SUPPRESS)
    options(sv, False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grading", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("release", help="solutions/ -> notebooks/ (student versions)")
    r.add_argument("assignments", nargs="*", help="assignment ids (default: all in solutions/)")
    r.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming each stale or missing released file")
    r.add_argument("--force", action="store_true",
                   help="overwrite released notebooks that hold work (outputs, typed answers)")
    r.add_argument("--root", default=str(course.REPO_ROOT), help=argparse.SUPPRESS)
    r.set_defaults(func=_cmd_release)

    c = sub.add_parser("check", help="run a notebook's visible tests and print a summary "
                                     "(exit 1 when one fails)")
    c.add_argument("notebook")
    c.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    c.add_argument("--skip-tag", action="append", default=[cells.SLOW_TAG], help="cell tag to skip")
    c.set_defaults(func=_cmd_check)

    a = sub.add_parser("autograde", help="autograde a folder or zip of submissions")
    a.add_argument("submissions", help="<student>/<assignment>/<nb>.ipynb folders, or an LMS "
                                       "download (folder or .zip of notebooks named by student)")
    a.add_argument("--assignment", help="assignment id (or its number, e.g. 01) when the file "
                                        "names do not tell")
    a.add_argument("--jobs", type=int, default=None, help="parallel students (default: CPUs)")
    a.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="grade on the Dask cluster of this scheduler (tcp://host:8786); its "
                        "workers need the course folder, its venv and data (README)")
    a.add_argument("--db", default=None, help="gradebook SQLAlchemy URL "
                                              "(default: sqlite:///<out>/gradebook.db)")
    a.add_argument("--out", default="autograded", help="output folder (default: ./autograded)")
    a.add_argument("--force", action="store_true", help="regrade unchanged submissions too")
    a.add_argument("--timeout", type=int, default=None, help="seconds per cell (config: 120)")
    a.add_argument("--notebook-timeout", type=int, default=None,
                   help="seconds per notebook, then its kernel is killed (config: 900)")
    a.add_argument("--memory-mb", type=int, default=None,
                   help="memory per kernel in MB, as root (config: 4096)")
    a.add_argument("--root", default=str(course.REPO_ROOT), help=argparse.SUPPRESS)
    a.set_defaults(func=_cmd_autograde)

    f = sub.add_parser("feedback", help="write the feedback pages and grades.csv again from the "
                                         "graded notebooks and the gradebook (after manual grading)")
    f.add_argument("--out", default="autograded", help="autograde output folder")
    f.add_argument("--assignment", default=None, help="only this assignment (id or number)")
    f.add_argument("--student", default=None)
    f.add_argument("--db", default=None, help="gradebook URL (default: sqlite:///<out>/gradebook.db)")
    f.add_argument("--root", default=str(course.REPO_ROOT), help=argparse.SUPPRESS)
    f.set_defaults(func=_cmd_feedback)

    e = sub.add_parser("export", help="write grades.csv from a gradebook, or an LMS's import file")
    e.add_argument("--db", default=None, help="gradebook URL (default: sqlite:///<out>/gradebook.db)")
    e.add_argument("--out", default="autograded", help="folder of the gradebook")
    e.add_argument("--to", default=None, help="CSV file (default: grades.csv in the current folder; "
                                              "<out>/canvas.csv, <out>/brightspace.csv, or the "
                                              "folder <out>/moodle/ of one CSV per assignment)")
    e.add_argument("--format", choices=["csv", "canvas", "brightspace", "moodle"], default="csv",
                   help="csv: one row per submission (default); canvas, brightspace, moodle: that "
                        "LMS's grade-import file, ids from the LMS download")
    e.add_argument("--pending", choices=["blank", "auto"], default="blank",
                   help="a total with written answers awaiting a grader: left empty (blank, the "
                        "default: the LMS imports no grade) or the points known so far (auto)")
    e.set_defaults(func=_cmd_export)

    ru = sub.add_parser("rubric", help="print the written questions, model answers and rubrics")
    ru.add_argument("assignment")
    ru.add_argument("--root", default=str(course.REPO_ROOT), help=argparse.SUPPRESS)
    ru.set_defaults(func=_cmd_rubric)

    d = sub.add_parser("demo", help="throw-away course: release, 3 submissions each, autograde")
    d.add_argument("assignments", nargs="*")
    d.add_argument("--jobs", type=int, default=None)
    d.add_argument("--keep", action="store_true", help="keep the temporary course folder")
    d.add_argument("--root", default=str(course.REPO_ROOT), help=argparse.SUPPRESS)
    d.set_defaults(func=_cmd_demo)

    pk = sub.add_parser("pack", help="the students' folder: released notebooks, helpers, "
                                     "README, requirements, check.py (nothing else)")
    pk.add_argument("--out", default="build/student-pack",
                    help="folder to write (default: build/student-pack)")
    pk.add_argument("--zip", action="store_true", help="also write <out>.zip beside it")
    pk.add_argument("--root", default=str(course.REPO_ROOT), help=argparse.SUPPRESS)
    pk.set_defaults(func=_cmd_pack)

    _add_manual(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    course.ensure_path()
    return int(args.func(args) or 0)
