"""The loop's rounds and their steps (`ratingloop loop status`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 15:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from ratingloop.store.tables import UTCDateTime

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('loop_rounds',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('finished_at', UTCDateTime(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=True),
    sa.Column('trigger', sa.String(length=40), nullable=False),
    sa.Column('ratings_until', UTCDateTime(), nullable=True),
    sa.Column('ratings_total', sa.Integer(), nullable=False),
    sa.Column('new_ratings', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.String(length=64), nullable=True),
    sa.Column('spec', JSON, nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_loop_rounds'))
    )
    with op.batch_alter_table('loop_rounds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_loop_rounds_status'), ['status'], unique=False)

    op.create_table('loop_steps',
    sa.Column('round_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=20), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('started_at', UTCDateTime(), nullable=False),
    sa.Column('finished_at', UTCDateTime(), nullable=True),
    sa.Column('detail', JSON, nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['round_id'], ['loop_rounds.id'], name=op.f('fk_loop_steps_round_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('round_id', 'name', name=op.f('pk_loop_steps'))
    )


def downgrade() -> None:
    op.drop_table('loop_steps')
    with op.batch_alter_table('loop_rounds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loop_rounds_status'))
    op.drop_table('loop_rounds')
