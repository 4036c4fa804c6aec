"""A real PostgreSQL server for the tests: Debian's `postgresql` package's binaries (`.ci/run` installs the
package), a new cluster in a temp dir, listening on 127.0.0.1 on a free port, trust authentication, stopped
and removed at the end. PostgreSQL refuses to run as root: as root, the server runs as the package's
`postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import free_port


def server_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (the newest version installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway server; yields the URL of its database `tune` (user postgres, no password)."""
    bindir = server_bin()
    assert bindir is not None, "no PostgreSQL server installed (Debian: apt-get install postgresql)"
    root = Path(tempfile.mkdtemp(prefix="hf-finetune-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server will not run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    env = {**os.environ, "LC_ALL": "C"}

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=100"
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "server.log"),
            "-w",
            "start",
        )
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tune")
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                env=env,
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)
