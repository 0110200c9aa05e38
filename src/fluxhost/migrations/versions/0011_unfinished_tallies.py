"""unfinished tasks tallied per key, project and model queue, kept by triggers on SQLite

Revision: 0011 (follows 0010)

Every Run checks the limits on unfinished tasks; counting them read every queued task (10 ms a
Run at a queue of 10,000). On SQLite, triggers now keep the counts as tasks are added, change
status and are deleted. PostgreSQL gets the table, empty: it keeps counting (see
``fluxhost.store.schema.UnfinishedTally``).
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# The statuses as this revision knows them (fluxhost.statuses: TERMINAL, and Status.QUEUE).
_ENDED = "'task_postprocess_end', 'task_cancel', 'task_error'"
_QUEUED = "'task_queue'"


def _shares(row: str) -> list[tuple[str, str, str]]:
    """What one task row (NEW or OLD in a trigger) adds to the tallies: (scope, subject, whether
    it counts)."""
    return [
        ("key", f"CAST({row}.api_key_id AS TEXT)", f"{row}.api_key_id IS NOT NULL AND {row}.status NOT IN ({_ENDED})"),
        ("project", f"CAST({row}.project_id AS TEXT)", f"{row}.status NOT IN ({_ENDED})"),
        ("queued", f"{row}.model_slug", f"{row}.status = {_QUEUED}"),
    ]


def _changes(row: str, other: str | None) -> list[tuple[str, str, str]]:
    """The tallies ``row`` counts in and ``other`` (the same task before or after, or None) does not."""
    shares = _shares(row)
    if other is None:
        return shares
    return [(scope, subject, f"{counts} AND NOT ({counted})")
            for (scope, subject, counts), (_, _, counted) in zip(shares, _shares(other), strict=True)]


def _add(row: str, other: str | None = None) -> str:
    return "".join(
        f"INSERT INTO unfinished_tallies (scope, subject, count) SELECT '{scope}', {subject}, 1 WHERE {counts} "
        "ON CONFLICT (scope, subject) DO UPDATE SET count = count + 1;\n"
        for scope, subject, counts in _changes(row, other))


def _remove(row: str, other: str | None = None) -> str:
    return "".join(
        f"UPDATE unfinished_tallies SET count = count - 1 "
        f"WHERE {counts} AND scope = '{scope}' AND subject = {subject};\n"
        for scope, subject, counts in _changes(row, other))


_TRIGGERS = {
    "unfinished_tallies_on_insert": f"AFTER INSERT ON tasks BEGIN\n{_add('NEW')}END",
    "unfinished_tallies_on_update": (f"AFTER UPDATE OF status ON tasks WHEN OLD.status IS NOT NEW.status BEGIN\n"
                                     f"{_remove('OLD', 'NEW')}{_add('NEW', 'OLD')}END"),
    "unfinished_tallies_on_delete": f"AFTER DELETE ON tasks BEGIN\n{_remove('OLD')}END",
}


def upgrade() -> None:
    op.create_table('unfinished_tallies',
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'subject')
    )
    if op.get_bind().dialect.name != "sqlite":
        return
    for scope, subject, counts in _shares("tasks"):
        op.execute(f"INSERT INTO unfinished_tallies (scope, subject, count) SELECT '{scope}', {subject}, COUNT(*) "
                   f"FROM tasks WHERE {counts} GROUP BY {subject}")
    for name, body in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table('unfinished_tallies')
