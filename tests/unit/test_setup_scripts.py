"""``./run test`` on a fresh machine: ``scripts/system-packages`` installs what the tests need,
or says in one line what to install. Run with a PATH that lacks redis-server, redis-sentinel,
chromium and npm, and with stand-ins for ``id`` and ``apt-get``, so nothing on this machine is changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-packages"


def bare_path(tmp_path: Path, uid: int, with_apt: bool) -> dict[str, str]:
    """An environment whose PATH holds bash, a fake ``id`` and (maybe) a recording ``apt-get``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "chmod", "rm"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    bash = shutil.which("bash")
    policy = tmp_path / "policy-rc.d"
    fake = {"id": f"#!{bash}\necho {uid}\n"}
    if with_apt:  # records its arguments, and whether services were barred from starting
        fake["apt-get"] = f'#!{bash}\necho "$@ $("{policy}"; echo $?)" >>"{tmp_path}/apt.log"\n'
    for name, text in fake.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path), "POLICY_RC_D": str(policy)}


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_without_root_it_stops_at_once_with_one_line_naming_what_to_install(tmp_path: Path) -> None:
    done = run(bare_path(tmp_path, uid=1000, with_apt=True))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "redis-server redis-sentinel chromium nodejs npm" in lines[0] and "apt-get install" in lines[0]
    assert not (tmp_path / "apt.log").exists()


def test_without_apt_it_says_what_to_install_even_as_root(tmp_path: Path) -> None:
    done = run(bare_path(tmp_path, uid=0, with_apt=False))
    assert done.returncode == 1
    assert "install redis-server redis-sentinel chromium nodejs npm" in done.stderr


def test_as_root_with_apt_it_installs_them_without_starting_a_service(tmp_path: Path) -> None:
    done = run(bare_path(tmp_path, uid=0, with_apt=True))
    assert done.returncode == 0, done.stderr
    assert "installing redis-server redis-sentinel chromium nodejs npm" in done.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    # 101: invoke-rc.d's "action forbidden", so the packaged Redis service is not started
    assert calls == ["update -qq 101", "install -y -qq redis-server redis-sentinel chromium nodejs npm 101"]
    assert not (tmp_path / "policy-rc.d").exists()  # the service guard is removed afterwards


def test_nothing_happens_when_all_are_on_path(tmp_path: Path) -> None:
    env = bare_path(tmp_path, uid=1000, with_apt=True)
    for name in ("redis-server", "redis-sentinel", "chromium", "npm"):
        (Path(env["PATH"]) / name).symlink_to(shutil.which("true") or "/bin/true")
    done = run(env)
    assert (done.returncode, done.stderr) == (0, "")


def test_ci_and_the_test_command_go_through_it() -> None:
    root = SCRIPT.parent.parent
    assert "scripts/system-packages" in (root / "scripts" / "test").read_text()
    assert "./run test" in (root / ".ci" / "run").read_text()
    assert os.access(SCRIPT, os.X_OK)
