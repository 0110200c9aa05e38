"""a heartbeat row, rewritten by readiness checks to see that the database takes writes

Revision: 0009 (follows 0008)
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    heartbeat = op.create_table('heartbeat',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('beat_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.bulk_insert(heartbeat, [{'id': 1, 'beat_at': 0.0}])


def downgrade() -> None:
    op.drop_table('heartbeat')
