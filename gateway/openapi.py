"""The OpenAPI 3.1 document of the admin API, generated from the Structs the server uses."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from shared.api import AuditList, ErrorBody, RotateRequest, TriggerCreate, TriggerList, TriggerView
from shared.policy import PolicyChanges
from shared.triggers import NAME_PATTERN

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=kind.__name__)}


def _content(kind: type) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(kind)}}


_ERRORS = {
    400: "The JSON or a query parameter is malformed",
    401: "No or a wrong bearer token",
    403: "The admin API is disabled (admin_disabled: no TRIGGERS_ADMIN_TOKEN on the gateway)",
    404: "No such trigger",
    409: "The trigger is revoked",
    422: "The body does not fit the schema, or the policy cannot hold (e.g. min above max)",
}


def _responses(ok: int, kind: type, description: str, *errors: int) -> dict[str, Any]:
    answers: dict[str, Any] = {str(ok): {"description": description, "content": _content(kind)}}
    for status in (401, 403, *errors):
        answers[str(status)] = {"description": _ERRORS[status], "content": _content(ErrorBody)}
    return answers


def _created_with_links() -> dict[str, Any]:
    answers = _responses(201, TriggerView, "Created", 400, 422)
    # Links tell clients (and schemathesis' stateful tests) where the new id goes.
    answers["201"]["links"] = {
        operation: {
            "operationId": operation,
            "parameters": {"trigger_id": "$response.body#/id"},
        }
        for operation in ("getTrigger", "updateTrigger", "revokeTrigger", "rotateTrigger")
    }
    return answers


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_NAME = {"type": "string", "pattern": NAME_PATTERN.pattern, "maxLength": 63}
_TRIGGER_ID = {
    "name": "trigger_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]{8,64}$"},
}


@functools.cache
def _document() -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(
        [
            TriggerCreate,
            PolicyChanges,
            RotateRequest,
            TriggerView,
            TriggerList,
            AuditList,
            ErrorBody,
        ],
        ref_template=_REF,
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "container-triggers admin API",
            "version": "1",
            "description": (
                "Create, list, change, rotate and revoke triggers, and read the audit trail. "
                "Every error is {error, detail}."
            ),
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/triggers": {
                "post": {
                    "operationId": "createTrigger",
                    "summary": "Create a trigger; the answer holds its url and secret, shown once",
                    "requestBody": {"required": True, "content": _content(TriggerCreate)},
                    "responses": _created_with_links(),
                },
                "get": {
                    "operationId": "listTriggers",
                    "summary": "List triggers, newest first",
                    "parameters": [
                        _query("cluster", _NAME, "Only this cluster"),
                        _query("app", _NAME, "Only this application"),
                        _query("action", {"enum": ["redeploy", "scale"]}, "Only this action"),
                        _query(
                            "status",
                            {"enum": ["active", "disabled", "expired", "revoked", "all"]},
                            "Only triggers in this state (default: all but revoked)",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 1000},
                            "Page size (default 100)",
                        ),
                        _query(
                            "offset",
                            {"type": "integer", "minimum": 0, "maximum": 1000000},
                            "Skip this many",
                        ),
                    ],
                    "responses": _responses(200, TriggerList, "A page of triggers", 400),
                },
            },
            "/v1/triggers/{trigger_id}": {
                "parameters": [_TRIGGER_ID],
                "get": {
                    "operationId": "getTrigger",
                    "summary": "One trigger",
                    "responses": _responses(200, TriggerView, "The trigger", 404),
                },
                "patch": {
                    "operationId": "updateTrigger",
                    "summary": "Change the policy: absent fields stay, null removes a limit",
                    "requestBody": {"required": True, "content": _content(PolicyChanges)},
                    "responses": _responses(200, TriggerView, "Updated", 400, 404, 409, 422),
                },
                "delete": {
                    "operationId": "revokeTrigger",
                    "summary": "Revoke (idempotent); calls answer 403 within seconds",
                    "responses": _responses(200, TriggerView, "Revoked", 404),
                },
            },
            "/v1/triggers/{trigger_id}/rotate": {
                "parameters": [_TRIGGER_ID],
                "post": {
                    "operationId": "rotateTrigger",
                    "summary": "New secret now; the old one keeps working for `grace` seconds",
                    "requestBody": {"required": False, "content": _content(RotateRequest)},
                    "responses": _responses(
                        200, TriggerView, "Rotated: the new url and secret", 400, 404, 409, 422
                    ),
                },
            },
            "/v1/audit": {
                "get": {
                    "operationId": "listAudit",
                    "summary": "Trigger calls, newest first, never with the secret",
                    "parameters": [
                        _query(
                            "trigger_id",
                            {"type": "string", "pattern": "^[a-z0-9]{8,64}$"},
                            "Only this trigger",
                        ),
                        _query(
                            "outcome",
                            {"enum": ["accepted", "ignored", "rejected"]},
                            "Only this outcome",
                        ),
                        _query(
                            "before",
                            {"type": "integer", "minimum": 1, "maximum": 2**62},
                            "Entries older than this id (next_before of the previous page)",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 1000},
                            "Page size (default 100)",
                        ),
                    ],
                    "responses": _responses(200, AuditList, "A page of entries", 400),
                },
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                },
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "TRIGGERS_ADMIN_TOKEN",
                }
            },
        },
    }


def openapi_document(server_url: str) -> dict[str, Any]:
    """The document, with the gateway's public URL as its server."""
    return {**_document(), "servers": [{"url": server_url.rstrip("/")}]}
