"""``--schedule`` on ``bucket2iso`` / ``bucket2dmg`` and ``darkstorage jobs list|run-now|remove``.

``bucket2iso SOURCE --output OUT ... --schedule CRON`` builds nothing: it registers an image job
(:mod:`agent.jobs`) holding the same command line with absolute paths, which the agent
(``darkstorage agent start``) runs at every tick of CRON (:mod:`agent.jobs_run`).
"""

from __future__ import annotations

import functools
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from pool.config import pool_home
from pool.errors import NotFoundError, UsageError

from .console import console, emit_json
from .jobs import Job, JobStore, check_cron, check_name

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
_OWN = ("schedule", "job_name", "as_json")


def schedule_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``--schedule CRON`` and ``--name NAME`` to the image command *command*: with
    ``--schedule`` the command registers a job instead of building (put this decorator right
    under ``@click.command`` so it sees every option as given)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, schedule: str | None, job_name: str | None, **kw: Any) -> Any:
            if schedule is None:
                if job_name is not None:
                    raise UsageError("--name names a scheduled job: it goes with --schedule")
                return f(*args, **kw)
            register(command, click.get_current_context(), schedule, job_name, bool(kw.get("as_json")))
            return None

        wrapper = click.option(
            "--name", "job_name", default=None, help="With --schedule: the job's name (default: OUTPUT's stem)."
        )(wrapper)
        wrapper = click.option(
            "--schedule",
            metavar="CRON",
            default=None,
            help='Register a job the agent runs on this cron schedule (e.g. "0 2 * * *") instead of building now.',
        )(wrapper)
        return wrapper

    return deco


def _source(spec: str) -> str:
    """SOURCE as the job stores it: a folder made absolute, or a bucket (path) as given.

    Raises:
        NotFoundError: a folder that does not exist, or no such bucket.
    """
    from .sources import _looks_like_folder

    path = Path(spec).expanduser()
    if _looks_like_folder(spec) or path.is_dir():
        if not path.is_dir():
            raise NotFoundError(f"no such folder: {spec}")
        return str(path.absolute())
    from pool.errors import NotInitialisedError
    from pool.pool import Pool

    try:
        pool = Pool.open()
    except NotInitialisedError:
        raise NotFoundError(f"no such folder or bucket: {spec}") from None
    try:
        if spec.strip("/").partition("/")[0] not in {b.name for b in pool.bucket_infos()}:
            raise NotFoundError(f"no such folder or bucket: {spec}")
    finally:
        pool.close()
    return spec


def _value(v: Any) -> str:
    return str(v.expanduser().absolute()) if isinstance(v, Path) else str(v)


def job_argv(ctx: click.Context) -> list[str]:
    """The command line (after the command name) that rebuilds what *ctx* was asked for: every
    argument, and every option given on the command line or through its environment variable,
    paths made absolute; ``--schedule``, ``--name`` and ``--json`` left out."""
    argv: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in _OWN:
            continue
        value = ctx.params.get(name)
        if isinstance(param, click.Argument):
            argv.append(_source(str(value)) if name == "source" else _value(value))
            continue
        if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT) or value is None:
            continue
        opt = max(param.opts, key=len)
        if isinstance(param, click.Option) and param.is_flag:
            if value:
                argv.append(opt)
        elif isinstance(param, click.Option) and param.multiple:
            for v in value:
                argv += [opt, _value(v)]
        else:
            argv += [opt, _value(value)]
    return argv


def _check_secrets(params: dict[str, Any]) -> None:
    """A scheduled run cannot ask for a password and a job never stores one."""
    indirect = params.get("password_env") or params.get("password_file")
    if params.get("password") is True or (params.get("encrypt") and not indirect):
        raise UsageError(
            "--schedule: the agent cannot ask for a password and a job never stores one: "
            "give it with --password-env VAR or --password-file FILE"
        )


