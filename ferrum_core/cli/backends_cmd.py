"""`ferrum list-backends` and `ferrum info`."""

from __future__ import annotations

import json

import click

from ferrum_core.backends import get_registry
from ferrum_core.inventory import backends_report

__all__ = ["list_backends", "info"]


@click.command("list-backends")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_backends(as_json: bool) -> None:
    """List installed plugins and their backends with state and reason."""
    report = backends_report()
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    click.echo(f"ferrum {report.ferrum_version} (plugin API {report.api_version})")
    if not report.backends:
        click.echo("no backends registered; install one, e.g. `pip install ferrum-cuda`")
    rows = [("", "BACKEND", "PRIORITY", "STATE", "DISTRIBUTION", "REASON")]
    for b in sorted(report.backends, key=lambda b: (-b.priority, b.name)):
        mark = "*" if b.selected else ""
        rows.append((mark, b.name, str(b.priority), b.state, f"{b.distribution} {b.version}",
                     b.reason))
    if report.backends:
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(5)] + [row[5]]
            click.echo("  ".join(cells).rstrip())
    broken = [p for p in report.plugins if p.state != "loaded"]
    if broken:
        click.echo("\nplugins not loaded:")
        for p in broken:
            click.echo(f"  {p.entry_point} ({p.distribution} {p.version}): {p.state}: {p.reason}")
    notes = [p for p in report.plugins if p.state == "loaded" and p.reason]
    if notes:
        click.echo("\nplugin notes:")
        for p in notes:
            click.echo(f"  {p.entry_point} ({p.distribution} {p.version}): {p.reason}")


@click.command("info")
@click.argument("backend")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(backend: str, as_json: bool) -> None:
    """Show BACKEND's registration, state and static capabilities."""
    record = get_registry().get(backend)
    d = record.descriptor
    data = {
        "name": d.name,
        "plugin": d.plugin,
        "distribution": d.distribution,
        "version": d.version,
        "description": d.description,
        "state": record.state.value,
        "reason": record.reason,
        "priority": record.priority,
        "capabilities": None if d.capabilities is None else d.capabilities.model_dump(mode="json"),
        "details": d.describe_details(),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key in ("name", "distribution", "version", "state", "reason", "priority", "description"):
        click.echo(f"{key:>13}: {data[key]}")
    for section in ("capabilities", "details"):
        facts = data[section]
        if isinstance(facts, dict):
            click.echo(f"{section}:")
            for key, value in facts.items():
                click.echo(f"  {key}: {value}")
