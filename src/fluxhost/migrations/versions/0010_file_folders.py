"""folders of uploads (File/FolderCreate), and the folder each upload is in

Revision: 0010 (follows 0009)
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('file_folders',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('parent_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['file_folders.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('file_folders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_folders_project_id'), ['project_id'], unique=False)
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_uploads_parent_id'), ['parent_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uploads_parent_id'))
        batch_op.drop_column('parent_id')
    with op.batch_alter_table('file_folders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_folders_project_id'))
    op.drop_table('file_folders')
