"""hyperparameter sweeps: the sweeps table; a fine-tune job names its sweep and trial number

Revision ID: 0005_sweeps
Revises: 0004_access
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_sweeps"
down_revision = "0004_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fine_tuning_sweeps",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.Integer(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("base_version_id", sa.Integer(), sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("target_model", sa.String(64), nullable=False),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_fine_tuning_sweeps_tenant_id", "fine_tuning_sweeps", ["tenant_id"])
    op.create_index("ix_fine_tuning_sweeps_status", "fine_tuning_sweeps", ["status"])
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("sweep_trial", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_jobs_sweep_id", "fine_tuning_sweeps", ["sweep_id"], ["id"])
        batch.create_unique_constraint("uq_jobs_sweep_trial", ["sweep_id", "sweep_trial"])
        batch.create_index("ix_fine_tuning_jobs_sweep_id", ["sweep_id"])


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_index("ix_fine_tuning_jobs_sweep_id")
        batch.drop_constraint("uq_jobs_sweep_trial", type_="unique")
        batch.drop_constraint("fk_jobs_sweep_id", type_="foreignkey")
        batch.drop_column("sweep_trial")
        batch.drop_column("sweep_id")
    op.drop_table("fine_tuning_sweeps")
