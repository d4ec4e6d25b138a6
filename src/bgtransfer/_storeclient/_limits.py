"""``GET/POST /v1/limits`` on a PostgreSQL store: the fleet's bandwidth caps (what
``bgtransfer limit`` sets), with the origins cooling down. The same requests and answers as
the daemon's; the caps are the fleet's totals, shared out by the workers (``_fleet._pace``),
who hear of a change at once (the ``limits`` table's trigger notifies them)."""

from __future__ import annotations

import time
from typing import Any

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._validate import check_url
from bgtransfer._scheduling import check_rate
from bgtransfer._store._postgres import PostgresStore

__all__ = ["limits"]


def limits(db: PostgresStore, method: str, body: Any) -> dict[str, Any]:
    """Set a cap (POST) and answer the caps now in force (GET and POST)."""
    if method == "POST":
        if not isinstance(body, dict) or not body:
            raise InvalidRequest('limits need {"global": RATE} or {"origin": URL, "rate": RATE}')
        if set(body) == {"global"}:
            db.set_limit(None, check_rate("global", body["global"]))
        elif set(body) == {"origin", "rate"}:
            url = body["origin"]
            check_url(url)
            db.set_limit(origin_key(url), check_rate("rate", body["rate"]))
        else:
            raise InvalidRequest(f"unknown limit fields: {', '.join(sorted(body))}")
    elif method != "GET":
        raise InvalidRequest(f"no such request: {method} /v1/limits")
    glob, origins = db.limits()
    cooling = {o: until for o, until, _ in db.cooldowns(time.time())}
    return {"global": glob, "origins": dict(sorted(origins.items())), "cooling": cooling}
