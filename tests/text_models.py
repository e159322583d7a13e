"""Text-generation versions for gateway tests, written straight into the catalog: the
hf-causal-lm format's upload path is the worker side's, so these rows stand for an uploaded
model (the gateway only reads a version's format and id). The scripted responder
(tests/gen_responder.py) answers for them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from model_store.db import ModelRow, ModelVersionRow, TenantRow, make_db_engine, make_sessionmaker

_SIGNATURE = {
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
}


def add_causal_model(
    db_url: str,
    tenant: str,
    name: str,
    versions: int = 1,
    fmt: str = "hf-causal-lm",
    lineage: dict[str, Any] | None = None,
    sha256: str = "0" * 64,
) -> list[int]:
    """The version ids of a new hf-causal-lm model `name` of `tenant` (which must exist); a
    lora-adapter with `fmt="lora-adapter", lineage={"adapter_of": base version id}`."""
    engine = make_db_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            tenant_id = s.scalars(select(TenantRow.id).where(TenantRow.name == tenant)).one()
            model = ModelRow(tenant_id=tenant_id, name=name, description="")
            s.add(model)
            s.flush()
            rows = [
                ModelVersionRow(
                    model_id=model.id,
                    version=v,
                    format=fmt,
                    sha256=sha256,
                    size_bytes=1,
                    signature=_SIGNATURE,
                    config={},
                    lineage=lineage,
                )
                for v in range(1, versions + 1)
            ]
            s.add_all(rows)
            s.commit()
            return [r.id for r in rows]
    finally:
        engine.dispose()
