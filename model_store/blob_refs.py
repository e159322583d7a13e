"""Who still needs a blob: dataset files, model versions and checkpoints share the one
content-addressed store (identical bytes are stored once), so a blob goes only when no row of any
tenant names its digest any more.

Deleting a file refuses (Conflict, saying why) while an active job trains on it or a version's
lineage names it; a job's surplus checkpoints (beyond the best and the last N) go when it ends
(succeeded or failed: the trainer; cancelled: the gateway).
The rows go first, in one transaction; the blob is unlinked after, and only if nothing references
it then (an upload of the same bytes that lands between the two keeps a row: the next delete of
it finds the blob gone and it reads as an integrity failure, not as someone else's data).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from model_store.blobs import BlobStore
from model_store.db import CheckpointRow, FileRow, FineTuneJobRow, ModelRow, ModelVersionRow
from model_store.errors import Conflict, NotFound
from model_store.jobs import ACTIVE


def referenced(s: Session, sha256: str) -> bool:
    """Does any file, version or checkpoint row (of any tenant) name this digest?"""
    for column in (FileRow.sha256, ModelVersionRow.sha256, CheckpointRow.sha256):
        if s.scalar(select(column).where(column == sha256).limit(1)) is not None:
            return True
    return False


def release(sessions: sessionmaker[Session], blobs: BlobStore, digests: set[str]) -> list[str]:
    """Unlink the blobs of `digests` that nothing references; the ones removed."""
    gone: list[str] = []
    with sessions() as s:
        for sha in sorted(digests):
            if not referenced(s, sha) and blobs.delete(sha):
                gone.append(sha)
    return gone


def _file_id(ref: Any) -> str | None:
    """A file as a lineage names it: `{"id": ..., "sha256": ...}` (what jobs write), or the bare id
    (what compression jobs wrote before; databases still hold it), or nothing."""
    if isinstance(ref, str):
        return ref or None
    if isinstance(ref, dict) and isinstance(ref.get("id"), str):
        return ref["id"] or None
    return None


def lineage_files(lineage: dict[str, Any] | None) -> set[str]:
    """The ids of the dataset files a version's lineage names (its training and validation files)."""
    if not isinstance(lineage, dict):
        return set()
    named = (_file_id(lineage.get(key)) for key in ("training_file", "validation_file"))
    return {file_id for file_id in named if file_id is not None}


def _file_users(s: Session, tenant_id: int, file_id: str) -> str | None:
    """Why the file cannot go, or None."""
    job = s.scalar(
        select(FineTuneJobRow.id).where(
            FineTuneJobRow.tenant_id == tenant_id,
            FineTuneJobRow.status.in_(ACTIVE),
            (FineTuneJobRow.training_file == file_id) | (FineTuneJobRow.validation_file == file_id),
        )
    )
    if job is not None:
        return f"file {file_id!r} is used by the active job {job}"
    q = (
        select(ModelRow.name, ModelVersionRow.version, ModelVersionRow.lineage)
        .join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
        .where(ModelRow.tenant_id == tenant_id, ModelVersionRow.lineage.is_not(None))
    )
    for name, version, lineage in s.execute(q):
        if file_id in lineage_files(lineage):
            return f"file {file_id!r} is in the lineage of {name}:{version}; delete that version first"
    return None


def delete_file(sessions: sessionmaker[Session], blobs: BlobStore, tenant_id: int, file_id: str) -> bool:
    """Delete a tenant's file row (NotFound, or Conflict with the reason it is still needed),
    then its blob if nothing else references it. True if the blob went too."""
    with sessions() as s:
        row = s.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.tenant_id == tenant_id))
        if row is None:
            raise NotFound(f"file {file_id!r} not found")
        why = _file_users(s, tenant_id, file_id)
        if why is not None:
            raise Conflict(why)
        sha = row.sha256
        s.delete(row)
        s.commit()
    return bool(release(sessions, blobs, {sha}))


def prune_checkpoints(
    sessions: sessionmaker[Session], blobs: BlobStore, job_id: str, keep_last: int, best_epoch: int | None
) -> list[int]:
    """When a job ends: delete its checkpoints but the best epoch's and the last `keep_last`,
    then their blobs when unreferenced. The epochs deleted."""
    with sessions() as s:
        rows = list(
            s.scalars(
                select(CheckpointRow).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.epoch)
            )
        )
        keep = {r.epoch for r in rows[-keep_last:]} if keep_last > 0 else set()
        if best_epoch is not None:
            keep.add(best_epoch)
        drop = [r for r in rows if r.epoch not in keep]
        if not drop:
            return []
        s.execute(delete(CheckpointRow).where(CheckpointRow.id.in_([r.id for r in drop])))
        s.commit()
        digests = {r.sha256 for r in drop}
    release(sessions, blobs, digests)
    return [r.epoch for r in drop]


def prune_ended(sessions: sessionmaker[Session], blobs: BlobStore, job_id: str, keep_last: int) -> list[int]:
    """prune_checkpoints with the best epoch that the job's last checkpoint records."""
    with sessions() as s:
        q = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
        last = s.scalar(q.order_by(CheckpointRow.epoch.desc()).limit(1))
        best = int((last.metrics or {}).get("best_epoch") or 0) if last is not None else 0
    return prune_checkpoints(sessions, blobs, job_id, keep_last, best or None)
