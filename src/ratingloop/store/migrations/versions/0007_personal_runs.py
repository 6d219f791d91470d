"""Personal runs (ratingloop.personal): per-user preference weights and cohorts, fitted from a signals run and
stored so that `cohorts`, `users show` and later stages read them instead of fitting again. A user's weights
row goes when the user is deleted (personal.purge_user); runs and cohorts hold counts and means only.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from ratingloop.store.tables import UTCDateTime

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'personal_runs',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('signals_run_id', sa.String(length=64), nullable=False),
        sa.Column('config', _json(), nullable=False),
        sa.Column('k', sa.Integer(), nullable=False),
        sa.Column('heldout', _json(), nullable=False),
        sa.Column('summary', _json(), nullable=False),
        sa.ForeignKeyConstraint(['signals_run_id'], ['signals_runs.id'], name=op.f('fk_personal_runs_signals_run_id')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_personal_runs')),
    )
    op.create_index(op.f('ix_personal_runs_signals_run_id'), 'personal_runs', ['signals_run_id'], unique=False)
    op.create_table(
        'personal_users',
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.String(length=200), nullable=False),
        sa.Column('weights', _json(), nullable=False),
        sa.Column('mean_rating', sa.Float(), nullable=False),
        sa.Column('rating_sd', sa.Float(), nullable=False),
        sa.Column('n_ratings', sa.Integer(), nullable=False),
        sa.Column('cohort', sa.Integer(), nullable=True),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['personal_runs.id'], name=op.f('fk_personal_users_run_id'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', 'user_id', name=op.f('pk_personal_users')),
    )
    op.create_index(op.f('ix_personal_users_user_id'), 'personal_users', ['user_id'], unique=False)
    op.create_table(
        'personal_cohorts',
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('cohort', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('n_users', sa.Integer(), nullable=False),
        sa.Column('weights', _json(), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['personal_runs.id'], name=op.f('fk_personal_cohorts_run_id'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', 'cohort', name=op.f('pk_personal_cohorts')),
    )


def downgrade() -> None:
    op.drop_table('personal_cohorts')
    op.drop_index(op.f('ix_personal_users_user_id'), table_name='personal_users')
    op.drop_table('personal_users')
    op.drop_index(op.f('ix_personal_runs_signals_run_id'), table_name='personal_runs')
    op.drop_table('personal_runs')
