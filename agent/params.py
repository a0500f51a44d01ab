"""Click parameter types for sizes and durations."""

from __future__ import annotations

from typing import Any

import click

from pool.errors import DarkstorageError
from pool.units import parse_duration, parse_size


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except DarkstorageError as e:
            self.fail(str(e), param, ctx)


class SizeOrUnlimitedType(click.ParamType):
    """A size, or ``unlimited`` (None)."""

    name = "SIZE|unlimited"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "unlimited"):
            return None
        try:
            return parse_size(value)
        except DarkstorageError as e:
            self.fail(f"{e} or 'unlimited'", param, ctx)


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value)
        except DarkstorageError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()
SIZE_OR_UNLIMITED = SizeOrUnlimitedType()
DURATION = DurationType()
