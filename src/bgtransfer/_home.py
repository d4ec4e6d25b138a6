"""Which directory is the home, and which store holds the tasks: the one place the API, the
CLI and the daemon ask."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import platformdirs

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._redact import redact
from bgtransfer._trust import prepare_home

__all__ = [
    "HOME_STORE",
    "STORE_ENV",
    "StoreChoice",
    "choose_store",
    "parse_store",
    "redact_store_url",
    "resolve_home",
    "resolve_store",
]


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """The home directory: argument, else $BGTRANSFER_HOME, else the user state dir.

    Created 0700 if missing; raises :class:`UnsafeHome` if another user owns it or it is
    group- or world-writable (see "Security model" in the README).
    """
    chosen = (
        os.fspath(home)
        if home is not None
        else os.environ.get("BGTRANSFER_HOME") or platformdirs.user_state_dir("bgtransfer")
    )
    path = os.path.abspath(os.path.expanduser(chosen))
    prepare_home(path)
    return path


# -- which store -------------------------------------------------------------------------

STORE_ENV = "BGTRANSFER_STORE"
HOME_STORE = "bgtransfer.sqlite3"  # the home's own store (the embedded default)
_PG_SCHEMES = ("postgresql", "postgres")
_SECRET_PARAM = re.compile(r"(?i)((?:^|[?&;\s])password=)[^&;\s]*")


@dataclass(frozen=True, slots=True)
class StoreChoice:
    """A store named by URL: the home's SQLite file, or a PostgreSQL database (fleet mode).

    ``home``: for ``sqlite://``, the home directory whose store it is (its daemon runs the
    tasks, as without a URL); None for PostgreSQL, whose workers run them."""

    url: str
    kind: str  # "sqlite" or "postgresql"
    home: str | None = None

    @property
    def fleet(self) -> bool:
        return self.kind == "postgresql"

    @property
    def shown(self) -> str:
        """The URL as printed: any password replaced by ``***``."""
        return redact_store_url(self.url)


def redact_store_url(url: str) -> str:
    """``url`` without its password, whether in the userinfo or a ``password=`` parameter."""
    return _SECRET_PARAM.sub(r"\1***", redact(url))


def parse_store(url: object) -> StoreChoice:
    """Check a store URL: ``sqlite:///HOME`` or ``sqlite:///HOME/bgtransfer.sqlite3`` (a
    home's store), or ``postgresql://user@host:port/db``. InvalidRequest says what is wrong,
    without the URL's password."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(
            f"the store must be a URL (sqlite:///path or postgresql://...): {url!r}"
        )
    shown = redact_store_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidRequest(
            f"the store must be a URL, sqlite:///path or postgresql://user@host:port/db: {shown!r}"
        )
    if scheme.lower() in _PG_SCHEMES:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise InvalidRequest(f"bad PostgreSQL URL {shown!r}: {exc}") from None
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise InvalidRequest(
                f"a PostgreSQL store URL names its database: postgresql://user@host:port/db, "
                f"not {shown!r}"
            )
        return StoreChoice(url, "postgresql")
    if scheme.lower() == "sqlite":
        path = unquote(rest)
        if not path.startswith("/"):
            raise InvalidRequest(
                f"a SQLite store URL names an absolute path (sqlite:///path/to/home): {shown!r}"
            )
        path = os.path.normpath(path)
        home = os.path.dirname(path) if os.path.basename(path) == HOME_STORE else path
        return StoreChoice(url, "sqlite", home)
    raise InvalidRequest(
        f"unknown store {scheme!r} in {shown!r}: use sqlite:///path or "
        "postgresql://user@host:port/db"
    )


def resolve_store(store: str | None = None) -> StoreChoice | None:
    """The store chosen by argument, else $BGTRANSFER_STORE; None: the home's own (the
    default, exactly as without either)."""
    chosen = store if store is not None else os.environ.get(STORE_ENV) or None
    return None if chosen is None else parse_store(chosen)


def choose_store(
    store: str | None, home: str | os.PathLike[str] | None, background: bool
) -> tuple[StoreChoice | None, str | os.PathLike[str] | None]:
    """(the PostgreSQL store of a fleet-mode session or None, the home): an argument beats
    $BGTRANSFER_STORE, and a ``sqlite://`` store names a home."""
    chosen = resolve_store(store)
    if chosen is None:
        return None, home
    if chosen.fleet:
        if background:
            return chosen, home
        if store is None:
            return None, home  # $BGTRANSFER_STORE is for background work; this runs here
        raise InvalidRequest(
            f"a PostgreSQL store's tasks run on the fleet's workers: background=False "
            f"needs the home's own store (store {chosen.shown!r})"
        )
    if home is None:
        return None, chosen.home
    if store is not None and os.path.abspath(os.fspath(home)) != chosen.home:
        raise InvalidRequest(f"home={os.fspath(home)!r} and store={chosen.shown!r} name two homes")
    return None, home  # home= given beats $BGTRANSFER_STORE
