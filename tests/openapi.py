"""Checking answers against an OpenAPI 3.1 document: the local API's (daemon/api/openapi.json)
and the service protocol's (docs/protocol.openapi.json)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema_rs

REPO = Path(__file__).resolve().parent.parent
METHODS = ("get", "put", "post", "patch", "delete")


class Described:
    def __init__(self, text: str) -> None:
        self.document: dict[str, Any] = json.loads(text)

    def operations(self) -> set[tuple[str, str]]:
        """(METHOD, path template) of every operation the document describes."""
        return {
            (method.upper(), path)
            for path, item in self.document["paths"].items()
            for method in item
            if method in METHODS
        }

    def check_answer(
        self, method: str, template: str, status: int, media_type: str, body: bytes
    ) -> None:
        """Fail unless the document lists this status for the operation and the body matches."""
        item = self.document["paths"][template]
        # A method the path does not answer: the responses every operation shares (405) apply.
        verb = method.lower() if method.lower() in item else next(iter(item))
        responses = item[verb]["responses"]
        assert str(status) in responses, f"{method} {template}: {status} undocumented"
        described = responses[str(status)].get("content", {})
        if not described:
            return
        if media_type == "application/json" and "application/json" in described:
            where = ("paths", template, verb, "responses", str(status), "content")
            pointer = _pointer(*where, "application/json", "schema")
            validator = jsonschema_rs.validator_for({**self.document, "$ref": pointer})
            validator.validate(json.loads(body))
        else:
            assert media_type in described or "*/*" in described, (template, status, media_type)


def _pointer(*parts: str) -> str:
    """A JSON pointer as a URI fragment (RFC 6901: ~ and / escaped, then percent-encoding)."""
    return "#/" + "/".join(quote(p.replace("~", "~0").replace("/", "~1"), safe="~") for p in parts)


LOCAL_API = Described(resources.files("daemon.api").joinpath("openapi.json").read_text())
PROTOCOL = Described((REPO / "docs" / "protocol.openapi.json").read_text())
