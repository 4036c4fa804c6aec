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

from ..errors import FinetuneError

#: the drivers tried, in order, for a storage URL that names a database but no driver, and their pip names
DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2-binary")),
    "mysql": (("pymysql", "pymysql"), ("mysqldb", "mysqlclient")),
}
JOURNAL_PREFIX = "journal:"


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
    extra = " (pip install 'hf-finetune[postgres]')" if backend == "postgresql" else ""
    raise FinetuneError(
        f"--storage {shown_url(url)}: no {backend} driver is installed; install one of "
        f"{', '.join(package for _, package in candidates)}{extra}."
    )


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The study's storage. A database URL opens an RDBStorage: the search, its workers and their trials'
    processes write to it at the same time, so a SQLite writer waits up to two minutes for the lock, and a
    server connection is checked before use and given 10 s to open. ``journal:PATH``: optuna's journal file.
    Raises FinetuneError (the URL, what failed, what to check) when the driver is missing or the database
    cannot be reached."""
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
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:  # a driver named in the URL (postgresql+psycopg2://) that is not installed
        raise FinetuneError(
            f"--storage {shown_url(given)}: its driver is not installed ({exc}); pip install it, or name an "
            "installed one (postgresql+psycopg://...)."
        ) from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise FinetuneError(
            f"--storage {shown_url(given)}: cannot open the database: {reason}. Check that the server runs and "
            "takes connections at that address, that the database exists, and the user and password."
        ) from None
