"""Where a study is stored: SQLite in its run directory by default, a journal file when several local
workers share it, or any Optuna RDB URL (PostgreSQL, MySQL) for workers on many hosts.

SQLite serialises writers with a file lock that concurrent processes trip over ("database is locked"),
so local multi-process runs use Optuna's journal file storage instead: an append-only log that many
processes write safely. kdnas names it with its own URL form, ``journal:///path/to/study.journal``.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_plus

from kdnas.errors import KdnasError, first_line

if TYPE_CHECKING:
    import optuna

__all__ = [
    "JOURNAL_PREFIX",
    "journal_url",
    "HEARTBEAT_GRACE_S",
    "hide_password",
    "scrub",
    "local_file",
    "default_url",
    "shareable_url",
    "open_storage",
]

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:///"
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120  # an RDB trial without a heartbeat for this long belonged to a dead worker


def journal_url(path: Path) -> str:
    """The kdnas URL of a journal file: ``journal:///`` and its absolute path."""
    return JOURNAL_PREFIX + str(path.resolve()).lstrip("/")


# "scheme://user:" then the password, which runs to the LAST "@": an unencoded "@" or "/" in a password
# cannot hide it, and a URL that is otherwise broken (a non-numeric port, a bad host) is still masked.
_USERINFO_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/@?#]*:)(?P<password>.*)@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&][\w.-]*password=)(?P<password>[^&#]*)", re.IGNORECASE)


def _passwords(url: str) -> list[str]:
    """Every password ``url`` carries: in its query string (``?password=``) and in its user info."""
    found = [m["password"] for m in _QUERY_PASSWORD.finditer(url)]
    if (match := _USERINFO_PASSWORD.match(_QUERY_PASSWORD.sub(r"\g<head>***", url))) is not None:
        found.append(match["password"])
    return [p for p in found if p]


def hide_password(url: str) -> str:
    """A storage URL fit for messages: every password in it replaced by ***, whether or not it parses."""
    return _USERINFO_PASSWORD.sub(r"\g<head>***@", _QUERY_PASSWORD.sub(r"\g<head>***", url), count=1)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with ``url``'s passwords replaced by ***.

    Drivers echo the URL, or the password alone, raw or percent-decoded; each form is replaced.
    """
    for password in _passwords(url):
        for form in sorted({password, unquote(password), unquote_plus(password)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL; None for a server URL."""
    if url.startswith(JOURNAL_PREFIX):
        return Path("/" + url.removeprefix(JOURNAL_PREFIX))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def default_url(out_dir: Path) -> str:
    """The run directory's storage: its journal once several local workers shared it, else SQLite."""
    journal = out_dir / "study.journal"
    return journal_url(journal) if journal.exists() else f"sqlite:///{(out_dir / 'study.db').resolve()}"


def shareable_url(url: str, study_name: str) -> str:
    """A storage URL several local processes can share: a SQLite one is replaced by a journal file.

    A study already in the SQLite file is copied into the journal first, and the SQLite file renamed
    (``.moved-to-journal``), so that later runs, reports and exports find the one current copy.
    """
    if not url.startswith("sqlite:///"):
        return url
    import optuna

    db = local_file(url)
    journal = db.with_suffix(".journal")
    target = journal_url(journal)
    if db.exists() and not journal.exists():
        source = open_storage(url)
        if study_name in [s.study_name for s in optuna.get_all_study_summaries(source)]:
            optuna.copy_study(from_study_name=study_name, from_storage=source, to_storage=open_storage(target))
        db.rename(db.with_name(db.name + ".moved-to-journal"))
        log.info("storage: moved study %r from %s to %s", study_name, db, journal)
    log.info("storage: several workers share %s (SQLite is not safe for concurrent writers)", journal)
    return target


_CREATE_ATTEMPTS = 5
_CREATE_RACE = ("already exists", "duplicate key", "UniqueViolation", "UNIQUE constraint failed")


def _rdb_storage(url: str, heartbeat_grace_s: int) -> optuna.storages.RDBStorage:
    import optuna

    with warnings.catch_warnings():  # heartbeats are marked experimental, and have been for years
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            heartbeat_interval=max(1, min(HEARTBEAT_INTERVAL_S, heartbeat_grace_s // 4)),
            grace_period=heartbeat_grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )


def open_storage(url: str, heartbeat_grace_s: int = HEARTBEAT_GRACE_S) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url``; any failure is one line.

    RDB storages get heartbeats: a trial whose worker died is failed after ``heartbeat_grace_s`` and
    run again (twice at most) by whichever worker starts a trial next. A bare ``postgresql://`` URL
    uses psycopg 3 (installed with kdnas) rather than SQLAlchemy's default driver, psycopg2.

    Raises:
        KdnasError: driver missing, server down, bad URL, wrong password, unwritable file.
    """
    import optuna

    given = url
    try:
        if url.startswith(JOURNAL_PREFIX):
            backend = optuna.storages.journal.JournalFileBackend(str(local_file(url)))
            return optuna.storages.JournalStorage(backend)
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                return _rdb_storage(url, heartbeat_grace_s)
            except Exception as err:
                # Workers starting together on an empty database race to create Optuna's tables; the
                # losers see "already exists" or a duplicate key, and the tables are there a moment later.
                if attempt + 1 == _CREATE_ATTEMPTS or not any(s in str(err) for s in _CREATE_RACE):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except Exception as err:
        raise KdnasError(f"cannot open storage {hide_password(given)}: {scrub(first_line(err), given)}") from None
