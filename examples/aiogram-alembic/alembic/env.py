"""Alembic's environment: the database from DATABASE_URL (bot.db), migrations over SQLAlchemy's async engine."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

from bot.db import database_url, make_engine
from bot.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def run_migrations_offline():
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    url, _ = database_url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={'paramstyle': 'named'})
    with context.begin_transaction():
        context.run_migrations()


def run_in(connection):
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online():
    engine = make_engine(poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_in)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
