"""Deleting a user reaches their derived data: a dataset snapshot that held it is purged (its files removed,
`purged_at` set, never trained on again) and a version trained on one is tainted (`tainted_at`: weights
cannot forget, so the registry says so). Tombstones written from now on are HMACs keyed by the server's
secret; the unsalted ones already stored keep working (writes.py checks both), so no data changes here.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ratingloop.store.tables import UTCDateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dataset_snapshots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purged_at', UTCDateTime(), nullable=True))
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tainted_at', UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('tainted_at')
    with op.batch_alter_table('dataset_snapshots', schema=None) as batch_op:
        batch_op.drop_column('purged_at')
