"""callback deliveries carry the claim of the sender posting them

Revision: 0006 (follows 0005)

A sender that claims a delivery writes a fresh token into it and records its attempt only where
that token is still there: an attempt whose claim was taken over (the first post outlived it)
changes nothing, and a delivered or failed row is never written again.
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('callback_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim', sa.String(length=32), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('callback_deliveries', schema=None) as batch_op:
        batch_op.drop_column('claim')
