"""``jobstream dev`` as a person runs it, in a folder of its own with its embedded Redis: the other
commands find it by themselves, take ids by prefix and list jobs; a SIGKILLed worker is back
within 10 s; Ctrl-C lets a running job finish (the workers' grace) before everything stops."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from broker.keys import Keys
from devtools import dev_stack
from devtools.dev_state import STATE_PATH, DevState, adopt_dev, find_dev
from devtools.embedded_redis import EmbeddedRedis, free_port
from tests.support.polling import wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def jobstream(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``jobstream`` command in ``cwd`` (30 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=env or _plain_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _plain_env() -> dict[str, str]:
    """This environment without any JOBSTREAM_* (a fresh terminal), the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """``jobstream dev`` in ``tmp_path`` (one worker, no scheduler, a short grace), its stderr
    in a file; SIGKILLed with its group at the end if it is still running."""
    log = tmp_path / "dev.log"
    env = {**_plain_env(), "JOBSTREAM_SHUTDOWN_GRACE_SECONDS": "8", "JOBSTREAM_LEASE_SECONDS": "3"}
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "dev", "--port", str(free_port()), "--no-scheduler"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    try:
        yield proc, tmp_path, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _workers(base: str) -> list[dict[str, object]]:
    try:
        listed: list[dict[str, object]] = httpx.get(f"{base}/workers", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return []
    return listed


def test_the_cli_finds_dev_a_killed_worker_comes_back_and_ctrl_c_honours_the_grace(
    dev: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    proc, folder, log = dev
    state = wait_for(lambda: find_dev(folder), 30, "jobstream dev to write its state", log.read_text)
    assert state.pid == proc.pid and state.redis_url
    base = state.url
    first = wait_for(lambda: _workers(base), 30, "the worker's heartbeat", log.read_text)[0]

    assert jobstream("schedule", "list", cwd=folder).returncode == 0  # Redis found: no JOBSTREAM_REDIS_URL
    below = folder / "sub"
    below.mkdir()
    submitted = jobstream("submit", "demo.noop", "{}", "--watch", cwd=below)  # the web app found too
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    got = jobstream("get", job_id[:8], cwd=folder)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["status"] == "SUCCESS"
    listing = jobstream("list", "--status", "SUCCESS", "--type", "demo.noop", cwd=folder)
    assert listing.returncode == 0 and listing.stdout.split()[0] == job_id
    assert "jobstream dev (pid" in jobstream("config", cwd=folder).stdout

    os.kill(int(str(first["pid"])), signal.SIGKILL)
    killed = time.monotonic()
    back = wait_for(
        lambda: [w for w in _workers(base) if w["pid"] != first["pid"]], 15, "a new worker", log.read_text
    )
    assert time.monotonic() - killed < 10
    restarted = rf"worker-1 \(pid {first['pid']}\) exited by itself \(code -9\); restarted it as pid"
    assert re.search(restarted, log.read_text())

    running = jobstream("submit", "demo.sleep", '{"seconds": 3, "steps": 3}', cwd=folder)
    long_job = json.loads(running.stdout)["id"]
    wait_for(lambda: [w for w in _workers(base) if w["running"]], 10, "the long job to run", log.read_text)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, log.read_text()
    assert not (folder / STATE_PATH).exists()
    assert back  # the restarted worker ran it; Redis's AOF says how it ended
    with EmbeddedRedis(data_dir=folder / ".jobstream" / "redis") as again:
        client = redis.Redis(port=again.port)
        try:
            assert client.hget(Keys("js:").job(long_job), "status") == b"SUCCESS"
        finally:
            client.close()


def test_a_state_file_of_a_gone_dev_is_ignored_and_a_set_variable_wins(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with DevState(dead.pid, "http://127.0.0.1:1", "redis://127.0.0.1:1/0").written(tmp_path):
        assert find_dev(tmp_path) is None
    with DevState(os.getpid(), "http://127.0.0.1:2", "redis://127.0.0.1:2/0").written(tmp_path) as path:
        assert path == tmp_path / STATE_PATH and path.stat().st_mode & 0o077 == 0
        environ = {"JOBSTREAM_REDIS_URL": "redis://elsewhere:6379/0"}
        assert adopt_dev(environ, tmp_path) is not None
        assert environ["JOBSTREAM_REDIS_URL"] == "redis://elsewhere:6379/0"
        assert environ["JOBSTREAM_URL"] == "http://127.0.0.1:2"
    assert not (tmp_path / STATE_PATH).exists()


def test_dev_waits_for_the_workers_grace_unless_told_otherwise() -> None:
    grace = {"JOBSTREAM_SHUTDOWN_GRACE_SECONDS": "45"}
    assert dev_stack.stop_timeout(argparse.Namespace(stop_timeout=None), grace) == 55
    assert dev_stack.stop_timeout(argparse.Namespace(stop_timeout=3.0), grace) == 3.0
