"""The database as a shared, bounded resource: telling "the database cannot take this request now" from a
bug, and keeping connection pools out of forked children.

With PostgreSQL each process draws its connections from a pool (`DATABASES["default"]["OPTIONS"]["pool"]`,
config/settings.py). A request that waits longer than the pool's timeout for a connection, or that finds the
server refusing connections (too many clients, shutting down, restarting), is not a bug in the request: it is
answered 503 with Retry-After (core.middleware), and trying again later works.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.db import OperationalError

# SQLSTATEs of a server that cannot take the connection now (class 08: connection exceptions; 53300:
# too_many_connections; 57P01-57P03: admin_shutdown, crash_shutdown, cannot_connect_now). Deadlocks,
# serialization failures and cancelled statements are OperationalErrors too, but not these: they stay errors.
_UNAVAILABLE_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03")


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (as Django raises it: `django.db.OperationalError` wrapping the driver's error) says
    the database could not be reached or no connection was free, rather than that a query was wrong."""
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    if cause is None:
        return False
    from psycopg_pool import PoolTimeout  # here: a SQLite set-up never loads the driver

    if isinstance(cause, PoolTimeout):
        return True
    module = type(cause).__module__ or ""
    if not module.startswith("psycopg"):
        return False
    sqlstate = getattr(cause, "sqlstate", None)
    # No SQLSTATE: the client lost or never got its connection (refused, reset, server closed it).
    return sqlstate is None or str(sqlstate).startswith(_UNAVAILABLE_SQLSTATES)


# A forked child must never use its parent's pooled connections (their sockets are the parent's). The pools
# it inherits are kept here, never used and never closed (psycopg does not close a connection object made by
# another process when it is collected, but holding them makes sure no pool thread state is touched either).
_INHERITED_POOLS: list[Any] = []


def forget_inherited_pools() -> None:
    """`os.register_at_fork(after_in_child=...)`: the child opens pools of its own on first use (exports fork
    writer processes; Celery's prefork pool forks its children)."""
    module = sys.modules.get("django.db.backends.postgresql.base")
    if module is None:
        return
    pools: dict[str, Any] = module.DatabaseWrapper._connection_pools
    if pools:
        _INHERITED_POOLS.extend(pools.values())
        pools.clear()


def register_fork_hook() -> None:
    os.register_at_fork(after_in_child=forget_inherited_pools)
