"""Response bodies in DotDigital's two error dialects, and JSON responses.

v2 errors are ``{"message": "<text> <ERROR_TOKEN>"}`` (the token is the last word); v3 errors
are ``{"errorCode": "contacts:<code>", "description": ..., "details"?: [...]}``. Every JSON
response is a :class:`JsonResponse`, which keeps its payload so the journal can record it
without decoding it again.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

AUTH_DENIED = "Authorization has been denied for this request."
FORBIDDEN_REGION = "Forbidden: Access is denied."
BOOK_NOT_FOUND = "Error: ERROR_ADDRESSBOOK_NOT_FOUND"
CONTACT_NOT_FOUND = "Error: ERROR_CONTACT_NOT_FOUND"
DELETION_NOT_FOUND = "Error: ERROR_BULK_DELETION_NOT_FOUND"
DUPLICATE_BOOK = "That name is in use already, please choose another. ERROR_ADDRESSBOOK_DUPLICATE"
APIUSAGE_EXCEEDED = (
    "Your account has generated excess API activity and is being temporarily capped. "
    "Please contact support. ERROR_APIUSAGE_EXCEEDED"
)
RATE_LIMITED_V2 = (
    "You have exceeded the call rate limit of your API user for this tier. "
    "Wait until the limit resets. ERROR_RATE_LIMIT_EXCEEDED"
)
RATE_LIMITED_V3 = (
    "You have exceeded the call rate limit of your API user for this tier. "
    "Wait until the limit resets."
)
TOO_MANY_IMPORTS = (
    "Your import request cannot be accepted as too many imports are being processed for you "
    "account. Please wait for an import to complete and then resubmit."
)
SERVER_ERROR = "An error has occurred."
# What a load balancer in front of an API says when it is unavailable: not JSON.
UNAVAILABLE_HTML = (
    "<html><head><title>503 Service Unavailable</title></head>"
    "<body><h1>503 Service Unavailable</h1></body></html>"
)

# What a reverse proxy answers for a path it has no route for: a 404 that is not DotDigital's.
PROXY_NOT_FOUND_HTML = (
    "<html><head><title>404 Not Found</title></head>"
    "<body><center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>"
)


class JsonResponse(web.Response):
    """A JSON response that remembers its payload."""

    def __init__(self, status: int, payload: Any) -> None:
        super().__init__(status=status, body=orjson.dumps(payload), content_type="application/json")
        self.payload = payload


def json_response(status: int, payload: Any) -> web.Response:
    return JsonResponse(status, payload)


def payload_of(response: web.StreamResponse | None) -> Any:
    return response.payload if isinstance(response, JsonResponse) else None


def empty_response(status: int = 204) -> web.Response:
    return web.Response(status=status)


def v2_error(status: int, message: str) -> web.Response:
    return json_response(status, {"message": message})


def v2_invalid(text: str) -> web.Response:
    return v2_error(400, f"{text} ERROR_PARAMETER_INVALID")


def v3_error(
    status: int, code: str, description: str, details: list[dict[str, str]] | None = None
) -> web.Response:
    payload: dict[str, Any] = {"errorCode": f"contacts:{code}", "description": description}
    if details:
        payload["details"] = details
    return json_response(status, payload)


def is_v3(path: str) -> bool:
    return path.startswith("/contacts/v3")


def rate_limited(path: str) -> web.Response:
    if is_v3(path):
        return v3_error(429, "tooManyRequests", RATE_LIMITED_V3)
    return v2_error(429, RATE_LIMITED_V2)


def server_error(status: int) -> web.Response:
    if status == 503:
        return web.Response(status=503, text=UNAVAILABLE_HTML, content_type="text/html")
    return json_response(status, {"message": SERVER_ERROR})


def proxy_not_found() -> web.Response:
    return web.Response(status=404, text=PROXY_NOT_FOUND_HTML, content_type="text/html")
