"""A real MariaDB server for the tests: Debian's `mariadb-server` package's binaries (`.ci/run` installs the
package), a new data dir in a temp dir, listening on 127.0.0.1 on a free port, user root without a password,
stopped and removed at the end. As root, the server runs as the package's `mysql` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import free_port

SERVER = Path("/usr/sbin/mariadbd")
INSTALL_DB = Path("/usr/bin/mariadb-install-db")


def installed() -> bool:
    return SERVER.is_file() and INSTALL_DB.is_file()


@contextlib.contextmanager
def mariadb_server() -> Iterator[str]:
    """Start a throwaway server; yields the URL of its database `tune` (user root, no password)."""
    assert installed(), "no MariaDB server installed (Debian: apt-get install mariadb-server)"
    import pymysql

    root = Path(tempfile.mkdtemp(prefix="hf-finetune-mariadb-"))
    data = root / "data"
    user = []
    if os.geteuid() == 0:  # mariadbd will not run as root unless told to
        owner = pwd.getpwnam("mysql")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        user = ["--user=mysql"]
    port = free_port()
    server = None
    try:
        done = subprocess.run(
            [str(INSTALL_DB), "--no-defaults", *user, f"--datadir={data}", "--skip-test-db"]
            + ["--auth-root-authentication-method=normal"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        log = root / "server.log"
        files = [
            f"--datadir={data}",
            f"--socket={root / 'sock'}",
            f"--pid-file={root / 'pid'}",
            f"--log-error={log}",
        ]
        server = subprocess.Popen(
            [str(SERVER), "--no-defaults", *user, *files, f"--port={port}", "--bind-address=127.0.0.1"]
            + ["--skip-log-bin", "--innodb-flush-log-at-trx-commit=0", "--max-connections=100"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=2)
                break
            except pymysql.err.OperationalError:
                assert server.poll() is None, log.read_text() if log.exists() else "mariadbd ended"
                assert time.monotonic() < deadline, "MariaDB did not take connections in 2 min"
                time.sleep(0.5)
        with conn, conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE tune")
        yield f"mysql://root@127.0.0.1:{port}/tune"
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root, ignore_errors=True)
