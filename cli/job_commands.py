"""``jobstream submit``, ``watch``, ``get``, ``cancel`` and ``list``: the HTTP API from a terminal.

``submit --watch`` and ``watch`` draw a progress bar (percent, current step, ETA) that
follows the job over SSE, or by polling where SSE is not available. ``watch``, ``get`` and
``cancel`` take a job id or a unique start of one (:mod:`cli.job_listing`). The server is
``--url``, else ``JOBSTREAM_URL``, else the ``jobstream dev`` running here, else
``http://127.0.0.1:8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from broker.models import Job, JobStatus
from cli.job_listing import http_client, listed, print_rows, resolve_job_id
from client.http_client import JobstreamClient

URL_ENV = "JOBSTREAM_URL"
TOKEN_ENV = "JOBSTREAM_TOKEN"
_console = Console(stderr=True)


def _client(args: argparse.Namespace) -> JobstreamClient:
    return JobstreamClient(args.url, os.environ.get(TOKEN_ENV), use_sse=not args.poll)


async def _job_id(args: argparse.Namespace) -> str:
    """``args.id``, a job id or the unique start of one."""
    async with http_client(args.url, os.environ.get(TOKEN_ENV)) as http:
        return await resolve_job_id(http, args.id)


def _print_job(job: Job) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(job)).decode() + "\n")


def _eta(job: Job) -> str:
    return "" if job.eta_seconds is None else f"ETA {job.eta_seconds:.0f}s"


async def watch_job(client: JobstreamClient, job_id: str) -> Job:
    """Draw the job's progress until it ends; returns the final state."""
    final: Job | None = None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[step]}"),
        TextColumn("{task.fields[eta]}"),
    )
    with Progress(*columns, console=_console, transient=False) as bar:
        row = bar.add_task(job_id[:8], total=100, step="", eta="")
        async for job in client.follow(job_id):
            final = job
            bar.update(
                row,
                completed=job.progress,
                description=f"{job_id[:8]} {job.status}",
                step=job.message or "",
                eta=_eta(job),
            )
    assert final is not None
    return final


async def _submit(args: argparse.Namespace) -> int:
    data: Any = msgspec.json.decode(args.input) if args.input else {}
    async with _client(args) as client:
        job = await client.submit(
            args.type,
            data,
            idempotency_key=args.idempotency_key,
            timeout=args.timeout,
            labels=dict(args.label) if args.label else None,
        )
        if not args.watch:
            _print_job(job)
            return 0
        return _report(await watch_job(client, job.id))


async def _watch(args: argparse.Namespace) -> int:
    job_id = await _job_id(args)
    async with _client(args) as client:
        return _report(await watch_job(client, job_id))


async def _get(args: argparse.Namespace) -> int:
    job_id = await _job_id(args)
    async with _client(args) as client:
        _print_job(await client.get(job_id))
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    job_id = await _job_id(args)
    async with _client(args) as client:
        _print_job(await client.cancel(job_id))
    return 0


async def _list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"status": args.status, "type": args.type, "owner": args.owner}
    params = {name: value for name, value in params.items() if value}
    if args.label:
        params["label"] = [f"{key}:{value}" for key, value in args.label]
    async with http_client(args.url, os.environ.get(TOKEN_ENV)) as http:
        jobs = [job async for job in listed(http, params, args.limit)]
    if args.json:
        for job in jobs:
            sys.stdout.write(msgspec.json.encode(job).decode() + "\n")
    else:
        print_rows(jobs)
    return 0


def _report(job: Job) -> int:
    _print_job(job)
    return 0 if job.status == JobStatus.SUCCESS else 1


def _label(text: str) -> tuple[str, str]:
    """``--label case=42`` as ``("case", "42")``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is KEY=VALUE, not {text!r}")
    return key, value


def register(subparsers: Any) -> None:
    """Add the client subcommands to the ``jobstream`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, "http://127.0.0.1:8000"),
        help=f"server URL (default: ${URL_ENV} or %(default)s); token from ${TOKEN_ENV}",
    )
    common.add_argument("--poll", action="store_true", help="poll instead of using SSE")
    submit = subparsers.add_parser("submit", parents=[common], help="create a job")
    submit.add_argument("type", help="task type, e.g. demo.sleep")
    submit.add_argument("input", nargs="?", help="JSON input, e.g. '{\"seconds\": 5}'")
    submit.add_argument("--watch", "-w", action="store_true", help="show progress until it ends")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--timeout", type=float, help="seconds this job may run (at most its task's timeout)")
    submit.add_argument(
        "--label", action="append", type=_label, metavar="KEY=VALUE", help="a label on the job (repeatable)"
    )
    submit.set_defaults(handler=lambda a: asyncio.run(_submit(a)))
    for name, run, text in (
        ("watch", _watch, "follow a job with a progress bar"),
        ("get", _get, "print a job"),
        ("cancel", _cancel, "cancel a job"),
    ):
        parser = subparsers.add_parser(name, parents=[common], help=text)
        parser.add_argument("id", help="a job id, or the start of one that no other job id has")
        parser.set_defaults(handler=lambda a, run=run: asyncio.run(run(a)))
    _register_list(subparsers, common)


def _register_list(subparsers: Any, common: argparse.ArgumentParser) -> None:
    listing = subparsers.add_parser(
        "list", parents=[common], help="list jobs, newest first (an admin's: every owner's)"
    )
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument("--type", help="task type, e.g. demo.sleep")
    listing.add_argument(
        "--label", action="append", type=_label, metavar="KEY=VALUE", help="carrying this label (repeatable)"
    )
    listing.add_argument("--owner", help="another owner's jobs (admins and services)")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default: %(default)s)")
    listing.add_argument("--json", action="store_true", help="one JSON job a line")
    listing.set_defaults(handler=lambda a: asyncio.run(_list(a)))
