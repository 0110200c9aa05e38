"""when each task was last queued and when a broker took its message, so that a queued task no
message names is sent again

Revision: 0012 (follows 0011)
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tasks', sa.Column('queued_time', sa.Float(), nullable=True))
    op.add_column('tasks', sa.Column('message_time', sa.Float(), nullable=True))
    op.execute("UPDATE tasks SET queued_time = create_time")


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place; batch mode would rebuild the table and lose its triggers (0011)
    op.drop_column('tasks', 'message_time')
    op.drop_column('tasks', 'queued_time')
