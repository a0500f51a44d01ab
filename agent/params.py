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


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value)
        except DarkstorageError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()
DURATION = DurationType()
