"""``mypy --strict`` checks what a task object is given and types what it answers: a user's
code, checked as their CI would check it."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

pytestmark = pytest.mark.timeout(300)

USER_CODE = textwrap.dedent(
    """\
    from broker import Job, JobHandle
    from workers.tasks.demo import SleepInput, WordcountInput, sleep, wordcount

    async def use() -> None:
        run = await sleep.kiq(SleepInput(seconds=1), owner="alice")
        reveal_type(run)
        reveal_type(await run.wait_result(timeout=5))
        counted = await wordcount.kiq(WordcountInput(text="a"), owner="alice")
        reveal_type(await counted.wait_result())
        job: Job = await sleep.submit(SleepInput(), owner="alice")
        await sleep.kiq({"seconds": 1}, owner="alice")
        await sleep.submit(SleepInput())
        wrong: JobHandle[int] = await sleep.kiq(SleepInput(), owner="alice")
    """
)


def test_the_input_is_checked_and_the_result_typed(tmp_path: Path) -> None:
    user = tmp_path / "user_code.py"
    user.write_text(USER_CODE)
    cache = str(tmp_path / "mypy")
    out, err, _ = api.run(["--strict", "--no-error-summary", "--cache-dir", cache, str(user)])
    reported = re.findall(r"user_code\.py:(\d+): (?:note|error): (.*?)(?:  \[[\w-]+\])?$", out, re.M)
    found = {
        (int(line), text.replace("builtins.", ""))  # mypy versions differ in this prefix
        for line, text in reported
        if "defined in" not in text
    }
    assert found == {
        (6, 'Revealed type is "broker.task_object.JobHandle[workers.tasks.demo.SleepResult]"'),
        (7, 'Revealed type is "workers.tasks.demo.SleepResult"'),
        (9, 'Revealed type is "list[workers.tasks.demo.WordCount]"'),
        (11, 'Argument 1 to "kiq" of "Task" has incompatible type "dict[str, int]"; expected "SleepInput"'),
        (12, 'Missing named argument "owner" for "submit" of "Task"'),
        (
            13,
            'Incompatible types in assignment (expression has type "JobHandle[SleepResult]", '
            'variable has type "JobHandle[int]")',
        ),
    }, out + err
