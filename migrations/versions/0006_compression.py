"""compression jobs: a `kind` on the fine-tune jobs table (one lease, event and cancel machinery)

Revision ID: 0006_compression
Revises: 0005_sweeps
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_compression"
down_revision = "0005_sweeps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "fine_tuning_jobs",
        sa.Column("kind", sa.String(16), nullable=False, server_default="fine-tune"),
    )


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("kind")
