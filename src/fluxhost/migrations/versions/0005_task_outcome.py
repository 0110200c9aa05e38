"""tasks keep how they came out (outcome), and their work order under its own name

Revision: 0005 (follows 0004)

The outcome (completed, failed, moderated, stopped) replaces pexit, which was the hosted protocol's
way of saying it ("0", "1", "-1"), and moderation, which was known only by the wording of
debug_error: each door now says the outcome its own way. Rows written before are read back into
it. The request column, the work order a worker runs, is named for what it holds.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

MODERATED = "debug_error LIKE 'Request Moderated%' OR debug_error LIKE 'Content Moderated%'"


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outcome', sa.String(length=16), nullable=True))
        batch_op.alter_column('request', new_column_name='work_order')
    op.execute("UPDATE tasks SET outcome = CASE "
               "WHEN pexit = '0' THEN 'completed' "
               "WHEN pexit = '-1' THEN 'stopped' "
               f"WHEN pexit = '1' AND ({MODERATED}) THEN 'moderated' "
               "WHEN pexit = '1' THEN 'failed' END")
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('pexit')


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pexit', sa.String(length=8), nullable=False, server_default=''))
    op.execute("UPDATE tasks SET pexit = CASE outcome WHEN 'completed' THEN '0' WHEN 'stopped' THEN '-1' "
               "WHEN 'failed' THEN '1' WHEN 'moderated' THEN '1' ELSE '' END")
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.alter_column('work_order', new_column_name='request')
        batch_op.drop_column('outcome')
