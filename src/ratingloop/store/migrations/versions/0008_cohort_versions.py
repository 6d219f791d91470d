"""Cohort versions: a model version trained for one cohort of a personal run (ratingloop.personal) serves that
cohort's users while its status is `cohort`; at most one per cohort. Global versions leave both columns empty,
and the one-active index is unchanged. A signals run fitted on one cohort's ratings only records that `scope`
(None: everyone's, the runs every stage reads as "the newest").

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ONE_PER_COHORT = "status = 'cohort'"


def upgrade() -> None:
    with op.batch_alter_table('signals_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=200), nullable=True))
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('personal_run_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('cohort', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_model_versions_personal_run_id'), 'personal_runs',
                                    ['personal_run_id'], ['id'])
        batch_op.create_index('uq_model_versions_one_per_cohort', ['personal_run_id', 'cohort'], unique=True,
                              sqlite_where=sa.text(ONE_PER_COHORT), postgresql_where=sa.text(ONE_PER_COHORT))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index('uq_model_versions_one_per_cohort', sqlite_where=sa.text(ONE_PER_COHORT),
                            postgresql_where=sa.text(ONE_PER_COHORT))
        batch_op.drop_constraint(batch_op.f('fk_model_versions_personal_run_id'), type_='foreignkey')
        batch_op.drop_column('cohort')
        batch_op.drop_column('personal_run_id')
    with op.batch_alter_table('signals_runs', schema=None) as batch_op:
        batch_op.drop_column('scope')
