"""Request and response models of the items API; the OpenAPI document uses them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from ..models.item import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH, QUANTITY_MAX

# At least one visible character and no control characters: every database can
# store it and every terminal can print it.
Name = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
    ),
]
# Free text: newlines and tabs are fine, other control characters (NUL) are not.
Description = Annotated[
    str,
    StringConstraints(
        max_length=DESCRIPTION_MAX_LENGTH,
        pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$",
    ),
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
    """A partial update: send only the fields that change (at least one)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    # null is not a valid name or quantity; SkipJsonSchema keeps it out of the docs.
    name: Name | SkipJsonSchema[None] = None
    description: Description | None = None
    quantity: Quantity | SkipJsonSchema[None] = None

    @field_validator("name", "quantity")
    @classmethod
    def reject_null(cls, value: str | int | None) -> str | int:
        # Runs only for fields the client sent, so omitted fields stay None.
        if value is None:
            raise ValueError("cannot be null")
        return value

    @model_validator(mode="after")
    def require_a_field(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("send at least one of: name, description, quantity")
        return self


class PageQuery(BaseModel):
    """Pagination parameters of a list request."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=20, ge=1, le=100)


class ItemOut(BaseModel):
    """An item as the API returns it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    quantity: int
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    """One page of items, with what a client needs to fetch the others."""

    items: list[ItemOut]
    page: int
    per_page: int
    total: int
    pages: int
