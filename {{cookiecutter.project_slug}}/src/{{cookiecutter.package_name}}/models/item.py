"""The example resource served by the items API."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

NAME_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 2000
QUANTITY_MAX = 2**31 - 1


class Item(Base):
    """Something the service keeps track of, owned by the user who created it.

    Only its owner or an admin may change or delete it (api/items.py). An item
    without an owner (made before owners existed, by `flask seed-items`, or
    whose owner's account was deleted) is left to admins.
    """

    __tablename__ = "items"
    __table_args__ = (CheckConstraint("quantity >= 0", name="quantity_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), index=True)
    description: Mapped[str | None] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(default=0)
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        return f"<Item {self.id} {self.name!r}>"
