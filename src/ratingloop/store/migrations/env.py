"""Alembic environment for the store. Runs on the connection ratingloop hands it (see db.py).

To add a migration after changing tables.py:
    alembic -c src/ratingloop/store/migrations/alembic.ini revision --autogenerate -m "why"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from ratingloop.store.tables import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # the alembic command line: use the URL from the ini or RATINGLOOP_DATABASE_URL
    from ratingloop.config import load_settings

    url = config.get_main_option("sqlalchemy.url") or load_settings().url
    with create_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
