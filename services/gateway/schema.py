"""The declarative base of the gateway's tables (the job store's and the API key store's): one history."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of the gateway's tables."""
