"""access control: a key's priority cap; whether a shared model may be fine-tuned by others

Revision ID: 0004_access
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_access"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("priority_cap", sa.Integer(), nullable=False, server_default=sa.text("1"))
    )
    op.add_column(
        "models",
        sa.Column("allow_finetune", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("models", "allow_finetune")
    op.drop_column("api_keys", "priority_cap")
