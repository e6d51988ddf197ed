"""A real PostgreSQL server on loopback for the test session: started from Debian's binaries, stopped after.

``KDNAS_TEST_POSTGRES`` (``postgresql://user:password@host:port``, no database: the tests create their
own) uses a server that is already running instead. Where no PostgreSQL is installed, the tests that
need one skip and say so, or fail in CI (``_needs``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _needs import postgres_bin_dir, require

USER = PASSWORD = "kdnas"
_databases = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a server (without a database name) where USER may create databases."""
    require("postgresql")
    if os.environ.get("KDNAS_TEST_POSTGRES"):
        yield os.environ["KDNAS_TEST_POSTGRES"].rstrip("/")
        return
    bin_dir = postgres_bin_dir()
    # initdb refuses to run as root: the server runs as Debian's postgres user then, in a folder it owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="kdnas-pg-"))
    root.chmod(0o755)
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PASSWORD)
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    try:
        run(bin_dir / "initdb", "-D", data, "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200"
        run(bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", root / "server.log", "-w", "start")
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL is installed but did not start: {err.stderr.decode().strip()[-300:]}")
    try:
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new, empty database on the session's server."""
    import psycopg

    name = f"kdnas_test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"
