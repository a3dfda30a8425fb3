"""The course gradebook's writers, one at a time across processes (PostgreSQL).

Trusted: runs in the grader's own processes (autograde's coordinator; never a Dask worker or a
kernel).

nbgrader's ``Gradebook`` is SQLAlchemy, so ``--db`` takes any URL it knows: SQLite (the embedded
default, ``sqlite:///<out>/gradebook.db``) or PostgreSQL (``postgresql://user@host/db``, through
psycopg 3). Opening a ``Gradebook`` creates its tables when there are none and the course row when
it is missing, and autograde creates students and submissions: two autograde runs (two
assignments, two TAs) that do so at the same moment would both try to insert the same rows and one
would fail. :func:`writing` makes the writers take turns: on PostgreSQL with a session advisory
lock (``pg_advisory_lock``), which the server releases by itself if the process dies; SQLite
serializes its writers itself (a file lock).
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

#: The advisory lock's key: the same for every autograde process of the course.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"diffusion-course-gradebook").digest()[:8], "big", signed=True)


def is_postgres(db_url: str) -> bool:
    return db_url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextmanager
def writing(db_url: str) -> Iterator[None]:
    """Hold the course gradebook's writer lock (PostgreSQL) while the body opens and writes it."""
    if not is_postgres(db_url):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()
