"""Request and response models of the items API; the OpenAPI document uses them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self

from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..models.item import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH, QUANTITY_MAX
from ..text import BLANK, UNREADABLE, readable, readable_lines

# At least one visible character, and nothing unreadable (text.py): every
# database can store it and every terminal shows it as stored. Joiners and
# directional marks stay: scripts and emoji need them.
Name = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=rf"^[^{UNREADABLE}]*[^{UNREADABLE}{BLANK}][^{UNREADABLE}]*$",
    ),
    AfterValidator(readable),
]
# Free text: newlines, carriage returns and tabs are fine, the rest of
# UNREADABLE is not.
DESCRIPTION_UNREADABLE = UNREADABLE.replace(r"\x00-\x1f", r"\x00-\x08\x0b\x0c\x0e-\x1f")
Description = Annotated[
    str,
    StringConstraints(
        max_length=DESCRIPTION_MAX_LENGTH, pattern=rf"^[^{DESCRIPTION_UNREADABLE}]*$"
    ),
    AfterValidator(readable_lines),
]


def json_integer(value: object) -> object:
    """Accept what JSON Schema calls an integer (3 and 3.0), nothing else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# Lax only for numbers, so 3.0 becomes 3 (1.5 is still refused), while "3" and
# true are refused as in strict mode.
Quantity = Annotated[
    int, Field(ge=0, le=QUANTITY_MAX, strict=False), BeforeValidator(json_integer)
]


class RequestModel(BaseModel):
    """A request body: strict JSON types and no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ItemCreate(RequestModel):
    """The fields a client sends to create an item."""

    name: Name
    description: Description | None = None
    quantity: Quantity = 0


class ItemUpdate(RequestModel):
    """A partial update: send only the fields that change (at least one).

    An absent field is MISSING, meaning "leave it as it is": it has no default in
    the schema and model_dump() leaves it out. null clears the description and is
    refused for the name and the quantity, which cannot be empty.
    """

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Name | MISSING = MISSING
    description: Description | MISSING | None = MISSING
    quantity: Quantity | MISSING = MISSING

    @model_validator(mode="after")
    def require_a_field(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("send at least one of: name, description, quantity")
        return self


def query_integer(value: object) -> object:
    """A number in a query string as people write it: the digits 0-9 only.

    Python's int() also reads "1_0", " 1" and digits of other scripts; each
    would be one more URL for the same page.
    """
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticCustomError(
            "int_parsing", "Input should be a whole number written with digits 0-9"
        )
    return value


QueryInteger = Annotated[int, BeforeValidator(query_integer)]


class PageQuery(BaseModel):
    """Pagination parameters of a list request."""

    model_config = ConfigDict(extra="forbid")

    page: QueryInteger = Field(default=1, ge=1, le=1_000_000)
    per_page: QueryInteger = Field(default=20, ge=1, le=100)


class ItemOut(BaseModel):
    """An item as the API returns it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    quantity: int
    owner_id: int | None = Field(
        description="The user who created it; only they or an admin may change it."
    )
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    """One page of items, with what a client needs to fetch the others."""

    items: list[ItemOut]
    page: int
    per_page: int
    total: int
    pages: int
