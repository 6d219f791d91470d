"""Comparative ratings: a `preference` between two answers to one prompt and a `rank` of several. They stay
rows of `ratings` (append-only events with the same idempotency, attribution and supersession as every
rating) with three nullable columns, and `compared_interactions` lists every answer each one names, so
that deleting a user finds the comparisons of their answers. Adding nullable columns rewrites no rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('ratings', sa.Column('other_interaction_id', sa.String(length=200), nullable=True))
    op.add_column('ratings', sa.Column('strength', sa.Float(), nullable=True))
    op.add_column('ratings', sa.Column('ranking', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                         'postgresql'), nullable=True))
    op.create_table(
        'compared_interactions',
        sa.Column('rating_id', sa.String(length=64), nullable=False),
        sa.Column('interaction_id', sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(['interaction_id'], ['interactions.id'],
                                name=op.f('fk_compared_interactions_interaction_id'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['rating_id'], ['ratings.id'], name=op.f('fk_compared_interactions_rating_id'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('rating_id', 'interaction_id', name=op.f('pk_compared_interactions')),
    )
    op.create_index(op.f('ix_compared_interactions_interaction_id'), 'compared_interactions', ['interaction_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_compared_interactions_interaction_id'), table_name='compared_interactions')
    op.drop_table('compared_interactions')
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_column('ranking')
        batch_op.drop_column('strength')
        batch_op.drop_column('other_interaction_id')
