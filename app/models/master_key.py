"""Master keys that a rotation has superseded, and when each was retired. Ids only, never keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime


class MasterKeyRetirement(Base):
    """Superseded: data keys wrapped by it are being moved to a newer key. Retired: none is left,
    and the database refuses any data key row that names it (triggers of migration 0006), so a
    process that still had the key cannot create data that only it could read."""

    __tablename__ = "master_key_retirement"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    superseded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
