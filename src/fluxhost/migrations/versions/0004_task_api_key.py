"""tasks remember the API key that made them and the folder their outputs go to

Revision: 0004 (follows 0003)

The key: per-key limits on unfinished tasks. The folder, chosen at Run: a run that died after
writing its files but before recording them leaves them where the next run (or the recovery
that gives up on the task) clears them. Tasks made before this migration have neither: they
count only towards their project's limit, and each run writes to a fresh folder.
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('api_key_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('files_folder', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('files_folder')
        batch_op.drop_column('api_key_id')
