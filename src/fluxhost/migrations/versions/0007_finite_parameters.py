"""tasks' parameters hold only numbers JSON can carry

Revision: 0007 (follows 0006)

Before the doors refused them, a body such as {"prompt": NaN} was stored as sent, and no JSON
answer could show the task afterwards (Python writes NaN, but no JSON reader takes it). Every NaN,
Infinity and -Infinity kept in a task's parameters becomes its text. Nothing to undo.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

tasks = sa.table('tasks', sa.column('id', sa.Integer), sa.column('parameters', sa.Text))


def constants_as_text(stored: str) -> tuple[object, bool]:
    """The stored JSON read back with NaN, Infinity and -Infinity as text; whether it held any."""
    found = []

    def as_text(literal: str) -> str:
        found.append(literal)
        return literal

    return json.loads(stored, parse_constant=as_text), bool(found)


def upgrade() -> None:
    connection = op.get_bind()
    text = sa.cast(tasks.c.parameters, sa.Text)
    suspects = connection.execute(
        sa.select(tasks.c.id, text).where(sa.or_(text.like('%NaN%'), text.like('%Infinity%')))
    ).all()
    for task_id, stored in suspects:
        value, repaired = constants_as_text(stored)
        if repaired:
            connection.execute(sa.update(tasks).where(tasks.c.id == task_id).values(parameters=json.dumps(value)))


def downgrade() -> None:
    pass
