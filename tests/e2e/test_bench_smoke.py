"""The benchmarks still run: each ``--quick`` scenario exits 0 and writes its JSON.

A smoke test, not a measurement: no number is asserted. ``peers`` needs the optional
``bench`` extra (arq, SAQ, streaq); without it that test is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(scenario: str, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / f"{scenario}.json").read_text())
    assert report["scenario"] == scenario
    assert report["quick"] is True
    assert report["rows"]
    return report


@pytest.mark.timeout(120)
def test_throughput_quick(tmp_path: Path) -> None:
    report = run_bench("throughput", tmp_path)
    assert [row[0] for row in report["rows"]] == ["1 worker", "2 workers", "4 workers"]


@pytest.mark.timeout(120)
def test_cluster_quick(tmp_path: Path) -> None:
    report = run_bench("cluster", tmp_path)
    assert [row[:2] for row in report["rows"]] == [
        ["single", "1"],
        ["cluster (3 primaries, 16 partitions)", "1"],
        ["single", "3"],
        ["cluster (3 primaries, 16 partitions)", "3"],
    ]
    assert all(run["n"] == report["data"]["n"] for run in report["data"]["runs"])  # each ran them all


@pytest.mark.timeout(120)
def test_startup_quick(tmp_path: Path) -> None:
    # This interpreter, not a production environment synced for the bench (as a full run does).
    report = run_bench("startup", tmp_path, {"BENCH_WORKER_PYTHON": sys.executable})
    data = report["data"]
    assert data["worker_python"] == sys.executable
    assert len(data["runs"]) == len(data["stock_taskiq_runs"]) == data["first_job_s"]["n"]
    assert data["largest_imports_s"]


@pytest.mark.timeout(120)
def test_peers_quick(tmp_path: Path) -> None:
    missing = [name for name in ("arq", "saq", "streaq") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the optional 'bench' extra is missing ({', '.join(missing)}): uv sync --extra bench")
    report = run_bench("peers", tmp_path)
    assert [run["error"] for run in report["data"]["runs"] if "error" in run] == []
    systems = {row[0].rstrip(" *") for row in report["rows"]}
    assert systems == {"jobstream", "arq", "saq", "streaq", "taskiq-redis"}


@pytest.mark.timeout(120)
def test_cost_quick(tmp_path: Path) -> None:
    report = run_bench("cost", tmp_path)
    data = report["data"]
    assert data["creator_commands"]["EVALSHA create_job"] == data["n"]
    assert data["worker_commands"]["EVALSHA start_job"] == data["n"]
    assert data["worker_commands"]["EVALSHA finish_job"] == data["n"]


@pytest.mark.timeout(120)
def test_latency_quick(tmp_path: Path) -> None:
    report = run_bench("latency", tmp_path)
    data = report["data"]
    assert [series["samples"] for series in data["enqueue"].values()] == [50, 50]
    assert data["progress"]["deliveries"] >= 37  # 3/4 of 50: a slow client may skip to the newest state
    if shutil.which("redis-benchmark"):
        assert [f["test"] for f in data["redis_floor"]] == ["PING_INLINE", "PING_MBULK", "SET"]


@pytest.mark.timeout(120)
def test_fanout_quick(tmp_path: Path) -> None:
    report = run_bench("fanout", tmp_path)
    data = report["data"]
    assert [event["n"] for event in data["per_event"]] == [data["connections"]] * data["events"]
    assert data["redis_clients"]["pubsub"] == 1
    assert data["streams_closed_early"] == 0