def register(command: str, ctx: click.Context, schedule: str, name: str | None, as_json: bool) -> Job:
    """Validate and save the job *ctx* describes; print what was registered and when it runs."""
    from .daemon import agent_pid

    check_cron(schedule)
    params = ctx.params
    if params.get("append"):
        raise UsageError("--schedule cannot --append (each run builds a fresh image and replaces the last one)")
    _check_secrets(params)
    output = Path(params["output"]).expanduser().absolute()
    job = Job(check_name(name or output.stem), command, job_argv(ctx), str(output), schedule)
    home = pool_home()
    with JobStore(home) as store:
        new = store.save(job)
        job = store.get(job.name)
    running = agent_pid(home) is not None
    env = params.get("password_env")
    if as_json:
        emit_json({**job.as_dict(), "registered": "new" if new else "updated", "agent_running": running})
        return job
    verb = "registered" if new else "updated"
    console.print(f"{verb} image job {job.name}: darkstorage {shlex.join(job.command_line())}", soft_wrap=True)
    console.print(f"schedule {schedule!r}: next run {_when(job.next_run().timestamp())}", soft_wrap=True)
    if env and env not in os.environ:
        console.print(
            f"note: the agent reads the password from ${env}: set it in the agent's environment", soft_wrap=True
        )
    if not running:
        console.print("the agent is not running: start it with `darkstorage agent start`", style="yellow")
    return job


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(ts))


@click.group()
def jobs() -> None:
    """Image jobs: bucket2iso / bucket2dmg runs registered with --schedule, run by the agent.

    \b
    Example:
      darkstorage bucket2iso photos -o ~/Backups/weekly.iso --schedule "0 0 * * 0" --compress gzip
      darkstorage jobs list
      darkstorage jobs run-now weekly
      darkstorage jobs remove weekly
    """


@jobs.command("list")
@json_option
def jobs_list(as_json: bool) -> None:
    """List image jobs: schedule, next run, last result.

    \b
    Example:
      darkstorage jobs list --json
    """
    with JobStore(pool_home()) as store:
        items = store.list()
    if as_json:
        emit_json([j.as_dict() for j in items])
        return
    if not items:
        console.print("no image jobs (register one with bucket2iso/bucket2dmg --schedule CRON)")
        return
    from rich.table import Table

    table = Table("job", "schedule", "next run", "last run", "output")
    for j in items:
        last = "never"
        if j.last_run_ns is not None:
            last = f"{_when(j.last_run_ns / 1e9)} {j.last_result}"
            if j.last_result != "ok" and j.last_message:
                last += f": {j.last_message}"
        table.add_row(j.name, j.schedule, _when(j.next_run().timestamp()), last, f"{j.command} -> {j.output}")
    console.print(table)


@jobs.command("run-now")
@click.argument("name")
@json_option
def jobs_run_now(name: str, as_json: bool) -> None:
    """Run job NAME now in the foreground (progress bar, same exit codes as the command itself);
    the previous image stays until the new one is complete and verified.

    \b
    Example:
      darkstorage jobs run-now weekly-backup
    """
    from .jobs_run import run_job

    started = time.monotonic()
    out = run_job(pool_home(), name, as_json=as_json)
    out["elapsed_s"] = round(time.monotonic() - started, 3)
    if as_json:
        emit_json(out)
        return
    files = out["files"]
    shown = ", ".join(files) if len(files) <= 3 else f"{files[0]} … {Path(files[-1]).name} ({len(files)} files)"
    console.print(f"job {name}: verified and installed {shown}", soft_wrap=True)


@jobs.command("remove")
@click.argument("name")
@json_option
def jobs_remove(name: str, as_json: bool) -> None:
    """Forget job NAME (the images it wrote are kept).

    \b
    Example:
      darkstorage jobs remove weekly-backup
    """
    with JobStore(pool_home()) as store:
        job = store.remove(name)
    if as_json:
        emit_json({"removed": job.name, "output": job.output})
    else:
        console.print(f"removed image job {job.name} (the images in {Path(job.output).parent} are kept)")
