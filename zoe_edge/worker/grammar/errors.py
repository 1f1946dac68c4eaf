"""What can be wrong with a schema, and the type of a core schema."""

from __future__ import annotations

from typing import Any


class UnsupportedSchema(ValueError):
    """A schema problem; ``features`` names each one with its path."""

    def __init__(self, features: list[str]) -> None:
        super().__init__("; ".join(features))
        self.features = features


class InvalidSchema(UnsupportedSchema):
    """Not a JSON Schema at all (a string where a schema must be, ``minimum: "x"``): a client error."""


Core = dict[str, Any] | bool
