"""Storage URLs in messages: a password is never shown, whatever the URL and whatever the driver says."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kdnas import search
from kdnas.errors import KdnasError
from kdnas.storage import hide_password, open_storage, scrub


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("postgresql://u:secret@host:5432/db", "postgresql://u:***@host:5432/db", id="plain"),
        pytest.param("postgresql://u:secret@host:port/db", "postgresql://u:***@host:port/db", id="bad-port"),
        pytest.param("postgresql://u:secret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db", id="ipv6"),
        pytest.param("postgresql://u:secret@[::1/db", "postgresql://u:***@[::1/db", id="broken-ipv6"),
        pytest.param("postgresql://u:p%40ss@host/db", "postgresql://u:***@host/db", id="percent-encoded"),
        pytest.param("postgresql://u:p@ss/w:rd@host:1/db", "postgresql://u:***@host:1/db", id="at-slash-colon"),
        pytest.param("postgresql://:secret@host/db", "postgresql://:***@host/db", id="no-user"),
        pytest.param(
            "postgresql://host/db?user=u&Password=secret&sslmode=off",
            "postgresql://host/db?user=u&Password=***&sslmode=off",
            id="query",
        ),
        pytest.param(
            "mysql+pymysql://u:secret@host/db?sslpassword=a@b#x",
            "mysql+pymysql://u:***@host/db?sslpassword=***#x",
            id="both",
        ),
        pytest.param("postgresql://u@host:5432/db", "postgresql://u@host:5432/db", id="no-password"),
        pytest.param("sqlite:////runs/a:b@c/study.db", "sqlite:////runs/a:b@c/study.db", id="sqlite"),
        pytest.param("journal:///runs/a:b@c/study.journal", "journal:///runs/a:b@c/study.journal", id="journal"),
    ],
)
def test_hide_password(url: str, shown: str) -> None:
    assert hide_password(url) == shown


def test_scrub_replaces_the_password_raw_and_percent_decoded() -> None:
    url = "postgresql://u:p%40ss+w@host/db?password=q%2Fx"
    message = f"could not connect to {url}: password 'p@ss w' (p@ss+w) rejected; q/x q%2Fx"
    assert (
        scrub(message, url)
        == "could not connect to postgresql://u:***@host/db?password=***: password '***' (***) rejected; *** ***"
    )
    assert scrub("no secret here", "sqlite:////tmp/study.db") == "no secret here"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://u:secret@127.0.0.1:notaport/db", id="bad-port"),
        pytest.param(f"postgresql://u:secret@127.0.0.1:{_closed_port()}/db", id="closed-port"),
        pytest.param(f"postgresql://u:se%63ret@[::1]:{_closed_port()}/db?password=secret", id="ipv6-query"),
    ],
)
def test_a_driver_error_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(KdnasError, match="^cannot open storage postgresql://u:\\*\\*\\*@") as caught:
        open_storage(url)
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://u:secret@127.0.0.1:notaport/db", id="bad-port"),
        pytest.param(f"postgresql://u:secret@127.0.0.1:{_closed_port()}/db", id="closed-port"),
        pytest.param("postgresql://u:sec@ret@[::1:5432/db?password=secret", id="broken-ipv6"),
    ],
)
@pytest.mark.parametrize("verbosity", [[], ["-v"]], ids=["default", "verbose"])
@pytest.mark.needs("dataset-fashion-mnist")  # the search reads its data before it opens the storage
def test_search_with_a_bad_storage_url_never_prints_the_password(
    url: str, verbosity: list[str], tmp_path: Path, capsys
) -> None:
    argv = ["--study", "smoke", "--out", str(tmp_path / "run"), "--storage", url, "--device", "cpu", *verbosity]
    assert search.main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: cannot open storage postgresql://u:***@") and err.count("\n") == 1
    assert "sec" not in out + err  # log records go to stderr too
