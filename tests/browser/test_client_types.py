"""The browser client's TypeScript declarations and its npm package.

- ``tsc`` (from the npm tools) type-checks ``types/usage.ts``, a frontend's use of the
  client, against ``web/static`` installed as the package ``@jobstream/client`` (resolved
  through its ``package.json`` exports, as a bundler would); the usage file's
  ``@ts-expect-error`` lines are misuses the types must refuse.
- The wire shapes ``jobstream.d.ts`` declares (read with TypeScript's own parser) are held to
  the app's OpenAPI document: the same properties, the same types, optional only where the
  API may leave a property out; the methods return what their routes answer, and the create
  options are the create body's fields.
- ``npm pack`` ships the modules and their types, nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.helpers import Stack, user

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "web" / "static"
TYPES = Path(__file__).parent / "types"

WIRE_SHAPES = [
    "Job",
    "CreatedJob",
    "JobError",
    "WebhookState",
    "JobPage",
    "JobResult",
    "TaskInfo",
    "TaskList",
    "StreamGrant",
    "Problem",
    "FieldProblem",
]
METHOD_ROUTES = {
    "createJob": ("post", "/jobs", "202"),
    "getJob": ("get", "/jobs/{job_id}", "200"),
    "listJobs": ("get", "/jobs", "200"),
    "getResult": ("get", "/jobs/{job_id}/result", "200"),
    "cancelJob": ("post", "/jobs/{job_id}/cancel", "200"),
    "listTasks": ("get", "/tasks", "200"),
}
"""Each request method of ``Jobstream`` and the route whose answer its promise holds."""
NOT_IN_THE_BODY = {"idempotency_key", "signal"}
"""Create options that are not body fields: a header, and the request's own abort signal."""


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_frontend_using_the_package_type_checks(tools: Path, tmp_path: Path) -> None:
    (tmp_path / "node_modules" / "@jobstream").mkdir(parents=True)
    (tmp_path / "node_modules" / "@jobstream" / "client").symlink_to(STATIC)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    shutil.copy(TYPES / "usage.ts", tmp_path / "usage.ts")
    options = {
        "strict": True,
        "noEmit": True,
        "target": "es2022",
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "lib": ["es2022", "dom"],
        "types": [],
        "preserveSymlinks": True,  # the package's own path, not web/static's, as when installed
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": ["usage.ts"]}))
    run([str(tools / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"], tmp_path)


def declared(tools: Path) -> dict[str, Any]:
    script = TYPES / "dts-shapes.mjs"
    typescript = tools / "node_modules" / "typescript"
    shapes: dict[str, Any] = json.loads(
        run(["node", str(script), str(typescript), str(STATIC / "jobstream.d.ts")], ROOT)
    )
    return shapes


def split_union(text: str) -> set[str]:
    """The members of a TypeScript union written as text (``|`` outside brackets only)."""
    members, depth, current = [], 0, ""
    for char in text:
        depth += char in "<([{"
        depth -= char in ">)]}"
        if char == "|" and depth == 0:
            members.append(current)
            current = ""
        else:
            current += char
    members.append(current)
    found = {re.sub(r"\s+", " ", member).strip() for member in members}
    return {"unknown"} if "unknown" in found else found


SIMPLE_TYPES = {
    "string": "string",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}


def ts_type(schema: dict[str, Any]) -> set[str]:  # noqa: PLR0911 - one answer per kind of schema
    """The TypeScript type (as union members) an OpenAPI schema stands for."""
    if "$ref" in schema:
        return {schema["$ref"].rsplit("/", 1)[-1]}
    for union in ("oneOf", "anyOf"):
        if union in schema:
            return split_union(" | ".join(" | ".join(sorted(ts_type(member))) for member in schema[union]))
    kind = schema.get("type")
    if isinstance(kind, list):
        return split_union(" | ".join(" | ".join(ts_type({**schema, "type": one})) for one in kind))
    if "enum" in schema:
        return {json.dumps(value) for value in schema["enum"]}
    if kind in SIMPLE_TYPES:
        return {SIMPLE_TYPES[kind]}
    if kind == "array":
        (item,) = ts_type(schema["items"])
        return {f"{item}[]"}
    if kind == "object" and "additionalProperties" in schema:
        (value,) = ts_type(schema["additionalProperties"]) if schema["additionalProperties"] else {"unknown"}
        return {f"Record<string, {value}>"}
    assert kind is None, f"no TypeScript type for {schema}"
    return {"unknown"}  # any JSON value


def shape_problems(name: str, schema: dict[str, Any], props: dict[str, Any]) -> list[str]:
    """How a declared interface differs from its OpenAPI schema: its properties, their types,
    and optional ones the API documents as required."""
    problems = []
    documented = schema.get("properties", {})
    if set(props) != set(documented):
        problems.append(f"{name}: declared {sorted(props)}, documented {sorted(documented)}")
    for prop in set(props) & set(documented):
        want, have = ts_type(documented[prop]), split_union(props[prop]["type"])
        if want != have:
            problems.append(f"{name}.{prop}: declared {sorted(have)}, documented {sorted(want)}")
        if props[prop]["optional"] and prop in schema.get("required", []):
            problems.append(f"{name}.{prop}: declared optional, documented required")
    return problems


def presence_problems(name: str, answer: dict[str, Any], props: dict[str, Any]) -> list[str]:
    """How a real answer differs from its declared interface: a property declared always there
    that is missing (the OpenAPI document cannot say which ones msgspec always writes), or one
    that is not declared at all."""
    required = {prop for prop, declared in props.items() if not declared["optional"]}
    missing, unknown = required - set(answer), set(answer) - set(props)
    return [f"{name}: {answer} lacks {sorted(missing)}"] * bool(missing) + [
        f"{name}: {answer} has undeclared {sorted(unknown)}"
    ] * bool(unknown)


@pytest.fixture(scope="module")
def openapi(stack: Stack) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{stack.base_url}/schema/openapi.json", timeout=10).json()
    return document


def test_the_declared_wire_shapes_are_the_openapi_documents(tools: Path, openapi: dict[str, Any]) -> None:
    shapes = declared(tools)
    schemas = openapi["components"]["schemas"]
    problems = [
        problem
        for name in WIRE_SHAPES
        for problem in shape_problems(name, schemas[name], shapes["interfaces"][name])
    ]
    status = shapes["aliases"]["JobStatus"]
    if split_union(status) != ts_type(schemas["JobStatus"]):
        problems.append(f"JobStatus: declared {status}, documented {schemas['JobStatus']}")
    assert problems == [], "\n".join(problems)


async def real_answers(stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    """One real answer of each wire shape, from the stack (a webhook's needs a receiver: none)."""
    name = user()
    failed = await stack.create(name, "demo.fail", {})
    done = await stack.create(name, "demo.noop", {})
    await stack.wait_status(name, failed["id"], "FAILURE")
    await stack.wait_status(name, done["id"], "SUCCESS")
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers(name), timeout=10) as http:
        job = (await http.get(f"/jobs/{failed['id']}")).json()
        page = (await http.get("/jobs", params={"limit": 1})).json()
        tasks = (await http.get("/tasks")).json()
        answers = [
            ("CreatedJob", failed),
            ("Job", job),
            ("JobError", job["error"]),
            ("JobPage", page),
            ("Job", page["jobs"][0]),
            ("JobResult", (await http.get(f"/jobs/{done['id']}/result")).json()),
            ("TaskList", tasks),
            ("TaskInfo", tasks["tasks"][0]),
            ("StreamGrant", (await http.post(f"/jobs/{done['id']}/stream-token")).json()),
            ("Problem", (await http.get(f"/jobs/{failed['id']}/result")).json()),  # 409, with the error
            ("Problem", (await http.get(f"/jobs/{uuid.uuid4()}")).json()),  # 404
        ]
        invalid = (await http.post("/jobs", json={"type": "demo.sleep", "input": {"seconds": "x"}})).json()
    return [*answers, ("Problem", invalid), ("FieldProblem", invalid["errors"][0])]


@pytest.mark.asyncio
async def test_real_answers_have_the_declared_properties(tools: Path, stack: Stack) -> None:
    interfaces = declared(tools)["interfaces"]
    answers = await real_answers(stack)
    problems = [
        problem for name, answer in answers for problem in presence_problems(name, answer, interfaces[name])
    ]
    assert problems == [], "\n".join(problems)


def test_the_client_methods_return_what_their_routes_answer(tools: Path, openapi: dict[str, Any]) -> None:
    methods = declared(tools)["methods"]["Jobstream"]
    for method, (verb, path, status) in METHOD_ROUTES.items():
        answer = openapi["paths"][path][verb]["responses"][status]["content"]["application/json"]["schema"]
        (documented,) = ts_type(answer)
        returned = re.fullmatch(r"Promise<(\w+)(<.*>)?>", methods[method])
        assert returned, f"{method}: {methods[method]}"
        assert returned.group(1) == documented, f"{method}: {methods[method]}, the route answers {documented}"


def test_the_create_options_are_the_create_bodys_fields(tools: Path, openapi: dict[str, Any]) -> None:
    options = declared(tools)["interfaces"]["CreateJobOptions"]
    as_fields = {re.sub(r"([A-Z])", r"_\1", name).lower() for name in options} - NOT_IN_THE_BODY
    create = openapi["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    bodies = create["schema"]["oneOf"]
    for body in bodies:
        assert as_fields == set(body["properties"]) - {"type", "input"}, body["title"]


def test_the_package_ships_the_client_and_its_types(tools: Path) -> None:
    npm = shutil.which("npm")
    assert npm
    (packed,) = json.loads(run([npm, "pack", "--dry-run", "--json", "--loglevel=error"], STATIC))
    shipped = {entry["path"] for entry in packed["files"]}
    pages = {"dashboard.js", "dashboard-rows.js", "operator.js"}  # the web app's own pages, not the client
    modules = {path.name for path in STATIC.glob("*.js")} - pages
    assert shipped == modules | {"jobstream.d.ts", "react.d.ts", "package.json", "examples/job-progress.js"}
    manifest = json.loads((STATIC / "package.json").read_text())
    targets = [target for entry in manifest["exports"].values() for target in _targets(entry)]
    assert all(target.removeprefix("./") in shipped for target in targets), targets
    # Every module the package's entry points import is shipped (no build step bundles them).
    imported = {
        match
        for module in modules
        for match in re.findall(r'from "\./([\w-]+\.js)"', (STATIC / module).read_text())
    }
    assert imported <= shipped, imported - shipped


def _targets(entry: str | dict[str, str]) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry.values())
