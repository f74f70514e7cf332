"""OpenAPI glue: ``/schema`` says what the app does, and schemathesis holds it to that.

Litestar documents most of it from the routes; :func:`finalize_openapi` then fixes what it
cannot know: who may call each route (public, bearer, stream token or cookie, metrics
token), the constraints of optional parameters, ``Retry-After`` on 202, 429 and 503, and
the create body, which the route decodes itself: one shape per registered task type, with
that task's input schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.params import KwargDefinition
from litestar.plugins import OpenAPISchemaPlugin
from litestar.routes import HTTPRoute
from litestar.typing import FieldDefinition

from broker.registry import TaskSpec, registry
from broker.settings import Settings
from broker.validation import Labels, max_delay_seconds
from broker.webhook_targets import url_schema
from web.auth import EXCLUDE_KEY, METRICS_OPT
from web.live.stream_tokens import STREAM_COOKIE, STREAM_OPT
from web.problems import PROBLEM_JSON, Problem


class RawJsonSchemaPlugin(OpenAPISchemaPlugin):
    """Documents ``msgspec.Raw`` fields (a job's input and result) as "any JSON value"."""

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return value is msgspec.Raw

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        return Schema(description="any JSON value")


@dataclass
class JsonSchema(Schema):
    """A schema given as JSON Schema (what msgspec generates), emitted as it is."""

    raw: dict[str, Any] = field(default_factory=dict)

    def to_schema(self) -> dict[str, Any]:
        return self.raw


@dataclass
class CreateJobOperation(Operation):
    """``POST /jobs`` reads its body itself (to keep ``input`` raw); :func:`finalize_openapi`
    documents the body, which depends on the registered task types."""


_TASK_INPUT_REF = "#/components/schemas/TaskInput_{name}"


def create_job_body(settings: Settings) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The create body's schema, and the input schemas it refers to (by component name).

    One alternative per task type: ``type`` is its name, ``input`` its input schema
    (required when that schema requires a field), then the schedule (at most one of
    ``delay_seconds`` and ``run_at``, either may be null) and nothing else.
    """
    specs = list(registry)
    inputs, components = msgspec.json.schema_components(
        [spec.input_type for spec in specs], ref_template=_TASK_INPUT_REF
    )
    schedule = _schedule_properties(settings)
    one_of = [
        _task_alternative(spec.name, input_schema, components, {**schedule, **_option_properties(spec)})
        for spec, input_schema in zip(specs, inputs, strict=True)
    ]
    body = {
        "oneOf": one_of,
        "description": "a task type from GET /tasks and its input; give delay_seconds or run_at, not both",
        "examples": [{"type": "demo.sleep", "input": {"seconds": 3, "steps": 3}}],
    }
    return body, {f"TaskInput_{name}": schema for name, schema in components.items()}


def _schedule_properties(settings: Settings) -> dict[str, Any]:
    """The body's ``delay_seconds``, ``run_at`` and ``callback_url``, the same in every task's
    alternative (``callback_url``: exactly the URLs the server accepts, see
    :mod:`broker.webhook_targets`)."""
    return {
        "callback_url": url_schema(settings.webhook_allowed_hosts),
        "delay_seconds": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": max_delay_seconds(settings),
            "description": "start no earlier than this many seconds from now",
        },
        "run_at": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "start no earlier than this (with its UTC offset); a past time means now, "
            "and it may be no further ahead than delay_seconds may (422)",
        },
    }


def _option_properties(spec: TaskSpec) -> dict[str, Any]:
    """The body's per-job options: ``owner`` (services), ``timeout`` (at most the task's), ``labels``."""
    timeout: dict[str, Any] = {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "description": "seconds this job may run, instead of its task's timeout (at most that)",
    }
    if spec.options.timeout is not None:
        timeout["maximum"] = spec.options.timeout
    return {
        "owner": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": 256,
            "description": "create the job for this owner (callers with the service role only; 403 "
            "otherwise); the job records the service in created_by",
        },
        "timeout": timeout,
        "labels": {
            "anyOf": [msgspec.json.schema(Labels), {"type": "null"}],
            "description": "short key/value strings stored on the job (GET /jobs?label=key:value)",
        },
    }


def _task_alternative(
    name: str, input_schema: dict[str, Any], components: dict[str, Any], schedule: dict[str, Any]
) -> dict[str, Any]:
    """One task type's body: its name, its input (required if the input has required fields),
    the schedule, and not both ``delay_seconds`` and ``run_at``."""
    required_input = bool(_resolved(input_schema, components).get("required"))
    return {
        "type": "object",
        "title": name,
        "additionalProperties": False,
        "required": ["type", "input"] if required_input else ["type"],
        "properties": {
            "type": {"type": "string", "const": name},
            "input": {**input_schema, "description": f"the input of {name} (default {{}})"},
            **schedule,
        },
        "not": {
            "required": ["delay_seconds", "run_at"],
            "properties": {"delay_seconds": {"type": "number"}, "run_at": {"type": "string"}},
        },
    }


def _resolved(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or the component it refers to."""
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return schema
    found: dict[str, Any] = components[ref.removeprefix(_TASK_INPUT_REF.removesuffix("{name}"))]
    return found


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


