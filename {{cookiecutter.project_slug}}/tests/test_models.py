"""Model helpers: UTC timestamps on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from flask import Flask

from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import Item
from {{ cookiecutter.package_name }}.models.base import UTCDateTime

pytestmark = pytest.mark.usefixtures("app")


def test_timestamps_are_set_per_row_and_read_back_in_utc() -> None:
    first = Item(name="First")
    db.session.add(first)
    db.session.commit()
    second = Item(name="Second")
    db.session.add(second)
    db.session.commit()
    db.session.expire_all()
    assert first.created_at.tzinfo == UTC
    assert first.created_at <= second.created_at
    assert first.updated_at >= first.created_at


def test_other_offsets_are_stored_as_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    item = Item(name="Zoned", created_at=datetime(2030, 1, 1, 12, tzinfo=plus_two))
    db.session.add(item)
    db.session.commit()
    db.session.expire_all()
    assert item.created_at == datetime(2030, 1, 1, 10, tzinfo=UTC)
    assert item.created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(app: Flask) -> None:
    column = UTCDateTime()
    with pytest.raises(ValueError, match="naive datetime"):
        column.process_bind_param(datetime(2030, 1, 1), db.engine.dialect)  # noqa: DTZ001
    assert column.process_bind_param(None, db.engine.dialect) is None
    assert column.process_result_value(None, db.engine.dialect) is None
    aware = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5)))
    assert column.process_result_value(
        aware, app.extensions["sqlalchemy"].engine.dialect
    ) == (datetime(2030, 1, 1, 5, tzinfo=UTC))


def test_repr_names_the_item() -> None:
    item = Item(name="Widget")
    db.session.add(item)
    db.session.commit()
    assert repr(item) == f"<Item {item.id} 'Widget'>"
