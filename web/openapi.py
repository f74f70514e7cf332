"""OpenAPI glue: how raw JSON fields and the hand-decoded create body appear in ``/schema``."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from web.problems import PROBLEM_JSON, Problem


class RawJsonSchemaPlugin(OpenAPISchemaPlugin):
    """Documents ``msgspec.Raw`` fields (a job's input and result) as "any JSON value"."""

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return value is msgspec.Raw

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        return Schema(description="any JSON value")


_CREATE_JOB_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type"],
    additional_properties=False,
    properties={
        "type": Schema(type=OpenAPIType.STRING, description="a task type from GET /tasks", min_length=1),
        "input": Schema(description="the task's input, validated by its input schema (default {})"),
        "delay_seconds": Schema(type=OpenAPIType.NUMBER, minimum=0, description="start no earlier than this"),
        "run_at": Schema(
            type=OpenAPIType.STRING,
            format=OpenAPIFormat.DATE_TIME,
            description="ISO-8601 time with an offset; not with delay_seconds",
        ),
    },
    examples=[{"type": "demo.sleep", "input": {"seconds": 3, "steps": 3}}],
)


@dataclass
class CreateJobOperation(Operation):
    """``POST /jobs`` reads its body itself (to keep ``input`` raw), so its schema is given here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=_CREATE_JOB_SCHEMA)}, required=True
        )


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem answers a route may give."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=HTTPStatus(status).phrase,
            generate_examples=False,
        )
        for status in statuses
    }


def openapi_config(docs_path: str) -> OpenAPIConfig:
    """OpenAPI at ``docs_path``: Swagger UI there, ReDoc under ``/redoc``, JSON at ``/openapi.json``."""
    try:
        app_version = version("jobstream")
    except PackageNotFoundError:
        app_version = "0.0.0"
    return OpenAPIConfig(
        title="jobstream",
        version=app_version,
        description="Create long-running jobs over HTTP and follow them to their result.",
        path=docs_path,
        render_plugins=[SwaggerRenderPlugin(), RedocRenderPlugin()],
    )
