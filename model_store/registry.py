"""The model registry: models, versions (auto-increment per model), aliases, resolution.

Every query is scoped to a tenant; another tenant's object is NotFound, as if absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from model_store import grants
from model_store.blobs import BlobStore
from model_store.checks import FencedCheck
from model_store.db import AliasRow, ModelRow, ModelShareRow, ModelVersionRow, TenantRow, utcnow
from model_store.errors import Conflict, InvalidName, NotFound
from model_store.names import check_alias, check_model_name, is_tenant_name
from model_store.signature import Signature, VersionConfig

DEFAULT_ALIAS = "production"
SHARED_SEP = "~"  # "{owner tenant}~{model}" names a model another tenant shared
VISIBILITIES = ("private", "public")


@dataclass(frozen=True, slots=True)
class ResolvedVersion:
    """Everything the serving path needs to know about one model version."""

    version_id: int
    tenant_id: int
    model: str
    version: int
    format: str
    sha256: str
    signature: Signature
    config: VersionConfig
    adapter_of: int | None = None  # a lora-adapter: its base's version id (from the lineage)


def _ensure_model(s: Session, tenant_id: int, name: str, description: str) -> None:
    """Add the model (uncommitted) unless it exists; a concurrent creation wins."""
    q = select(ModelRow.id).where(ModelRow.tenant_id == tenant_id, ModelRow.name == name)
    if s.scalar(q) is not None:
        return
    try:
        with s.begin_nested():
            s.add(ModelRow(tenant_id=tenant_id, name=name, description=description))
    except IntegrityError:
        pass


def _alias_version(s: Session, model_id: int, alias: str) -> int | None:
    row = s.get(AliasRow, (model_id, alias))
    if row is None:
        return None
    target = s.get(ModelVersionRow, row.version_id)
    return None if target is None else target.version


def _resolved(model: ModelRow, row: ModelVersionRow) -> ResolvedVersion:
    return ResolvedVersion(
        version_id=row.id,
        tenant_id=model.tenant_id,
        model=model.name,
        version=row.version,
        format=row.format,
        sha256=row.sha256,
        signature=Signature.model_validate(row.signature),
        config=VersionConfig.model_validate(row.config),
        adapter_of=adapter_base(row.lineage),
    )


def adapter_base(lineage: dict[str, Any] | None) -> int | None:
    """The base version id a lora-adapter version is served on (its lineage's `adapter_of`)."""
    value = (lineage or {}).get("adapter_of")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


Check = Callable[[str, Path, Signature | None], Signature]


def create_tenant(
    sessions: sessionmaker[Session], name: str, limits: dict[str, float] | None = None
) -> TenantRow:
    """Add tenant `name` (Conflict if it exists): the one place a tenant is created."""
    with sessions() as s:
        row = TenantRow(name=name, limits=limits)
        s.add(row)
        try:
            s.commit()
        except IntegrityError as exc:
            raise Conflict(f"tenant {name!r} already exists") from exc
        return row


class Registry:
    """`check` validates an uploaded file and returns its signature; by default in a fenced
    child process (model_store.checks), so no model code runs in the caller."""

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, check: Check | None = None) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.check: Check = check or FencedCheck()

    # tenants -------------------------------------------------------------------------------
    def ensure_tenant(self, name: str) -> int:
        """The id of tenant `name`, created if it does not exist (safe against a concurrent create)."""
        with self.sessions() as s:
            found = s.scalar(select(TenantRow.id).where(TenantRow.name == name))
        if found is not None:
            return found
        try:
            return create_tenant(self.sessions, name).id
        except Conflict:
            with self.sessions() as s:
                return s.scalars(select(TenantRow.id).where(TenantRow.name == name)).one()

    # models --------------------------------------------------------------------------------
    def create_model(self, tenant_id: int, name: str, description: str = "") -> ModelRow:
        check_model_name(name)
        with self.sessions() as s:
            row = ModelRow(tenant_id=tenant_id, name=name, description=description)
            s.add(row)
            try:
                s.commit()
            except IntegrityError as exc:
                raise Conflict(f"model {name!r} already exists") from exc
            return row

    def _model(self, s: Session, tenant_id: int, name: str, *, lock: bool = False) -> ModelRow:
        check_model_name(name)
        q = select(ModelRow).where(ModelRow.tenant_id == tenant_id, ModelRow.name == name)
        if lock:
            q = q.with_for_update()
        row = s.scalar(q)
        if row is None:
            raise NotFound(f"model {name!r} not found")
        return row

    def get_model(self, tenant_id: int, name: str) -> ModelRow:
        with self.sessions() as s:
            return self._model(s, tenant_id, name)

    def has_model(self, tenant_id: int, name: str) -> bool:
        with self.sessions() as s:
            q = select(ModelRow.id).where(ModelRow.tenant_id == tenant_id, ModelRow.name == name)
            return s.scalar(q) is not None

    # sharing -------------------------------------------------------------------------------
    def _visible_model(self, s: Session, tenant_id: int, name: str) -> ModelRow:
        """The caller's own model, or `owner~model` if the owner made it public or shared it
        with the caller; anything else is NotFound, exactly as if it did not exist."""
        if SHARED_SEP not in name:
            return self._model(s, tenant_id, name)
        owner_name, _, model_name = name.partition(SHARED_SEP)
        if not is_tenant_name(owner_name):
            raise NotFound(f"model {name!r} not found")
        owner = s.scalar(select(TenantRow.id).where(TenantRow.name == owner_name))
        if owner is None:
            raise NotFound(f"model {name!r} not found")
        try:
            model = self._model(s, owner, model_name)
        except NotFound as exc:
            raise NotFound(f"model {name!r} not found") from exc
        if owner == tenant_id or model.visibility == "public":
            return model
        if s.get(ModelShareRow, (model.id, tenant_id)) is None:
            raise NotFound(f"model {name!r} not found")
        return model

    def get_visible_model(self, tenant_id: int, name: str) -> ModelRow:
        with self.sessions() as s:
            return self._visible_model(s, tenant_id, name)

    def set_sharing(
        self, tenant_id: int, name: str, visibility: str, tenants: list[str], allow_finetune: bool = False
    ) -> None:
        """Replace the model's visibility, the tenants it is shared with, and whether they may
        fine-tune it (model_store/grants.py)."""
        if visibility not in VISIBILITIES:
            raise InvalidName(f"visibility must be one of {', '.join(VISIBILITIES)}")
        if not all(is_tenant_name(t) for t in tenants):
            raise NotFound("tenant not found")
        with self.sessions() as s:
            model = self._model(s, tenant_id, name, lock=True)
            found = s.execute(select(TenantRow.name, TenantRow.id).where(TenantRow.name.in_(tenants)))
            ids: dict[str, int] = {name: ident for name, ident in found}
            missing = sorted(set(tenants) - set(ids))
            if missing:
                raise NotFound(f"tenant {missing[0]!r} not found")
            model.visibility = visibility
            model.allow_finetune = allow_finetune
            s.execute(delete(ModelShareRow).where(ModelShareRow.model_id == model.id))
            s.add_all(
                ModelShareRow(model_id=model.id, tenant_id=t) for t in set(ids.values()) if t != tenant_id
            )
            s.commit()

    def sharing(self, tenant_id: int, name: str) -> tuple[str, list[str], bool]:
        with self.sessions() as s:
            model = self._model(s, tenant_id, name)
            names = s.scalars(
                select(TenantRow.name)
                .join(ModelShareRow, ModelShareRow.tenant_id == TenantRow.id)
                .where(ModelShareRow.model_id == model.id)
                .order_by(TenantRow.name)
            )
            return model.visibility, list(names), model.allow_finetune

    def may_finetune(self, tenant_id: int, base: ResolvedVersion) -> bool:
        """Whether `tenant_id` may fine-tune `base` (its own model, or a finetune grant)."""
        with self.sessions() as s:
            model = s.scalar(
                select(ModelRow).where(ModelRow.tenant_id == base.tenant_id, ModelRow.name == base.model)
            )
            return model is not None and grants.grants_finetune(s, model, tenant_id)

    def base_grants(self, base_version_id: int, tenant_id: int) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return grants.base_grants(s, base_version_id, tenant_id)

    def list_models(self, tenant_id: int) -> list[ModelRow]:
        with self.sessions() as s:
            return list(
                s.scalars(select(ModelRow).where(ModelRow.tenant_id == tenant_id).order_by(ModelRow.name))
            )

    def list_versions(self, model_id: int) -> list[ModelVersionRow]:
        with self.sessions() as s:
            return list(
                s.scalars(
                    select(ModelVersionRow)
                    .where(ModelVersionRow.model_id == model_id)
                    .order_by(ModelVersionRow.version)
                )
            )

    def aliases(self, model_id: int) -> dict[str, int]:
        with self.sessions() as s:
            rows = s.execute(
                select(AliasRow.alias, ModelVersionRow.version)
                .join(ModelVersionRow, ModelVersionRow.id == AliasRow.version_id)
                .where(AliasRow.model_id == model_id)
            ).all()
            return {alias: version for alias, version in rows}

    # versions ------------------------------------------------------------------------------
    def add_version(
        self,
        tenant_id: int,
        name: str,
        fmt: str,
        upload: Path,
        sha256: str,
        size: int,
        signature: Signature | None,
        config: VersionConfig,
        lineage: dict[str, Any] | None = None,
        *,
        create: str | None = None,
    ) -> ModelVersionRow:
        """Validate an uploaded file, store it by digest and register the next version. With
        `create` (a description), a missing model is created in the same transaction as its
        first version, so a refused upload leaves no empty model behind."""
        try:
            if create is None:
                self.get_model(tenant_id, name)  # 404 before any parsing of the upload
            else:
                check_model_name(name)
            sig = self.check(fmt, upload, signature)
            self.blobs.commit(upload, sha256)
        finally:
            upload.unlink(missing_ok=True)
        with self.sessions() as s:
            if create is not None:
                _ensure_model(s, tenant_id, name, create)
            model = self._model(s, tenant_id, name, lock=True)
            latest = (
                s.scalar(
                    select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == model.id)
                )
                or 0
            )
            row = ModelVersionRow(
                model_id=model.id,
                version=latest + 1,
                format=fmt,
                sha256=sha256,
                size_bytes=size,
                signature=sig.model_dump(mode="json"),
                config=config.model_dump(mode="json"),
                lineage=lineage,
            )
            s.add(row)
            s.commit()
            return row

    def set_alias(
        self, tenant_id: int, name: str, alias: str, version: int, *, expect: int | bool | None = True
    ) -> bool:
        """Point `alias` at `version`. With `expect` a version number (or None: the alias is
        unset), only if the alias still points there (compare and set): False when it moved."""
        check_alias(alias)
        with self.sessions() as s:
            model = self._model(s, tenant_id, name, lock=True)
            if expect is not True and _alias_version(s, model.id, alias) != expect:
                return False
            target = s.scalar(
                select(ModelVersionRow).where(
                    ModelVersionRow.model_id == model.id, ModelVersionRow.version == version
                )
            )
            if target is None:
                raise NotFound(f"version {version} of model {name!r} not found")
            row = s.get(AliasRow, (model.id, alias))
            if row is None:
                s.add(AliasRow(model_id=model.id, alias=alias, version_id=target.id))
            else:
                row.version_id = target.id
                row.updated_at = utcnow()
            s.commit()
            return True

    def resolve(self, tenant_id: int, name: str, ref: int | str | None) -> ResolvedVersion:
        """A version by number or alias; with none, `production` if set, else the newest."""
        with self.sessions() as s:
            model = self._visible_model(s, tenant_id, name)
            base = select(ModelVersionRow).where(ModelVersionRow.model_id == model.id)
            row: ModelVersionRow | None
            if isinstance(ref, int):
                row = s.scalar(base.where(ModelVersionRow.version == ref))
            else:
                alias = s.get(AliasRow, (model.id, ref or DEFAULT_ALIAS))
                if alias is not None:
                    row = s.get(ModelVersionRow, alias.version_id)
                elif ref is None:
                    row = s.scalar(base.order_by(ModelVersionRow.version.desc()).limit(1))
                else:
                    row = None
            if row is None:
                what = f"version {ref}" if ref is not None else "a version"
                raise NotFound(f"{what} of model {name!r} not found")
            if row.lineage and grants.revoked_grant(s, row.lineage) is not None:
                raise NotFound(
                    f"version {row.version} of model {name!r} is not available: the owner of the "
                    "model it was fine-tuned from no longer shares it for fine-tuning"
                )
            return _resolved(model, row)

    def by_version_id(self, version_id: int) -> ResolvedVersion:
        with self.sessions() as s:
            row = s.get(ModelVersionRow, version_id)
            if row is None:
                raise NotFound("model version not found")
            model = s.get(ModelRow, row.model_id)
            assert model is not None
            return _resolved(model, row)
