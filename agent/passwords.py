"""Where an image password or passphrase comes from: a hidden prompt, an environment variable
or a file (``--password`` / ``--password-env VAR`` / ``--password-file FILE``), for
``bucket2dmg`` / ``dmg ...`` and ``bucket2iso --encrypt``. Scheduled jobs store the variable's
name or the file's path, never the secret (see :mod:`agent.jobs_cmd`)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pool.errors import UsageError


class PasswordSource:
    """Where an image password comes from: ``--password`` (a hidden prompt), ``--password-env
    VAR`` or ``--password-file FILE`` (its first line). Read once, when first needed."""

    def __init__(self, ask: bool, env: str | None, file: Path | None) -> None:
        if ask + (env is not None) + (file is not None) > 1:
            raise UsageError("give only one of --password, --password-env and --password-file")
        self.ask, self.env, self.file = ask, env, file
        self.value: str | None = None

    @property
    def given(self) -> bool:
        return self.ask or self.env is not None or self.file is not None

    def get(self, *, confirm: bool = False) -> str:
        if self.value is not None:
            return self.value
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise UsageError(f"--password-env: the environment variable {self.env} is not set")
        elif self.file is not None:
            try:
                value = self.file.read_text().splitlines()[0] if self.file.stat().st_size else ""
            except OSError as e:
                raise UsageError(f"--password-file {self.file}: {e.strerror}") from None
        elif self.ask or sys.stdin.isatty():
            value = click.prompt("password", hide_input=True, confirmation_prompt=confirm, err=True)
        else:
            raise UsageError("this needs a password: --password (asks), --password-env VAR or --password-file FILE")
        if not value:
            raise UsageError("an empty password is not allowed")
        self.value = str(value)
        return self.value


def password_options(f: Callable[..., Any] | None = None, *, what: str = "image password") -> Any:
    """``--password`` / ``--password-env VAR`` / ``--password-file FILE``, passed to *f* as one
    :class:`PasswordSource` named ``password``. Use bare (``@password_options``) or with the
    name of the secret for the help text (``@password_options(what="age passphrase")``)."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, password: bool, password_env: str | None, password_file: Path | None, **kw: Any) -> Any:
            return f(*args, password=PasswordSource(password, password_env, password_file), **kw)

        for opt in (
            click.option(
                "--password-file", type=click.Path(path_type=Path, dir_okay=False), help="Read it from a file."
            ),
            click.option("--password-env", metavar="VAR", help="Read it from this environment variable."),
            click.option("--password", is_flag=True, help=f"Ask for the {what} (hidden)."),
        ):
            wrapper = opt(wrapper)
        return wrapper

    return decorate(f) if f is not None else decorate
