"""Control-protocol routes for jobs and bandwidth limits (added to the daemon's app).

=======  ===============================  ==================================================
POST     /v1/jobs                         schedule (body: session, url, path, every,
                                          start_at, download options); 201 with the job
GET      /v1/jobs?session=S               list jobs, each with its latest runs
GET      /v1/jobs/{id}                    one job (an id prefix works), every run
DELETE   /v1/jobs/{id}                    unschedule (a run in progress finishes)
GET      /v1/limits                       {"global", "origins", "cooling"}
POST     /v1/limits                       {"global": RATE|null} or {"origin": URL,
                                          "rate": RATE|null}; RATE is bytes/s or "4M"
=======  ===============================  ==================================================
"""

from __future__ import annotations

from aiohttp import web

from bgtransfer._daemon._context import Parts
from bgtransfer._exceptions import InvalidRequest
from bgtransfer._jobspec import find_job
from bgtransfer._protocol._origin import origin_key
from bgtransfer._protocol._validate import check_url
from bgtransfer._scheduling import check_rate
from bgtransfer._store._jobs import JobRow

__all__ = ["add_routes"]


def _find(daemon: Parts, ident: str) -> JobRow:
    return find_job(daemon.store, ident)


def add_routes(app: web.Application, daemon: Parts) -> None:
    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise InvalidRequest("a job must be a JSON object")
        job = daemon.jobs.add(body)
        return web.json_response(daemon.jobs.wire(job), status=201)

    async def listing(request: web.Request) -> web.Response:
        session = request.query.get("session")
        return web.json_response([daemon.jobs.wire(j) for j in daemon.store.list_jobs(session)])

    async def one(request: web.Request) -> web.Response:
        job = _find(daemon, request.match_info["id"])
        return web.json_response(daemon.jobs.wire(job, all_runs=True))

    async def remove(request: web.Request) -> web.Response:
        job = _find(daemon, request.match_info["id"])
        daemon.store.delete_job(job.id)
        return web.json_response({"id": job.id, "removed": True})

    def _limits() -> dict[str, object]:
        out = daemon.engine.rates.settings()
        out["cooling"] = daemon.engine.polite.snapshot()
        return out

    async def get_limits(request: web.Request) -> web.Response:
        return web.json_response(_limits())

    async def set_limits(request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not body:
            raise InvalidRequest('limits need {"global": RATE} or {"origin": URL, "rate": RATE}')
        if set(body) == {"global"}:
            daemon.engine.set_limit(None, check_rate("global", body["global"]))
        elif set(body) == {"origin", "rate"}:
            url = body["origin"]
            check_url(url)
            daemon.engine.set_limit(origin_key(url), check_rate("rate", body["rate"]))
        else:
            raise InvalidRequest(f"unknown limit fields: {', '.join(sorted(body))}")
        return web.json_response(_limits())

    app.router.add_post("/v1/jobs", create)
    app.router.add_get("/v1/jobs", listing)
    app.router.add_get("/v1/jobs/{id}", one)
    app.router.add_delete("/v1/jobs/{id}", remove)
    app.router.add_get("/v1/limits", get_limits)
    app.router.add_post("/v1/limits", set_limits)
