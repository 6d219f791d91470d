"""Signals runs (the rewards later stages read), evaluations, the registry's events, one active version,
and the links dataset snapshot -> signals run and training run -> loop round.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 13:24:48.000203
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from ratingloop.store.tables import UTCDateTime

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('signals_runs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('summary', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('last_rating_at', UTCDateTime(), nullable=True),
    sa.Column('n_ratings', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signals_runs'))
    )
    op.create_table('signals_interactions',
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('interaction_id', sa.String(length=200), nullable=False),
    sa.Column('reward', sa.Float(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('n_ratings', sa.Integer(), nullable=False),
    sa.Column('aspects', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['interaction_id'], ['interactions.id'], name=op.f('fk_signals_interactions_interaction_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['signals_runs.id'], name=op.f('fk_signals_interactions_run_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'interaction_id', name=op.f('pk_signals_interactions'))
    )
    with op.batch_alter_table('signals_interactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signals_interactions_interaction_id'), ['interaction_id'], unique=False)

    op.create_table('signals_raters',
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('rater_id', sa.String(length=200), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('bias', sa.Float(), nullable=False),
    sa.Column('scale', sa.Float(), nullable=False),
    sa.Column('reliability', sa.Float(), nullable=False),
    sa.Column('flagged', sa.Boolean(), nullable=False),
    sa.Column('reasons', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['signals_runs.id'], name=op.f('fk_signals_raters_run_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'rater_id', name=op.f('pk_signals_raters'))
    )
    op.create_table('signals_ratings',
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('rating_id', sa.String(length=64), nullable=False),
    sa.Column('interaction_id', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['interaction_id'], ['interactions.id'], name=op.f('fk_signals_ratings_interaction_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rating_id'], ['ratings.id'], name=op.f('fk_signals_ratings_rating_id'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['signals_runs.id'], name=op.f('fk_signals_ratings_run_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'rating_id', name=op.f('pk_signals_ratings'))
    )
    with op.batch_alter_table('signals_ratings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signals_ratings_interaction_id'), ['interaction_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_signals_ratings_rating_id'), ['rating_id'], unique=False)

    op.create_table('evaluations',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('candidate_id', sa.String(length=64), nullable=False),
    sa.Column('against_id', sa.String(length=64), nullable=True),
    sa.Column('verdict', sa.String(length=20), nullable=False),
    sa.Column('report', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['against_id'], ['model_versions.id'], name=op.f('fk_evaluations_against_id')),
    sa.ForeignKeyConstraint(['candidate_id'], ['model_versions.id'], name=op.f('fk_evaluations_candidate_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations'))
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_candidate_id'), ['candidate_id'], unique=False)

    op.create_table('version_events',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('version_id', sa.String(length=64), nullable=True),
    sa.Column('previous_id', sa.String(length=64), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('evaluation_id', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], name=op.f('fk_version_events_evaluation_id')),
    sa.ForeignKeyConstraint(['previous_id'], ['model_versions.id'], name=op.f('fk_version_events_previous_id')),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], name=op.f('fk_version_events_version_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_version_events'))
    )
    with op.batch_alter_table('dataset_snapshots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signals_run_id', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_dataset_snapshots_signals_run_id'), 'signals_runs', ['signals_run_id'], ['id'])

    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index('uq_model_versions_one_active', ['status'], unique=True, sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))

    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('round_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_training_runs_round_id'), ['round_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_runs_round_id'))
        batch_op.drop_column('round_id')

    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index('uq_model_versions_one_active', sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))

    with op.batch_alter_table('dataset_snapshots', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_dataset_snapshots_signals_run_id'), type_='foreignkey')
        batch_op.drop_column('signals_run_id')

    op.drop_table('version_events')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_candidate_id'))

    op.drop_table('evaluations')
    with op.batch_alter_table('signals_ratings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signals_ratings_rating_id'))
        batch_op.drop_index(batch_op.f('ix_signals_ratings_interaction_id'))

    op.drop_table('signals_ratings')
    op.drop_table('signals_raters')
    with op.batch_alter_table('signals_interactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signals_interactions_interaction_id'))

    op.drop_table('signals_interactions')
    op.drop_table('signals_runs')

