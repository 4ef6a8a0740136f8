"""SoulNear example bot: a stand-in for the real Telegram bot, used by the sandbox and the tests.

It does what the real bot does to its database - waits for it, verifies the
schema and the migrations, keeps a connection pool, writes FSM states and
events periodically - but simulates the Telegram side (no network needed).
"""

__version__ = '1.0.0'
