"""SCIM errors in the RFC 7644 §3.12 shape (``urn:ietf:params:scim:api:messages:2.0:Error``)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_JSON = "application/scim+json"


class ScimError(Exception):
    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    @classmethod
    def invalid_filter(cls, detail: str) -> ScimError:
        return cls(400, f"Invalid filter: {detail}", "invalidFilter")

    @classmethod
    def invalid_value(cls, detail: str) -> ScimError:
        return cls(400, detail, "invalidValue")

    @classmethod
    def invalid_syntax(cls, detail: str) -> ScimError:
        return cls(400, detail, "invalidSyntax")

    @classmethod
    def invalid_path(cls, detail: str) -> ScimError:
        return cls(400, detail, "invalidPath")

    @classmethod
    def no_target(cls, detail: str) -> ScimError:
        return cls(400, detail, "noTarget")

    @classmethod
    def not_found(cls, detail: str) -> ScimError:
        return cls(404, detail)

    @classmethod
    def uniqueness(cls, detail: str) -> ScimError:
        return cls(409, detail, "uniqueness")

    @classmethod
    def mutability(cls, detail: str) -> ScimError:
        return cls(400, detail, "mutability")

    def body(self) -> dict:
        document: dict = {"schemas": [ERROR_SCHEMA], "status": str(self.status), "detail": self.detail}
        if self.scim_type:
            document["scimType"] = self.scim_type
        return document


def response(error: ScimError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="keyward-scim"'} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, media_type=SCIM_JSON, headers=headers)


async def handle(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScimError)
    return response(exc)


def shape(status: int, detail: str) -> JSONResponse:
    """Any status and message as a SCIM error (for failures raised outside the SCIM routes' own code)."""
    return response(ScimError(status, detail))
