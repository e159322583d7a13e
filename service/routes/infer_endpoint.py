"""The inference endpoint, `POST /v2/models/{m}[/versions/{v}]/infer`, over HTTP: read and decode
the body, then run it synchronously or accept it asynchronously (`Prefer: respond-async`).

One handler for both ways in: the FastAPI route (service/routes/inference.py) and the fast
path (service/routes/fastpath.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.deps import read_body
from service.inference.async_jobs import wants_async
from service.inference.oip import HEADER_LENGTH, decode_body, header_length
from service.responses import JSONBody
from service.state import AppState
from service.tenancy.api_keys import Principal


async def infer(
    request: Request, principal: Principal, state: AppState, model: str, version: str | None
) -> Response:
    limit = state.settings.max_body_bytes
    body = decode_body(await read_body(request, limit), request.headers.get("content-encoding"), limit)
    header_len = header_length(request.headers.get(HEADER_LENGTH), len(body))
    if wants_async(request.headers.get("prefer")):
        accepted = await state.async_inference.submit(principal, model, version, body, header_len)
        return JSONBody(
            {"id": accepted.request_id, "status": "queued"},
            status_code=202,
            headers={"Location": accepted.location, "Preference-Applied": "respond-async"},
        )
    out = await state.inference.infer(principal, model, version, body, header_len)
    return Response(out.body, media_type=out.media_type, headers=out.headers)
