"""The bot's environment file pointed at the rehearsal's copy (rehearsal.retarget_env): only the database name and
the database of connection URLs change, whatever names the bot reads."""

from ansible.module_utils.soulnear.rehearsal import retarget_env


def test_the_database_moves_to_the_copy_and_nothing_else_does():
    text = '\n'.join([
        '# managed', 'PGDATABASE=soul_bot', 'POSTGRES_DB=soul_bot', 'DB_NAME=soul_bot', 'BOT_TOKEN=soul_bot:123',
        'DATABASE_URL=postgresql://u:p%40ss@db:5432/soul_bot', 'ASYNC_URL=postgresql+asyncpg://u:p@h1:5432,h2:5432'
        '/soul_bot?sslmode=verify-full&sslrootcert=/etc/ca.pem', 'OTHER_URL=postgresql://u:p@db:5432/soul_bot_archive',
        'PGUSER=soul_bot_owner', 'NOTE=the soul_bot database'])
    out = retarget_env(text, 'soul_bot', 'soul_bot__restore_rehearsal_120000').splitlines()
    assert out == ['# managed', 'PGDATABASE=soul_bot__restore_rehearsal_120000',
                   'POSTGRES_DB=soul_bot__restore_rehearsal_120000', 'DB_NAME=soul_bot__restore_rehearsal_120000',
                   'BOT_TOKEN=soul_bot:123',
                   'DATABASE_URL=postgresql://u:p%40ss@db:5432/soul_bot__restore_rehearsal_120000',
                   'ASYNC_URL=postgresql+asyncpg://u:p@h1:5432,h2:5432/soul_bot__restore_rehearsal_120000'
                   '?sslmode=verify-full&sslrootcert=/etc/ca.pem',
                   'OTHER_URL=postgresql://u:p@db:5432/soul_bot_archive', 'PGUSER=soul_bot_owner',
                   'NOTE=the soul_bot database']
