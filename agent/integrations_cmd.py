"""``darkstorage integrations``: connect external stores (S3, GCS, Azure, SFTP, FTP, WebDAV,
local/NFS), test them with a real round trip, rotate their credentials, remove them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pool.connectors import NOT_AVAILABLE, Kind, Option, kinds
from pool.errors import UnsupportedError, UsageError
from pool.integrations import (
    Step,
    add_integration,
    catalogue,
    describe,
    integration_names,
    remove_integration,
    roundtrip,
    update_integration,
)

from .console import console, emit_json


@click.group()
def integrations() -> None:
    """External stores (integrations): tiers, push/pull and sync targets.

    Secrets go to the OS keyring or an encrypted file, never to the config, and are masked in
    every output; give them as --SECRET, --SECRET-file PATH or --SECRET-env VAR.

    \b
    Example:
      darkstorage integrations list
      darkstorage integrations add s3 --name my-aws-backup --bucket backups \\
          --region us-east-1 --access-key AKIA... --secret-key-env AWS_SECRET
      darkstorage integrations test my-aws-backup
    """


def _secret_opts(o: Option) -> list[click.Option]:
    flag = o.flag_name
    return [
        click.Option([flag, o.name], default=None, help=f"{o.help} (secret: prefer {flag}-file or {flag}-env)."),
        click.Option(
            [f"{flag}-file", f"{o.name}_file"],
            default=None,
            type=click.Path(dir_okay=False, allow_dash=True),
            help=f"Read {o.name.replace('_', ' ')} from a file ('-': stdin).",
        ),
        click.Option(
            [f"{flag}-env", f"{o.name}_env"],
            default=None,
            metavar="VAR",
            help=f"Read {o.name.replace('_', ' ')} from environment variable VAR at each use (stored: the name only).",
        ),
    ]


def _plain_opt(o: Option, *, for_update: bool) -> click.Option:
    if o.flag:
        if for_update:
            neg = "--no-" + o.flag_name[2:]
            return click.Option([f"{o.flag_name}/{neg}", o.name], default=None, help=o.help)
        return click.Option([o.flag_name, o.name], is_flag=True, default=False, help=o.help)
    return click.Option(
        [o.flag_name, o.name],
        default=None,
        type=click.Choice(o.choices) if o.choices else o.type,
        required=False,
        show_default=False,
        help=o.help
        + (" [required]" if o.required and not for_update else "")
        + (f" [default: {o.default}]" if o.default is not None and not for_update else ""),
    )


def _split(spec_options: list[Option], params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    options: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    env_refs: dict[str, str] = {}
    for o in spec_options:
        if o.secret:
            value, path, var = params.get(o.name), params.get(f"{o.name}_file"), params.get(f"{o.name}_env")
            if sum(x is not None for x in (value, path, var)) > 1:
                raise UsageError(f"give {o.flag_name} one way only (value, -file or -env)")
            if path is not None:
                text = sys.stdin.read() if path == "-" else Path(path).read_text()
                value = text if o.name.endswith("_json") else text.strip()
            if value is not None:
                secrets[o.name] = value
            if var is not None:
                env_refs[o.name] = var
        elif params.get(o.name) is not None:
            options[o.name] = params[o.name]
    return options, secrets, env_refs


def _add_command(spec: Kind) -> click.Command:
    def run(name: str, **params: Any) -> None:
        options, secrets, env_refs = _split(list(spec.options), params)
        integ = add_integration(spec.name, name, options, secrets, env_refs)
        console.print(f"added integration {name} ({integ.kind}); check it with `darkstorage integrations test {name}`")

    params: list[click.Parameter] = [click.Option(["--name", "name"], required=True, help="Name for this integration.")]
    for o in spec.options:
        if o.name in spec.preset:
            continue
        params += _secret_opts(o) if o.secret else [_plain_opt(o, for_update=False)]
    alias = f" (the s3 connector with preset {spec.name})" if spec.base == "s3" else ""
    return click.Command(
        spec.name,
        callback=run,
        params=params,
        help=f"Add a {spec.label} integration{alias} ({spec.backend}).\n\n\b\nExample:\n  {spec.example}",
        short_help=spec.label,
    )


class _AddGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(kinds())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        all_kinds = kinds()
        if cmd_name in all_kinds:
            return _add_command(all_kinds[cmd_name])
        if cmd_name in NOT_AVAILABLE:
            raise UnsupportedError(f"{cmd_name} is not available: {NOT_AVAILABLE[cmd_name]}")
        return None


@integrations.group("add", cls=_AddGroup)
def integrations_add() -> None:
    """Add an integration of KIND (run `darkstorage integrations add KIND --help` for its options).

    \b
    Example:
      darkstorage integrations add sftp --name nas --host nas.lan --username me \\
          --key-file ~/.ssh/id_ed25519 --path /backup
      darkstorage integrations add wasabi --name w --bucket b --access-key K --secret-key-file key.txt
    """


@integrations.command("list")
@click.option("--configured", is_flag=True, help="Only the integrations set up in this pool.")
@click.option("--json", "as_json", is_flag=True)
def integrations_list(configured: bool, as_json: bool) -> None:
    """List connector kinds (available or not, with the reason) or, with --configured, the
    configured integrations (secrets masked).

    \b
    Example:
      darkstorage integrations list
      darkstorage integrations list --configured --json
    """
    from rich.table import Table

    if configured:
        rows = [describe(n) for n in integration_names()]
        if as_json:
            emit_json(rows)
            return
        table = Table("name", "kind", "where", "secrets", "tiers")
        for r in rows:
            o = r["options"]
            where = "/".join(str(o[k]) for k in ("host", "url", "bucket", "container", "path", "prefix") if o.get(k))
            secrets = ", ".join(f"{k}={v['value'] or '(unset)'} [{v['source']}]" for k, v in r["secrets"].items())
            table.add_row(r["name"], r["kind"], where, secrets or "-", ", ".join(r["used_by_tiers"]) or "-")
        console.print(table)
        return
    cat = catalogue()
    if as_json:
        emit_json(cat)
        return
    table = Table("kind", "description", "status")
    for c in cat:
        status = f"available ({c['backend']})" if c["available"] else f"not available: {c['reason']}"
        table.add_row(c["kind"], c["label"], status)
    console.print(table)


@integrations.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def integrations_show(name: str, as_json: bool) -> None:
    """Show one integration: kind, options, where each secret comes from (masked), revision.

    \b
    Example:
      darkstorage integrations show my-aws-backup --json
    """
    d = describe(name)
    if as_json:
        emit_json(d)
        return
    console.print(f"[bold]{d['name']}[/bold] ({d['kind']}), revision {d['revision']}")
    for k, v in d["options"].items():
        console.print(f"  {k.replace('_', '-')}: {v}")
    for k, v in d["secrets"].items():
        console.print(f"  {k.replace('_', '-')}: {v['value'] or '(unset)'}  [{v['source']}]")
    console.print(f"  secrets kept in: {d['secret_store']}")
    if d["used_by_tiers"]:
        console.print(f"  backs tier(s): {', '.join(d['used_by_tiers'])}")


@integrations.command("test")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def integrations_test(name: str, as_json: bool) -> None:
    """Round trip against the store: connect, put a test object, list, get and verify its
    xxh3-128, delete. Exit 15 when the credentials are rejected, 10 when unreachable.

    \b
    Example:
      darkstorage integrations test my-aws-backup
    """
    steps: list[Step] = []

    def report(st: Step) -> None:
        steps.append(st)
        if not as_json:
            mark = "[green]ok[/green]" if st.ok else "[red]failed[/red]"
            console.print(f"  {st.name:<13} {mark} {st.duration_s * 1000:8.1f} ms  {st.detail}", highlight=False)

    try:
        roundtrip(name, report=report)
    finally:
        if as_json:
            emit_json(
                {
                    "name": name,
                    "ok": bool(steps) and all(s.ok for s in steps),
                    "steps": [
                        {"step": s.name, "ok": s.ok, "duration_s": round(s.duration_s, 4), "detail": s.detail}
                        for s in steps
                    ],
                }
            )
    if not as_json:
        console.print(f"integration {name} works")


def _update_params() -> list[click.Parameter]:
    seen: dict[str, Option] = {}
    for spec in kinds().values():
        for o in spec.options:
            seen.setdefault(o.name, o)
    params: list[click.Parameter] = []
    for o in seen.values():
        params += _secret_opts(o) if o.secret else [_plain_opt(o, for_update=True)]
    return params


def _update(name: str, **params: Any) -> None:
    from pool.integrations import get_integration

    spec = get_integration(name).spec
    allowed = {o.name for o in spec.options} | {f"{o.name}_{s}" for o in spec.options for s in ("file", "env")}
    extra = [k for k, v in params.items() if v is not None and k not in allowed]
    if extra:
        raise UsageError(f"{spec.name} has no option --{extra[0].replace('_', '-')}")
    options, secrets, env_refs = _split(list(spec.options), params)
    if not (options or secrets or env_refs):
        raise UsageError("nothing to change: give options or new secrets")
    integ = update_integration(name, options, secrets, env_refs)
    changed = [*options, *secrets, *(f"{k}_env" for k in env_refs)]
    console.print(f"updated {name}: {', '.join(changed)} (revision {integ.revision}; running mounts reconnect)")


integrations_update = click.Command(
    "update",
    callback=_update,
    params=[click.Argument(["name"]), *_update_params()],
    help="Change an integration's options or rotate its secrets; running mounts pick the change up "
    "without remounting.\n\n\b\nExample:\n  darkstorage integrations update my-aws-backup --secret-key-file new.txt\n"
    "  darkstorage integrations update nas --password-env NAS_PASSWORD",
    short_help="Change options or rotate secrets.",
)
integrations.add_command(integrations_update)


@integrations.command("remove")
@click.argument("name")
def integrations_remove(name: str) -> None:
    """Remove an integration and its stored secrets (refused while a tier uses it).

    \b
    Example:
      darkstorage integrations remove my-aws-backup
    """
    remove_integration(name)
    console.print(f"removed integration {name}")
