"""A small aiogram 3 bot that remembers who wrote what, in PostgreSQL through SQLAlchemy (asyncpg).

/start greets the user; any other text is stored and acknowledged with a count. Each handled update is stored once
(messages.update_id is UNIQUE), so an update Telegram delivers again is neither stored nor answered twice.

    BOT_TOKEN=... DATABASE_URL=postgresql://user:password@host:5432/db python -m bot
"""

import asyncio
import logging
import os
from typing import Optional

from aiogram import Bot, Dispatcher, F, Router
from aiogram.filters import CommandStart
from aiogram.types import Message, Update
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker

from bot.db import make_engine
from bot.models import StoredMessage, User

log = logging.getLogger('aiogram-alembic')
router = Router()


async def remember(sessions: async_sessionmaker, message: Message, update_id: int) -> Optional[int]:
    """Store the user and the message; the user's message count, or None when this update was stored before."""
    sender = message.from_user
    async with sessions() as session, session.begin():
        values = dict(username=sender.username, first_name=sender.first_name, language_code=sender.language_code,
                      last_seen_at=func.now())
        await session.execute(insert(User).values(id=sender.id, **values)
                              .on_conflict_do_update(index_elements=[User.id], set_=values))
        stored = await session.scalar(
            insert(StoredMessage)
            .values(update_id=update_id, user_id=sender.id, chat_id=message.chat.id, text=message.text)
            .on_conflict_do_nothing(index_elements=[StoredMessage.update_id])
            .returning(StoredMessage.id))
        if stored is None:
            log.info('update %s was handled before; not answering again', update_id)
            return None
        return await session.scalar(select(func.count()).select_from(StoredMessage)
                                    .where(StoredMessage.user_id == sender.id))


@router.message(CommandStart())
async def start(message: Message, event_update: Update, sessions: async_sessionmaker):
    if await remember(sessions, message, event_update.update_id) is not None:
        await message.answer('Hello, %s! Write me anything and I will remember it.' % message.from_user.first_name)


@router.message(F.text)
async def text(message: Message, event_update: Update, sessions: async_sessionmaker):
    count = await remember(sessions, message, event_update.update_id)
    if count is not None:
        await message.answer('Noted. That makes %d message(s) from you.' % count)


async def main():
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    engine = make_engine(pool_size=4)
    try:
        bot = Bot(os.environ['BOT_TOKEN'])
        dispatcher = Dispatcher(sessions=async_sessionmaker(engine, expire_on_commit=False))
        dispatcher.include_router(router)
        # One update at a time, confirmed (by the next getUpdates' offset) only after its handler finished: an update
        # in flight when the bot stops or is killed is delivered again, which messages.update_id UNIQUE makes harmless.
        # aiogram's default (handle_as_tasks=True) confirms a batch while its handlers still run: those are lost when
        # the bot stops, and a backlog after downtime starts hundreds of handlers at once against a pool of 4.
        await dispatcher.start_polling(bot, handle_as_tasks=False)
    finally:
        await engine.dispose()


if __name__ == '__main__':
    asyncio.run(main())
