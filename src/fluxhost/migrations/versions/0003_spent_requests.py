"""spent requests: replay protection by key, nonce and request digest

Revision: 0003 (follows 0002)

Nonces used to be single-use per key; a replay is now an exact resend (same key, nonce, path and
body). Nonces spent before this migration are kept with an empty digest, which no request has.
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('spent_requests',
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('nonce', sa.String(length=40), nullable=False),
    sa.Column('request_digest', sa.String(length=64), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ),
    sa.PrimaryKeyConstraint('api_key_id', 'nonce', 'request_digest')
    )
    with op.batch_alter_table('spent_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_spent_requests_used_at'), ['used_at'], unique=False)
    op.execute("INSERT INTO spent_requests (api_key_id, nonce, request_digest, used_at) "
               "SELECT api_key_id, nonce, '', used_at FROM used_nonces")
    with op.batch_alter_table('used_nonces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_used_nonces_used_at'))
    op.drop_table('used_nonces')


def downgrade() -> None:
    op.create_table('used_nonces',
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('nonce', sa.String(length=40), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ),
    sa.PrimaryKeyConstraint('api_key_id', 'nonce')
    )
    with op.batch_alter_table('used_nonces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_used_nonces_used_at'), ['used_at'], unique=False)
    op.execute("INSERT INTO used_nonces (api_key_id, nonce, used_at) "
               "SELECT api_key_id, nonce, MAX(used_at) FROM spent_requests GROUP BY api_key_id, nonce")
    with op.batch_alter_table('spent_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_spent_requests_used_at'))
    op.drop_table('spent_requests')
