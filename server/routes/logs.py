"""``GET /logs`` (wire-api section 5): pages of log lines that ``logs.watch`` and ``smply logs
watch`` can poll without busy-looping or repeating lines.

``from`` is exclusive, so the next call continues with ``from = maxTimestamp``; a page never splits
a millisecond; when nothing is new, ``maxTimestamp`` echoes ``from`` in ``toISOString()`` form (the
client then sleeps instead of polling again at once).
"""

from __future__ import annotations

import datetime

from aiohttp import web

from ..errors import InvalidParameter
from .common import LOGS, caller, iso, ok

routes = web.RouteTableDef()


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_YEAR_10000 = datetime.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=datetime.UTC)


def _instant(request: web.Request, parameter: str) -> int | None:
    raw = request.query.get(parameter)
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(f"{parameter} must be an ISO-8601 instant", parameter=parameter) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    if not _EPOCH <= moment < _YEAR_10000:
        raise InvalidParameter(f"{parameter} must be between 1970 and 9999 (UTC)", parameter=parameter)
    return int(moment.timestamp() * 1000)


@routes.get("/logs")
async def logs(request: web.Request) -> web.Response:
    org = (await caller(request)).require("logs.read")
    from_ms = _instant(request, "from")
    if from_ms is None:
        raise InvalidParameter("from is required", parameter="from")
    lines = await request.app[LOGS].after(
        org,
        from_ms,
        to_ms=_instant(request, "to"),
        machine_slug=request.query.get("machine") or None,
        instance_name=request.query.get("instance") or None,
        version_id=request.query.get("version") or None,
    )
    entries = [
        {
            "timestamp": iso(line.ts_ms),
            "orgId": line.org_id,
            "machineName": line.machine_slug,
            "instanceName": line.instance_name,
            "machineVersionId": line.version_id,
            "outputType": line.stream,
            "log": line.text,
        }
        for line in lines
    ]
    return ok({"maxTimestamp": iso(lines[-1].ts_ms) if lines else iso(from_ms), "logs": entries})
