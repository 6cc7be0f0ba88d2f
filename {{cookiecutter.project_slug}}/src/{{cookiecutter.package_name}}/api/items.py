"""The items resource: paginated list, create, read, partial update, delete."""

from __future__ import annotations

import math

from flask import Blueprint, Response, abort, url_for
from spectree import Response as Responses
from sqlalchemy import func, select

from ..errors import Problem
from ..extensions import db, spec
from ..models import Item
from .schemas import ItemCreate, ItemOut, ItemPage, ItemUpdate, PageQuery

items_bp = Blueprint("items", __name__, url_prefix="/v1/items")

# Ids outside this range cannot exist on any supported database; they get a 404
# before the query, so the database never sees an out-of-range integer.
ID_RANGE = range(1, 2**31)
ITEM_URL = "/<int:item_id>"
TAGS = ["items"]


def get_item_or_404(item_id: int) -> Item:
    item = db.session.get(Item, item_id) if item_id in ID_RANGE else None
    if item is None:
        abort(404, description=f"Item {item_id} does not exist.")
    return item


@items_bp.get("")
@spec.validate(resp=Responses(HTTP_200=ItemPage), tags=TAGS, operation_id="list_items")
def list_items(query: PageQuery) -> ItemPage:
    """List items, oldest first, one page at a time."""
    total = db.session.scalar(select(func.count()).select_from(Item)) or 0
    rows = db.session.scalars(
        select(Item)
        .order_by(Item.id)
        .limit(query.per_page)
        .offset((query.page - 1) * query.per_page)
    )
    return ItemPage(
        items=[ItemOut.model_validate(row) for row in rows],
        page=query.page,
        per_page=query.per_page,
        total=total,
        pages=math.ceil(total / query.per_page),
    )


@items_bp.post("")
@spec.validate(
    resp=Responses(
        HTTP_201=ItemOut, HTTP_400=Problem, HTTP_413=Problem, HTTP_415=Problem
    ),
    tags=TAGS,
    operation_id="create_item",
)
def create_item(json: ItemCreate) -> tuple[ItemOut, int, dict[str, str]]:
    """Create an item."""
    item = Item(**json.model_dump())
    db.session.add(item)
    db.session.commit()
    location = url_for(".get_item", item_id=item.id)
    return ItemOut.model_validate(item), 201, {"Location": location}


@items_bp.get(ITEM_URL)
@spec.validate(
    resp=Responses(HTTP_200=ItemOut, HTTP_404=Problem),
    tags=TAGS,
    operation_id="get_item",
)
def get_item(item_id: int) -> ItemOut:
    """Fetch one item."""
    return ItemOut.model_validate(get_item_or_404(item_id))


@items_bp.patch(ITEM_URL)
@spec.validate(
    resp=Responses(
        HTTP_200=ItemOut,
        HTTP_400=Problem,
        HTTP_404=Problem,
        HTTP_413=Problem,
        HTTP_415=Problem,
    ),
    tags=TAGS,
    operation_id="update_item",
)
def update_item(item_id: int, json: ItemUpdate) -> ItemOut:
    """Change some fields of an item."""
    item = get_item_or_404(item_id)
    for field, value in json.model_dump(exclude_unset=True).items():
        setattr(item, field, value)
    db.session.commit()
    return ItemOut.model_validate(item)


@items_bp.delete(ITEM_URL)
@spec.validate(
    resp=Responses(HTTP_204=None, HTTP_404=Problem),
    tags=TAGS,
    operation_id="delete_item",
)
def delete_item(item_id: int) -> tuple[Response, int]:
    """Delete an item."""
    db.session.delete(get_item_or_404(item_id))
    db.session.commit()
    return Response(status=204), 204
