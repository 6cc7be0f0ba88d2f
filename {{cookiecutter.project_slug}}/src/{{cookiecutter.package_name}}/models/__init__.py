"""SQLAlchemy models; import them from here."""

from .base import Base
from .item import Item

__all__ = ["Base", "Item"]
