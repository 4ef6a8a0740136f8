"""The tables (Alembic's revisions in alembic/versions/ create them; this is the code's view)."""

from datetime import datetime
from typing import Optional

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = 'users'

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)   # the Telegram user id
    username: Mapped[Optional[str]] = mapped_column(String(64))
    first_name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # revision 0002
    language_code: Mapped[Optional[str]] = mapped_column(String(16))
    last_seen_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))


class StoredMessage(Base):
    __tablename__ = 'messages'

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # Telegram delivers an update again until the bot confirms it: stored once.
    update_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey('users.id'), index=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
