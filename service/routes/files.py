"""Dataset files for fine-tuning: upload (validated, with a line-numbered report), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from service.deps import FinetuneDep, FinetunePrincipal
from service.errors import PayloadTooLarge
from service.finetune.jobs import file_public
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
        raise PayloadTooLarge("dataset is over the size limit")
    return await svc.upload(principal.tenant_id, file, purpose)


@router.get("", response_model=FileList)
async def list_files(principal: FinetunePrincipal, svc: FinetuneDep) -> FileList:
    rows = await run_in_threadpool(svc.store.list_files, principal.tenant_id)
    return FileList(data=[file_public(r) for r in rows])


@router.get("/{file_id}", response_model=FilePublic)
async def get_file(file_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> FilePublic:
    return file_public(await run_in_threadpool(svc.store.get_file, principal.tenant_id, file_id))


@router.delete("/{file_id}")
async def delete_file(file_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> dict[str, object]:
    await run_in_threadpool(svc.store.delete_file, principal.tenant_id, file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content")
async def file_content(file_id: str, principal: FinetunePrincipal, svc: FinetuneDep) -> Response:
    row = await run_in_threadpool(svc.store.get_file, principal.tenant_id, file_id)
    data = await run_in_threadpool(svc.state.blobs.read_verified, row.sha256)
    media = "text/csv" if row.format == "csv" else "application/jsonl"
    return Response(
        data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{row.id}"'}
    )
