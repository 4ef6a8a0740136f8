"""A small python-telegram-bot bot that remembers who wrote what, in PostgreSQL through asyncpg.

/start greets the user; any other text is stored and acknowledged with a count. Each handled update is stored once
(messages.update_id is UNIQUE), so an update Telegram delivers again is neither stored nor answered twice.
"""

import logging
import os

import asyncpg
from settings import db_options
from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

log = logging.getLogger('ptb-sql')

REMEMBER_USER = """
INSERT INTO users (id, username, first_name, language_code, last_seen_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username, first_name = EXCLUDED.first_name,
                               language_code = EXCLUDED.language_code, last_seen_at = now()
"""
REMEMBER_MESSAGE = """
INSERT INTO messages (update_id, user_id, chat_id, text) VALUES ($1, $2, $3, $4)
ON CONFLICT (update_id) DO NOTHING
RETURNING id
"""


async def remember(update: Update, context: ContextTypes.DEFAULT_TYPE):
    """Store the user and the message; the user's message count, or None when this update was stored before."""
    user, message = update.effective_user, update.effective_message
    pool = context.application.bot_data['pool']
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(REMEMBER_USER, user.id, user.username, user.first_name, user.language_code)
        if await conn.fetchval(REMEMBER_MESSAGE, update.update_id, user.id, message.chat_id, message.text) is None:
            log.info('update %s was handled before; not answering again', update.update_id)
            return None
        return await conn.fetchval('SELECT count(*) FROM messages WHERE user_id = $1', user.id)


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE):
    if await remember(update, context) is not None:
        await update.effective_message.reply_text(
            'Hello, %s! Write me anything and I will remember it.' % update.effective_user.first_name)


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE):
    count = await remember(update, context)
    if count is not None:
        await update.effective_message.reply_text('Noted. That makes %d message(s) from you.' % count)


async def open_pool(application: Application):
    application.bot_data['pool'] = await asyncpg.create_pool(min_size=1, max_size=4, **db_options())
    log.info('connected to PostgreSQL')


async def close_pool(application: Application):
    pool = application.bot_data.pop('pool', None)
    if pool is not None:
        await pool.close()


def main():
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    logging.getLogger('httpx').setLevel(logging.WARNING)   # its INFO lines carry the token in the URL
    application = (Application.builder().token(os.environ['BOT_TOKEN'])
                   .post_init(open_pool).post_shutdown(close_pool).build())
    application.add_handler(CommandHandler('start', start))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, text))
    application.run_polling(allowed_updates=[Update.MESSAGE])


if __name__ == '__main__':
    main()
