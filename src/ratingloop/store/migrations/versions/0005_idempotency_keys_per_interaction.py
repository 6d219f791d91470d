"""Idempotency keys are scoped to their interaction: the same key on two interactions is two ratings. With
one global key space a user could claim keys other clients would send (their ratings then answered 409) and
probe which keys exist. The unique constraint becomes (idempotency_key, interaction_id): key first, so the
write path's `idempotency_key IN (...)` lookup still uses it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_constraint('uq_ratings_idempotency_key', type_='unique')
        batch_op.create_unique_constraint('uq_ratings_idempotency_key_interaction_id',
                                          ['idempotency_key', 'interaction_id'])


def downgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_constraint('uq_ratings_idempotency_key_interaction_id', type_='unique')
        batch_op.create_unique_constraint('uq_ratings_idempotency_key', ['idempotency_key'])
