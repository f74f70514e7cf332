"""``jobstream schedule``: add, list and remove runtime schedules while the scheduler runs.

    jobstream schedule add --cron "*/5 * * * *" demo.noop '{}'
    jobstream schedule add --every 30 demo.sleep '{"seconds": 2}' --owner alice --id nightly
    jobstream schedule add --at 2030-01-01T09:00:00+00:00 demo.noop
    jobstream schedule list
    jobstream schedule remove nightly

``cli.main`` mounts it with :func:`register`; ``python -m cli.schedule_commands ...`` runs
it on its own. Settings come from the ``JOBSTREAM_*`` environment, as for every role.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any

from taskiq import ScheduledTask

from broker.errors import JobstreamError
from broker.registry import load_task_modules, registry
from broker.settings import load_settings
from scheduler.schedule_source import add_schedule, build_schedule, list_schedules, remove_schedule


def run_add(args: argparse.Namespace) -> int:
    """Validate and store a schedule; print its id."""
    settings = load_settings()
    load_task_modules(settings.task_modules)
    schedule = build_schedule(
        registry,
        args.task,
        args.input.encode(),
        cron=args.cron,
        every_seconds=args.every,
        at=args.at,
        owner=args.owner,
        schedule_id=args.id,
    )
    print(asyncio.run(add_schedule(settings, schedule)))
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print every stored schedule, one a line: id, rule, task, owner, input."""
    for schedule in asyncio.run(list_schedules(load_settings())):
        print(describe(schedule))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove a schedule by id; exit 1 if there was none."""
    if asyncio.run(remove_schedule(load_settings(), args.id)):
        print(f"removed {args.id}")
        return 0
    print(f"no schedule {args.id}", file=sys.stderr)
    return 1


def describe(schedule: ScheduledTask) -> str:
    """One line for ``jobstream schedule list``."""
    if schedule.cron is not None:
        rule = f"cron {schedule.cron!r}"
    elif schedule.interval is not None:
        every = schedule.interval
        rule = f"every {every if isinstance(every, int) else int(every.total_seconds())}s"
    else:
        rule = f"at {schedule.time.isoformat() if schedule.time else '?'}"
    owner = schedule.labels.get("owner", "scheduler")
    data: Any = schedule.kwargs if schedule.kwargs or not schedule.args else schedule.args[0]
    return f"{schedule.schedule_id}\t{rule}\t{schedule.task_name}\towner={owner}\tinput={data}"


def _aware_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# argparse has no public name for the type add_subparsers() returns.
def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``jobstream schedule {add,list,remove}`` on the ``jobstream`` parser."""
    parser = subparsers.add_parser(
        "schedule",
        help="add, list or remove runtime schedules",
        description="Runtime schedules of jobstream tasks, kept in Redis; a running scheduler "
        "picks up new ones at its next refresh (--update-interval) and stops removed ones at once.",
    )
    actions = parser.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add (or replace) a schedule; prints its id")
    rule = add.add_mutually_exclusive_group(required=True)
    rule.add_argument("--cron", help='5-field cron expression, UTC (e.g. "*/5 * * * *")')
    rule.add_argument("--every", type=int, metavar="SECONDS", help="run every SECONDS (at least 1)")
    rule.add_argument(
        "--at", type=_aware_time, metavar="ISO_TIME", help="run once at this time (UTC if no offset)"
    )
    add.add_argument("task", help="task name, e.g. demo.noop")
    add.add_argument("input", nargs="?", default="{}", help="the task input as JSON (default: {})")
    add.add_argument("--owner", help="who owns the jobs it creates (default: scheduler)")
    add.add_argument("--id", help="schedule id (default: a random one); an existing id is replaced")
    add.set_defaults(handler=run_add)

    listing = actions.add_parser("list", help="list the stored schedules")
    listing.set_defaults(handler=run_list)

    remove = actions.add_parser("remove", help="remove a schedule by id")
    remove.add_argument("id")
    remove.set_defaults(handler=run_remove)


add_schedule_command = register
"""The name ``cli.main`` gives its subcommand registrars (``add_<name>_command``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cli.schedule_commands ...``: the same subcommand without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="jobstream")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["schedule", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args))
    except JobstreamError as err:
        print(f"jobstream: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
