"""Checking answers against the local API's OpenAPI document (daemon/api/openapi.json)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from urllib.parse import quote

import jsonschema_rs

DOCUMENT: dict[str, Any] = json.loads(
    resources.files("daemon.api").joinpath("openapi.json").read_text()
)


def operations() -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation the document describes."""
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }


def _pointer(*parts: str) -> str:
    """A JSON pointer as a URI fragment (RFC 6901: ~ and / escaped, then percent-encoding)."""
    return "#/" + "/".join(quote(p.replace("~", "~0").replace("/", "~1"), safe="~") for p in parts)


def check_answer(method: str, template: str, status: int, media_type: str, body: bytes) -> None:
    """Fail unless the document lists this status for the operation and the body matches."""
    item = DOCUMENT["paths"][template]
    # A method the path does not answer: the responses every operation shares (405) apply.
    verb = method.lower() if method.lower() in item else next(iter(item))
    operation = item[verb]
    assert str(status) in operation["responses"], f"{method} {template}: {status} undocumented"
    described = operation["responses"][str(status)].get("content", {})
    if not described:
        return
    if media_type == "application/json" and "application/json" in described:
        pointer = _pointer(
            "paths",
            template,
            verb,
            "responses",
            str(status),
            "content",
            "application/json",
            "schema",
        )
        validator = jsonschema_rs.validator_for({**DOCUMENT, "$ref": pointer})
        validator.validate(json.loads(body))
    else:
        assert media_type in described or "*/*" in described, (template, status, media_type)
