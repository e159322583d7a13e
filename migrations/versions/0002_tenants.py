"""tenants and keys: limits, key allowlist and rotation, model visibility and shares

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("limits", sa.JSON(), nullable=True))
    op.add_column("api_keys", sa.Column("allowed_models", sa.JSON(), nullable=True))
    op.add_column("api_keys", sa.Column("limits", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rotated_from", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_api_keys_rotated_from", "api_keys", ["rotated_from"], ["id"])
    op.add_column(
        "models",
        sa.Column("visibility", sa.String(16), nullable=False, server_default="private"),
    )
    op.create_table(
        "model_shares",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), primary_key=True),
        sa.Column("tenant_id", sa.Integer(), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_model_shares_tenant_id", "model_shares", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_model_shares_tenant_id", "model_shares")
    op.drop_table("model_shares")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("visibility")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("fk_api_keys_rotated_from", type_="foreignkey")
        batch.drop_column("rotated_from")
        batch.drop_column("limits")
        batch.drop_column("allowed_models")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("limits")
