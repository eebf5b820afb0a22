"""A cap on request bodies, as ASGI middleware: a body over the limit gets OpenAI's 413 error, and is
read and dropped chunk by chunk, never held (a 10 MB body costs this server nothing but the reading)."""

from __future__ import annotations

import json

from scratchlm.serve.openai_schema import error_body


class BodyLimit:
    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _drain(receive)
            return await self._refuse(send)
        seen = 0
        refused = False

        async def counting_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # a chunked body with no length, or one that lied about it
                    refused = True
                    raise _TooLarge
            return message

        async def guarded_send(message):
            if (
                not refused
            ):  # once refused, the app's own answer (FastAPI's "error parsing the body") is dropped
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if refused:
            await _drain(receive)
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        message = f"the request body is over this server's limit of {self.limit} bytes; send less"
        payload = json.dumps(error_body(message, code="request_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass


async def _drain(receive) -> None:
    """Read the rest of the body and drop it, so the client gets to read the 413 instead of a reset."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
