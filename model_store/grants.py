"""Fine-tune grants on shared models, and the check that keeps fine-tuned copies honest.

Sharing a model lets other tenants call it. Fine-tuning it needs more: the owner's
`allow_finetune` on the share (for the tenants it is shared with, or for everyone if public).
A version fine-tuned from another tenant's model records in its lineage each grant it depends
on (`base_grants`: owner, model, grantee; a fine-tune of such a version inherits its parent's
grants), and a version whose grant is gone no longer resolves: unsharing, or switching
`allow_finetune` off, stops the copies from serving within the version cache TTL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from model_store.db import ModelRow, ModelShareRow, ModelVersionRow, TenantRow


def grants_finetune(s: Session, model: ModelRow, tenant_id: int) -> bool:
    """Whether `tenant_id` may fine-tune `model` (its own, or shared with allow_finetune)."""
    if model.tenant_id == tenant_id:
        return True
    if not model.allow_finetune:
        return False
    return model.visibility == "public" or s.get(ModelShareRow, (model.id, tenant_id)) is not None


def revoked_grant(s: Session, lineage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The first grant a version depends on that its owner has withdrawn (None: all hold)."""
    for grant in (lineage or {}).get("base_grants") or []:
        model = s.get(ModelRow, int(grant["model_id"]))
        if model is None or not grants_finetune(s, model, int(grant["grantee"])):
            return dict(grant)
    return None


def base_grants(s: Session, base_version_id: int, tenant_id: int) -> list[dict[str, Any]]:
    """The grants a version fine-tuned by `tenant_id` from `base_version_id` depends on."""
    row = s.get(ModelVersionRow, base_version_id)
    if row is None:
        return []
    model = s.get(ModelRow, row.model_id)
    grants = list((row.lineage or {}).get("base_grants") or [])
    if model is not None and model.tenant_id != tenant_id:
        owner = s.get(TenantRow, model.tenant_id)
        grants.append(
            {
                "owner": model.tenant_id,
                "owner_name": owner.name if owner is not None else "",
                "model_id": model.id,
                "model": model.name,
                "grantee": tenant_id,
            }
        )
    return grants
