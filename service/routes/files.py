"""Dataset files for fine-tuning: upload (validated, with a line-numbered report), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile

from service.deps import FinetuneDep, FinetunePrincipal
from service.downloads import blob_response
from service.errors import PayloadTooLarge
from service.finetune.schemas import FileList, FilePublic

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", status_code=201, response_model=FilePublic)
async def upload_file(
    request: Request,
    principal: FinetunePrincipal,
    svc: FinetuneDep,
    file: Annotated[UploadFile, File(description="JSONL or CSV dataset")],
    purpose: Annotated[str, Form()] = "fine-tune",
) -> FilePublic:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > svc.state.settings.max_dataset_bytes + (1 << 20):
        raise PayloadTooLarge("dataset is over the size limit", param="file")
    return await svc.upload(principal.tenant_id, file, purpose)


@router.get("", response_model=FileList)
async def list_files(
    principal: FinetunePrincipal,
    svc: FinetuneDep,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> FileList:
    """Newest first; `after` and `limit` page as OpenAI's do (the SDK follows `has_more`)."""
    return await svc.records.list_files(principal.tenant_id, after, limit, purpose)


@router.get("/{file_id}", response_model=FilePublic)
async def get_file(file_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> FilePublic:
    return await svc.records.get_file(principal.tenant_id, file_id)


@router.delete("/{file_id}")
async def delete_file(file_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> dict[str, object]:
    await svc.records.delete_file(principal.tenant_id, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content")
async def file_content(file_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> Response:
    row = await svc.records.file_row(principal.tenant_id, file_id)
    media = "text/csv" if row.format == "csv" else "application/jsonl"
    return await blob_response(svc.state.blobs, row.sha256, row.filename, media)
