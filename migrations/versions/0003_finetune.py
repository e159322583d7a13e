"""files, fine-tuning jobs, job events, checkpoints, metrics, idempotency keys

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _tenant() -> sa.Column:
    return sa.Column("tenant_id", sa.Integer(), sa.ForeignKey("tenants.id"), nullable=False)


def _job() -> sa.Column:
    return sa.Column("job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(40), primary_key=True),
        _tenant(),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_files_tenant_id", "files", ["tenant_id"])
    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        _tenant(),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("base_version_id", sa.Integer(), sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("target_model", sa.String(64), nullable=False),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("fine_tuned_model", sa.String(128), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_fine_tuning_jobs_tenant_id", "fine_tuning_jobs", ["tenant_id"])
    op.create_index("ix_fine_tuning_jobs_status", "fine_tuning_jobs", ["status"])
    op.create_table(
        "fine_tuning_job_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _job(),
        _tenant(),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_fine_tuning_job_events_job_id", "fine_tuning_job_events", ["job_id"])
    op.create_table(
        "fine_tuning_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _job(),
        _tenant(),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step_number", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "epoch", name="uq_checkpoints_job_epoch"),
    )
    op.create_index("ix_fine_tuning_checkpoints_job_id", "fine_tuning_checkpoints", ["job_id"])
    op.create_table(
        "fine_tuning_metrics",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _job(),
        _tenant(),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.UniqueConstraint("job_id", "kind", "step", name="uq_metrics_job_kind_step"),
    )
    op.create_index("ix_fine_tuning_metrics_job_id", "fine_tuning_metrics", ["job_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Integer(), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("fine_tuning_metrics")
    op.drop_table("fine_tuning_checkpoints")
    op.drop_table("fine_tuning_job_events")
    op.drop_table("fine_tuning_jobs")
    op.drop_table("files")