BEARER_SCHEME = "BearerToken"
"""Litestar's name for the JWT scheme (``JWTAuth.openapi_security_scheme_name``)."""

_STREAM_SCHEMES = {
    "StreamToken": SecurityScheme(
        type="apiKey",
        name="token",
        security_scheme_in="query",
        description="a stream token from POST /jobs/{id}/stream-token, POST /events/stream-token or "
        "the create answer (never a bearer token)",
    ),
    "StreamCookie": SecurityScheme(
        type="apiKey",
        name=STREAM_COOKIE,
        security_scheme_in="cookie",
        description="the HttpOnly cookie POST /events/stream-token sets",
    ),
}
_METRICS_SCHEME = {
    "MetricsToken": SecurityScheme(
        type="http", scheme="Bearer", description="JOBSTREAM_METRICS_TOKEN (the metrics routes only)"
    )
}


def route_security(handler: HTTPRouteHandler, settings: Settings) -> list[SecurityRequirement]:
    """Who may call ``handler`` in JWT mode: anyone (``[]``), or the alternatives it accepts."""
    opt = handler.opt
    if opt.get(EXCLUDE_KEY):
        return []
    alternatives: list[SecurityRequirement] = [{BEARER_SCHEME: []}]
    if opt.get(STREAM_OPT):
        alternatives += [{name: []} for name in _STREAM_SCHEMES]
    if opt.get(METRICS_OPT) and settings.metrics_token:
        alternatives += [{name: []} for name in _METRICS_SCHEME]
    return alternatives


def _operations(app: Litestar, paths: dict[str, PathItem]) -> Iterator[tuple[HTTPRouteHandler, Operation]]:
    """Each documented operation with the handler that answers it."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or (item := paths.get(route.path_format or "/")) is None:
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(item, method.lower(), None)
                if isinstance(operation, Operation):
                    yield handler, operation


_CONSTRAINTS = {
    "ge": "minimum",
    "gt": "exclusive_minimum",
    "le": "maximum",
    "lt": "exclusive_maximum",
    "min_length": "min_length",
    "max_length": "max_length",
    "pattern": "pattern",
}


def _constrain_optional_parameters(handler: HTTPRouteHandler, operation: Operation) -> None:
    """Put an optional parameter's declared constraints (``ge=0``...) into its schema.

    Litestar documents ``T | None`` as ``oneOf: [T, null]`` and leaves the constraints
    out, though it enforces them (400): they go into the ``T`` branch here.
    """
    declared: dict[str, KwargDefinition] = {}
    for name, definition in handler.parsed_fn_signature.parameters.items():
        kwarg = definition.kwarg_definition
        if isinstance(kwarg, KwargDefinition):
            alias = getattr(kwarg, "query", None) or getattr(kwarg, "header", None) or name
            declared[alias] = kwarg
    for parameter in operation.parameters or ():
        kwarg = declared.get(parameter.name) if isinstance(parameter, Parameter) else None
        schema = parameter.schema if isinstance(parameter, Parameter) else None
        if kwarg is None or not isinstance(schema, Schema) or not schema.one_of:
            continue
        for branch in schema.one_of:
            if isinstance(branch, Schema) and branch.type is not OpenAPIType.NULL:
                for source, target in _CONSTRAINTS.items():
                    value = getattr(kwarg, source)
                    if value is not None and getattr(branch, target) is None:
                        setattr(branch, target, value)


_RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    description="seconds to wait before asking again",
    required=True,
)
_RETRY_AFTER_STATUSES = {"202", "429", "503"}
"""A 202 (not done yet), a 429 (over a quota or a cap) and a 503 (Redis away) say when to retry."""


def _document_retry_after(operation: Operation) -> None:
    for status, response in (operation.responses or {}).items():
        if status in _RETRY_AFTER_STATUSES and isinstance(response, OpenAPIResponse):
            response.headers = {**(response.headers or {}), "Retry-After": _RETRY_AFTER}


def finalize_openapi(app: Litestar, settings: Settings, *, custom_auth: bool = False) -> None:
    """Complete the app's OpenAPI document (built here, once, before anyone reads it).

    In JWT mode each operation names what opens it: ``security: []`` for the public
    routes, the bearer JWT, or also a stream token or cookie (SSE), or the metrics token.
    In no-auth mode, and with ``create_app(authenticate=...)`` (``custom_auth``: the host's
    credentials, which this document cannot name), no operation names a credential.
    """
    bearer = settings.auth == "jwt" and not custom_auth
    document = app.openapi_schema
    body, inputs = create_job_body(settings)
    document.components.schemas.update({name: JsonSchema(raw=schema) for name, schema in inputs.items()})
    for handler, operation in _operations(app, document.paths or {}):
        _constrain_optional_parameters(handler, operation)
        _document_retry_after(operation)
        if isinstance(operation, CreateJobOperation):
            content = {"application/json": OpenAPIMediaType(schema=JsonSchema(raw=body))}
            operation.request_body = RequestBody(content=content, required=True)
        operation.security = route_security(handler, settings) if bearer else None
    if bearer:
        schemes = document.components.security_schemes or {}
        schemes.update(_STREAM_SCHEMES)
        if settings.metrics_token:
            schemes.update(_METRICS_SCHEME)
        document.components.security_schemes = schemes
