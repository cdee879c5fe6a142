"""``DATABASE_URL`` must parse as the user meant, or start-up stops with one line.

The rule (issue 23 item 7): a PostgreSQL URL is read the way libpq will read it
(psycopg's ``conninfo_to_dict``) and refused when that reading cannot be what was
meant — instead of a connection pool retrying every second with part of the password
taken for a host name and written to the log:

- the host holds an ``@``: the user or password has an unencoded ``@`` (libpq splits
  the URL at the *first* ``@``);
- the database name holds an ``@``: the password has an unencoded ``/``;
- a port is not a number: a password with ``/``, or ``user:password`` without
  ``@host``;
- libpq cannot parse it at all.

The messages never contain the URL: the caller shows the value with everything
before the host masked (:func:`mask_database_url`). Shared by the order service's
settings and the worker's (``reconcile`` reads the same variable).
"""

from __future__ import annotations

ENCODE = "percent-encode @ : / ? # in the user and password as %40 %3A %2F %3F %23"


def check_database_url(url: str) -> str:
    """Return ``url``, or raise ValueError saying what does not parse as meant."""
    if not url.startswith(("postgres://", "postgresql://")):
        return url
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        raise ValueError(f"does not parse as a PostgreSQL URL ({ENCODE})") from None
    if "@" in str(parts.get("host", "")):
        raise ValueError(f"the user or password contains an unencoded '@', so part of it would be "
                         f"taken for the host ({ENCODE})")
    if "@" in str(parts.get("dbname", "")):
        raise ValueError(f"the password contains an unencoded '/', so the rest would be taken for the "
                         f"database name ({ENCODE}; an '@' in the database name as %40)")
    ports = str(parts.get("port", "") or "")
    if ports and not all(p.isdigit() for p in ports.split(",") if p):
        raise ValueError(f"the port is not a number: is the password in place of the port, or the '@host' "
                         f"missing? ({ENCODE})")
    return url


def mask_database_url(url: str) -> str:
    """``scheme://***@host…`` (everything before the last ``@`` masked), or, with no
    ``@`` but a ``:`` before the path (``user:password/db``), ``scheme://***/db``: a
    malformed URL may hold a password anywhere before its host."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    authority, slash, path = rest.partition("/")
    if ":" not in authority:  # no room for a password (sqlite:///path, mysql://host)
        return url
    return f"{scheme}://***{slash}{path}"
