"""SQLAlchemy models; import them from here."""

from .base import Base
from .item import Item
from .user import ApiKey, TokenFamily, User

__all__ = ["ApiKey", "Base", "Item", "TokenFamily", "User"]
