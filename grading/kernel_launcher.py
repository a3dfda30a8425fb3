"""Start an IPython kernel as an unprivileged user (used by the autograder when it runs as root).

The grading kernelspec's argv is ``python -m grading.kernel_launcher --uid U --gid G --home H
-f {connection_file}``. Still as root, this copies the connection file (written 0600 by
jupyter_client) into ``H`` for user ``U``, sets resource limits, drops to ``U:G`` with no
supplementary groups, and ``exec``s ``python -m ipykernel_launcher``. Student code therefore cannot
write the repository, the gradebooks or another student's folders (all owned by root or another
uid); it can write only ``H`` (its ``HOME`` and ``TMPDIR``).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--max-file-mb", type=int, default=512)
    p.add_argument("-f", dest="connection_file", required=True)
    args, rest = p.parse_known_args(argv)

    home = args.home
    os.makedirs(home, exist_ok=True)
    conn = os.path.join(home, "kernel-connection.json")
    shutil.copyfile(args.connection_file, conn)
    os.chown(home, args.uid, args.gid)
    os.chmod(home, 0o700)
    os.chown(conn, args.uid, args.gid)
    os.chmod(conn, 0o600)
    limit = args.max_file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (512, 512))  # no fork bombs (counted per uid)

    env = dict(os.environ)
    env.update(HOME=home, TMPDIR=home, MPLCONFIGDIR=os.path.join(home, ".mpl"),
               XDG_CACHE_HOME=os.path.join(home, ".cache"), USER="student", LOGNAME="student",
               IPYTHONDIR=os.path.join(home, ".ipython"), JUPYTER_RUNTIME_DIR=home)
    os.setgroups([])
    os.setgid(args.gid)
    os.setuid(args.uid)
    if os.getuid() != args.uid or os.geteuid() != args.uid:
        raise SystemExit("could not drop privileges")
    os.execve(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", conn] + rest, env)


if __name__ == "__main__":
    main()
