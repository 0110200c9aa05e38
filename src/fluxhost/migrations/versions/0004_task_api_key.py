"""tasks remember the API key that made them, and the folders of their last two runs

Revision: 0004 (follows 0003)

The key: per-key limits on unfinished tasks (tasks made before have none, and count only towards
their project's limit). The folders: each claim gives its run a new one and keeps the one
before, which the new run clears: files a run wrote before dying unrecorded do not stay behind.
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
        batch_op.add_column(sa.Column('previous_files_folder', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('previous_files_folder')
        batch_op.drop_column('files_folder')
        batch_op.drop_column('api_key_id')
