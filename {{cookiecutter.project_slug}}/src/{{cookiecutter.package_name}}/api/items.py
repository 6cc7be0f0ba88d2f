"""The items resource: paginated list, create, read, partial update, delete.

Reads are public. Each item belongs to the user who created it: changing or
deleting it takes its owner or an admin (403 for anyone else), whatever
scopes the caller's credential has.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from flask import Blueprint, Response, abort, url_for
from sqlalchemy import ColumnElement, delete, func, select, true, update
from werkzeug.exceptions import Forbidden

from ..auth import authenticated, require
from ..errors import Problem
from ..extensions import cache, db, spec
from ..models import Item
from ..openapi import AUTHENTICATED, LOCATION, Responses
from ..resilience import IdempotencyKeyHeader, protected
from ..services.pricing import Price, price_of
from .schemas import ItemCreate, ItemOut, ItemPage, ItemUpdate, PageQuery

items_bp = Blueprint("items", __name__, url_prefix="/v1/items")

# Ids outside this range cannot exist on any supported database; they get a 404
# before the query, so the database never sees an out-of-range integer.
ID_RANGE = range(1, 2**31)
ITEM_URL = "/<int:item_id>"
TAGS = ["items"]


def not_found(item_id: int) -> NoReturn:
    abort(404, description=f"Item {item_id} does not exist.")


def changeable() -> ColumnElement[bool]:
    """The items the caller may change: their own, or any for an admin."""
    user = authenticated().user
    return true() if user.has_role("admin") else Item.owner_id == user.id


def refuse(item_id: int) -> NoReturn:
    """A write matched nothing: 404 if the item does not exist, else 403."""
    if item_id in ID_RANGE and db.session.get(Item, item_id) is not None:
        raise Forbidden(
            f"Item {item_id} is not yours: only its owner or an admin may change it."
        )
    not_found(item_id)


@cache.memoize()
def items_page(page: int, per_page: int) -> dict[str, Any]:
    """One page of items, as JSON data: cached per (page, per_page).

    Every write calls forget_pages(), so a cached page is never older than the
    last write (in this process without Redis, in every worker with it).
    """
    total = db.session.scalar(select(func.count()).select_from(Item)) or 0
    rows = db.session.scalars(
        select(Item).order_by(Item.id).limit(per_page).offset((page - 1) * per_page)
    )
    return ItemPage(
        items=[ItemOut.model_validate(row) for row in rows],
        page=page,
        per_page=per_page,
        total=total,
        pages=math.ceil(total / per_page),
    ).model_dump(mode="json")


def forget_pages() -> None:
    cache.delete_memoized(items_page)


@items_bp.get("")
@protected("read")
@spec.validate(
    resp=Responses(HTTP_200=ItemPage, HTTP_429=Problem, HTTP_503=Problem),
    tags=TAGS,
    operation_id="list_items",
)
def list_items(query: PageQuery) -> ItemPage:
    """List items, oldest first, one page at a time."""
    return ItemPage.model_validate(items_page(query.page, query.per_page))


@items_bp.post("")
@protected("write")
@require(scope="write")
@spec.validate(
    headers=IdempotencyKeyHeader,
    resp=Responses(
        HTTP_201=ItemOut,
        HTTP_400=Problem,
        HTTP_401=Problem,
        HTTP_403=Problem,
        HTTP_409=Problem,
        HTTP_413=Problem,
        HTTP_415=Problem,
        HTTP_429=Problem,
        HTTP_503=Problem,
        headers={201: {"Location": LOCATION}},
        replayable=True,
    ),
    tags=TAGS,
    operation_id="create_item",
    security=AUTHENTICATED,
)
def create_item(json: ItemCreate) -> tuple[ItemOut, int, dict[str, str]]:
    """Create an item, owned by the caller."""
    item = Item(**json.model_dump(), owner_id=authenticated().user.id)
    db.session.add(item)
    db.session.flush()
    created = ItemOut.model_validate(item)
    db.session.commit()
    forget_pages()
    # Built before the commit: a concurrent DELETE cannot turn a stored item
    # into an error answer.
    return created, 201, {"Location": url_for(".get_item", item_id=created.id)}


@items_bp.get(ITEM_URL)
@protected("read")
@spec.validate(
    resp=Responses(
        HTTP_200=ItemOut, HTTP_404=Problem, HTTP_429=Problem, HTTP_503=Problem
    ),
    tags=TAGS,
    operation_id="get_item",
)
def get_item(item_id: int) -> ItemOut:
    """Fetch one item."""
    item = db.session.get(Item, item_id) if item_id in ID_RANGE else None
    if item is None:
        not_found(item_id)
    return ItemOut.model_validate(item)


@items_bp.patch(ITEM_URL)
@protected("write")
@require(scope="write")
@spec.validate(
    headers=IdempotencyKeyHeader,
    resp=Responses(
        HTTP_200=ItemOut,
        HTTP_400=Problem,
        HTTP_404=Problem,
        HTTP_401=Problem,
        HTTP_403=Problem,
        HTTP_409=Problem,
        HTTP_413=Problem,
        HTTP_415=Problem,
        HTTP_429=Problem,
        HTTP_503=Problem,
        replayable=True,
    ),
    tags=TAGS,
    operation_id="update_item",
    security=AUTHENTICATED,
)
def update_item(item_id: int, json: ItemUpdate) -> ItemOut:
    """Change some fields of an item (its owner's, or an admin's)."""
    # One UPDATE ... RETURNING: no read-then-write window for a concurrent
    # DELETE, nor for a change of owner.
    statement = (
        update(Item)
        .where(Item.id == item_id, changeable())
        .values(json.model_dump())
        .returning(Item)
    )
    item = db.session.scalars(statement).one_or_none() if item_id in ID_RANGE else None
    if item is None:
        refuse(item_id)
    updated = ItemOut.model_validate(item)
    db.session.commit()
    forget_pages()
    return updated


@items_bp.delete(ITEM_URL)
@protected("write")
@require(scope="write")
@spec.validate(
    headers=IdempotencyKeyHeader,
    resp=Responses(
        HTTP_204=None,
        HTTP_404=Problem,
        HTTP_401=Problem,
        HTTP_403=Problem,
        HTTP_409=Problem,
        HTTP_429=Problem,
        HTTP_503=Problem,
        replayable=True,
    ),
    tags=TAGS,
    operation_id="delete_item",
    security=AUTHENTICATED,
)
def delete_item(item_id: int) -> tuple[Response, int]:
    """Delete an item (its owner's, or an admin's)."""
    statement = delete(Item).where(Item.id == item_id, changeable()).returning(Item.id)
    deleted = db.session.scalar(statement) if item_id in ID_RANGE else None
    if deleted is None:
        refuse(item_id)
    db.session.commit()
    forget_pages()
    return Response(status=204), 204


@items_bp.get(f"{ITEM_URL}/price")
@protected("pricing")
@spec.validate(
    resp=Responses(
        HTTP_200=Price, HTTP_404=Problem, HTTP_429=Problem, HTTP_503=Problem
    ),
    tags=TAGS,
    operation_id="get_item_price",
)
def get_item_price(item_id: int) -> Price:
    """The item's price from the pricing service (the last known one if it fails)."""
    exists = db.session.get(Item, item_id) if item_id in ID_RANGE else None
    if exists is None:
        not_found(item_id)
    # The price may take up to PRICING_TIMEOUT: end the read first, so that a
    # slow upstream holds no database connection (nor a transaction) meanwhile.
    db.session.close()
    return price_of(item_id)
