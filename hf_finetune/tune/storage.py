"""Where a search's study lives: an optuna storage from a URL (`open_storage`). The default is the SQLite
file in the tune dir; --storage takes any other: PostgreSQL or MySQL (the study that workers on several
machines share), another SQLite file, or an optuna journal file (``journal:PATH``) on shared storage.
A URL that names a database without a driver gets an installed one; a missing driver or a database that
cannot be reached is an input error that names the URL (password hidden) and what to do.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import optuna

from ..errors import FinetuneError, first_line

#: the drivers tried, in order, for a storage URL that names a database but no driver, and their pip names
DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2-binary")),
    "mysql": (("pymysql", "pymysql"), ("mysqldb", "mysqlclient")),
}
#: the package extra that installs the first of each database's drivers
EXTRAS = {"postgresql": "postgres", "mysql": "mysql"}
JOURNAL_PREFIX = "journal:"
#: a storage URL that holds a password goes to child processes in this variable, not on a command line
URL_ENV = "HF_FINETUNE_TUNE_STORAGE"
FROM_ENV = "env:" + URL_ENV


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages and files."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def with_driver(url: str) -> str:
    """``url`` with a driver a storage can connect through: `postgresql://` and `mysql://` name none, so the
    first installed of `DRIVERS` is added (psycopg 3 first: SQLAlchemy's own default is psycopg2). Raises
    FinetuneError naming the URL and the package to install when no driver is, or the URL is not one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise FinetuneError(
            f"--storage {url!r}: not a database URL; give sqlite:///PATH, postgresql://USER@HOST/DB, "
            f"mysql://USER@HOST/DB or {JOURNAL_PREFIX}PATH (a journal file on shared storage)."
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    candidates = DRIVERS.get(backend)
    if candidates is None or driver:
        return url
    for module, _package in candidates:
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=f"{backend}+{module}").render_as_string(hide_password=False)
    raise FinetuneError(
        f"--storage {shown_url(url)}: no {backend} driver is installed; install one of "
        f"{', '.join(package for _, package in candidates)} (pip install 'hf-finetune[{EXTRAS[backend]}]')."
    )


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The study's storage. A database URL opens an RDBStorage: the search, its workers and their trials'
    processes write to it at the same time, so a SQLite writer waits up to two minutes for the lock, and a
    server connection is checked before use and given 10 s to open. ``journal:PATH``: optuna's journal file.
    Raises FinetuneError (the URL, what failed, what to check) when the driver is missing or the database
    cannot be reached."""
    url = received_url(url)
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len(JOURNAL_PREFIX) :]
        try:
            return JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise FinetuneError(f"--storage {url}: cannot open the journal file: {exc}.") from None
    from sqlalchemy.exc import SQLAlchemyError

    given, url = url, with_driver(url)
    backend = url.split(":", 1)[0].split("+", 1)[0]
    if backend == "sqlite":
        # pysqlite's own BEGIN comes only at the first write, so a transaction's reads (optuna's "is this
        # trial still waiting?" before it takes it) would not be atomic with its writes across processes:
        # autocommit off at the driver, and every transaction opened with BEGIN IMMEDIATE (the write lock)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120, "isolation_level": None}}
    else:  # PostgreSQL, MySQL: optuna locks the rows it changes (SELECT ... FOR UPDATE)
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        if backend == "sqlite":
            from sqlalchemy import event

            event.listen(storage.engine, "begin", _begin_immediate)
        return storage
    except ImportError:  # a driver named in the URL (postgresql+pg8000://) that is not installed
        driver = given.split(":", 1)[0].partition("+")[2]
        raise FinetuneError(
            f"--storage {shown_url(given)}: its driver {driver} is not installed; pip install it, or leave the "
            f"driver out ({backend}://...) to use an installed one."
        ) from None
    except RuntimeError as exc:  # optuna: a database of another optuna version's schema
        raise FinetuneError(f"--storage {shown_url(given)}: {first_line(exc)}") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise FinetuneError(
            f"--storage {shown_url(given)}: cannot open the database: {reason}. Check that the server runs and "
            "takes connections at that address, that the database exists, and the user and password."
        ) from None


def _begin_immediate(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def pass_url(url: str, env: dict[str, str]) -> str:
    """What a child process gets as ``url`` on its command line (which `ps` shows to every user): the URL
    itself, or, when it holds a password, `FROM_ENV` with the URL put in ``env`` under `URL_ENV`."""
    if url.startswith(JOURNAL_PREFIX) or shown_url(url) == url:
        return url
    env[URL_ENV] = url
    return FROM_ENV


def received_url(url: str) -> str:
    """The URL a child was given by `pass_url`."""
    if url != FROM_ENV:
        return url
    import os

    found = os.environ.get(URL_ENV)
    if not found:
        raise FinetuneError(f"--storage {FROM_ENV}: the environment has no {URL_ENV}.")
    return found
