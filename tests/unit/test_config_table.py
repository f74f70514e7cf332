"""``jobstream config`` is generated from the settings object, and the README's table is its output."""

from __future__ import annotations

from pathlib import Path

from broker.settings import Settings
from cli import main as cli
from cli.config_command import README_BEGIN, README_END, markdown_table, report, shown, variables

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_table_is_what_jobstream_config_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index(README_BEGIN) + len(README_BEGIN) : readme.index(README_END)]
    assert table.strip() == markdown_table().strip(), "README drifted: paste `jobstream config --markdown`"


def test_every_setting_is_listed_with_its_meaning() -> None:
    listed = {variable.name: variable for variable in variables()}
    for field in Settings.__struct_fields__:
        variable = listed[f"JOBSTREAM_{field.upper()}"]
        assert len(variable.meaning) > 10, f"{field} has no meaning in broker/settings.py"
    assert {"JOBSTREAM_URL", "JOBSTREAM_TOKEN"} <= set(listed)


def test_config_prints_defaults_current_values_and_never_a_secret() -> None:
    environ = {
        "JOBSTREAM_REDIS_URL": "redis://:hunter2@db:6379/0",
        "JOBSTREAM_JWT_SECRET": "s3cret-s3cret-s3cret-s3cret-s3cret-!",
        "JOBSTREAM_LEASE_SECONDS": "12",
        "JOBSTREAM_TOKEN": "a-bearer-token",
    }
    text = report(environ)
    assert "hunter2" not in text and "s3cret" not in text and "a-bearer-token" not in text
    block = text[text.index("JOBSTREAM_LEASE_SECONDS\n") :].splitlines()[:4]
    assert block[1].split() == ["default", "30.0"] and block[2].split() == ["current", "12"]
    assert "redis://:***@db:6379/0" in text
    sentinel = next(v for v in variables() if v.name == "JOBSTREAM_REDIS_URL")
    assert shown(sentinel, "redis+sentinel://s:1/m?password=pw&db=0") == "redis+sentinel://s:1/m?password=***&db=0"


def test_jobstream_config_is_a_command() -> None:
    args = cli.build_parser().parse_args(["config", "--markdown"])
    assert args.markdown
