"""users: language_code and last_seen_at

Revision ID: 8b2e4d6f0a31
Revises: 3f1c9a2b7d10
Create Date: 2024-03-12 16:40:02.583117

"""
from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '8b2e4d6f0a31'
down_revision: Union[str, Sequence[str], None] = '3f1c9a2b7d10'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('users', sa.Column('language_code', sa.String(length=16), nullable=True))
    op.add_column('users', sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('users', 'last_seen_at')
    op.drop_column('users', 'language_code')
