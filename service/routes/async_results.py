"""Results of asynchronous inference requests (`Prefer: respond-async`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import InferPrincipal, StateDep
from service.responses import JSONBody

router = APIRouter(prefix="/v1/async", tags=["inference"])


@router.get(
    "/{request_id}",
    responses={202: {"description": "not finished yet"}, 404: {"description": "unknown or expired"}},
)
async def async_result(request_id: str, principal: InferPrincipal, state: StateDep) -> Response:
    out = await state.async_inference.result(principal, request_id)
    if out is None:
        return JSONBody({"id": request_id, "status": "queued"}, status_code=202, headers={"Retry-After": "1"})
    return Response(out.body, media_type=out.media_type, headers=out.headers)
