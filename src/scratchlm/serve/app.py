"""The OpenAI-compatible server: FastAPI routes over one `Scheduler`.

    GET  /                      the chat page (chat_page.html)
    GET  /health                {"status": "ok" | "draining", ...}
    GET  /metrics               Prometheus: requests, tokens, queue depth, batch size, time to first token
    GET  /v1/models             the one model served
    POST /v1/completions        text in, text out; `stream: true` for server-sent events
    POST /v1/chat/completions   messages rendered with the chat template (docs/chat-format.md)

Every error is OpenAI's error object: 400 for an invalid request (bad JSON, wrong types, a prompt over the
context), 401 without the key when one is set, 404 for an unknown model or route, 413 for a body over the
limit, 429 when the queue is full, 503 while draining. Message content is text: `render_chat` encodes it
with `encode_ordinary`, so content that spells `<|user|>` stays those characters.

A request becomes `n` scheduler sequences whose events (text pieces, a finish reason) come back from the
scheduler's thread through an `Inbox` (one event-loop wake-up for what arrives together). A streaming
client that leaves cancels its sequences when Starlette cancels the response; a waiting non-streaming
one is polled.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
from dataclasses import replace
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchlm.data.chat import END, render_chat
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig
from scratchlm.serve import openai_schema as api
from scratchlm.serve.config import ServeConfig
from scratchlm.serve.inbox import Inbox
from scratchlm.serve.limits import BodyLimit
from scratchlm.serve.metrics import ServerMetrics
from scratchlm.serve.scheduler import Draining, QueueFull, Scheduler, Sequence

log = logging.getLogger(__name__)

COMPLETIONS_MAX_TOKENS = 16  # the OpenAI completions default; chat defaults to what the context leaves


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_="invalid_request_error", code=None, param=None):
        super().__init__(message)
        self.status, self.body = status, api.error_body(message, type_, param, code)


def create_app(scheduler: Scheduler, config: ServeConfig, model_name: str, metrics: ServerMetrics) -> FastAPI:
    tokenizer, context = scheduler.tokenizer, scheduler.context
    app = FastAPI(title="scratchlm", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    page = resources.files(__package__).joinpath("chat_page.html").read_text(encoding="utf-8")
    is_chat_model = END in tokenizer.special_tokens

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        if first.get("type") == "json_invalid":
            message = "the body is not valid JSON; send a JSON object"
        return JSONResponse(api.error_body(message, param=where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return JSONResponse(api.error_body(str(e.detail)), status_code=e.status_code)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {config.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):  # constant time: no timing oracle
            raise ApiError(
                401, "missing or wrong API key; send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(
                404,
                f"the model {name!r} does not exist here; this server serves {model_name!r}",
                code="model_not_found",
                param="model",
            )

    @app.get("/", response_class=HTMLResponse)
    def chat_page() -> str:
        return page.replace("__MODEL__", html.escape(model_name))  # a name is text in the page, too

    @app.get("/health")
    def health():
        status = "draining" if scheduler.draining else "ok"
        body = {
            "status": status,
            "model": model_name,
            "live": len(scheduler.live),
            "queued": scheduler.queue_depth,
        }
        return JSONResponse(body, status_code=503 if scheduler.draining else 200)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    def models():
        entry = {"id": model_name, "object": "model", "created": 0, "owned_by": "scratchlm"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(body: api.ChatRequest, request: Request):
        check_model(body.model)
        if not is_chat_model:
            raise ApiError(400, "this model has no chat template (no <|end|> token); use /v1/completions")
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        try:
            ids, _ = render_chat(messages, tokenizer, add_generation_prompt=True)
        except ScratchError as e:
            raise ApiError(400, str(e), param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        ids, notice = fit_prompt(ids, max_tokens)
        extra_stops = tuple(t for t in tokenizer.special_tokens if t != END)  # a reply is plain text
        seqs, queue = make_sequences(
            [ids], body, max_tokens or context, tokenizer.special_tokens[END], extra_stops
        )
        rid = api.new_id("chatcmpl")
        if body.stream:
            return sse(stream_chat(rid, body, seqs, queue, len(ids), notice))
        texts, reasons, n_completion = await collect(request, seqs, queue)
        return api.chat_response(rid, model_name, texts, reasons, len(ids), n_completion, notice)

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: api.CompletionRequest, request: Request):
        check_model(body.model)
        eot = getattr(tokenizer, "eot_id", None)
        prompts, notices = [], []
        for i, text in enumerate(body.prompts()):
            try:
                ids = tokenizer.encode_ordinary(text) if text else ([eot] if eot is not None else [])
            except ScratchError as e:
                raise ApiError(400, f"prompt {i}: {e}", param="prompt") from None
            if not ids:
                raise ApiError(400, "an empty prompt needs a tokenizer with <|endoftext|>", param="prompt")
            ids, notice = fit_prompt(ids, body.max_tokens)
            prompts.append(ids)
            notices += [notice] if notice else []
        max_tokens = body.max_tokens or COMPLETIONS_MAX_TOKENS
        seqs, queue = make_sequences(prompts, body, max_tokens, eot, ())
        rid, n_prompt = api.new_id("cmpl"), sum(len(p) for p in prompts)
        notice = "; ".join(notices) or None
        if body.stream:
            return sse(stream_completion(rid, body, seqs, queue, n_prompt, notice))
        texts, reasons, n_completion = await collect(request, seqs, queue)
        return api.completion_response(rid, model_name, texts, reasons, n_prompt, n_completion, notice)

    # --- a request's life -------------------------------------------------------------------------

    def fit_prompt(ids: list[int], max_tokens: int | None) -> tuple[list[int], str | None]:
        if len(ids) <= context:
            return ids, None
        if config.prompt_overflow == "error":
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens and this model's context is {context}; shorten it",
                code="context_length_exceeded",
                param="messages",
            )
        keep = max(1, context - min(max_tokens or context // 2, context // 2))  # room to answer
        return ids[-keep:], f"the prompt was {len(ids)} tokens; kept its newest {keep} (context {context})"

    def make_sequences(prompts, body, max_tokens, eot_id, extra_stops):
        queue = Inbox(asyncio.get_running_loop())

        def on_event(seq: Sequence, piece: str, reason: str | None) -> None:  # the scheduler's thread
            queue.put((seq, piece, reason))

        sampling = SamplingConfig(
            max_new_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p if body.top_p < 1.0 else None,
            stop=body.stop_strings(),
            seed=body.seed,
        )
        seqs = []
        for p, prompt in enumerate(prompts):
            for j in range(body.n):  # choice j of a seeded request draws with seed + j
                seed = None if body.seed is None else body.seed + j
                seqs.append(
                    Sequence(
                        prompt,
                        replace(sampling, seed=seed),
                        eot_id,
                        on_event,
                        extra_stops,
                        tag=p * body.n + j,
                    )
                )
        try:
            scheduler.submit(seqs)
        except QueueFull as e:
            raise ApiError(
                429, f"{e}; retry shortly", type_="rate_limit_error", code="rate_limit_exceeded"
            ) from None
        except Draining as e:
            raise ApiError(503, str(e), type_="server_error", code="shutting_down") from None
        except ScratchError as e:
            raise ApiError(400, str(e)) from None
        metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        return seqs, queue

    async def collect(request: Request, seqs, queue: Inbox):
        texts = [[] for _ in seqs]
        reasons: list[str | None] = [None] * len(seqs)
        try:
            while None in reasons:
                items = await queue.take(timeout=0.5)
                if not items and await request.is_disconnected():
                    raise asyncio.CancelledError
                for seq, piece, reason in items:
                    texts[seq.tag].append(piece)
                    if reason is not None:
                        reasons[seq.tag] = reason
        finally:
            for seq in seqs:
                seq.cancel()  # a no-op for a finished one; frees the rows of a client that left
        n_used = used(seqs)
        metrics.completion_tokens.inc(n_used)
        if "error" in reasons:
            raise ApiError(503, "the server stopped this request (shutting down)", type_="server_error")
        return ["".join(t) for t in texts], reasons, n_used

    async def events(seqs, queue: Inbox):
        """(choice, text, finish_reason or None) as they come: what arrived together for a choice is one
        piece (a slow reader gets fewer, longer chunks), its finish reason once, with its last piece."""
        open_ = len(seqs)
        try:
            while open_:
                merged: dict[int, list] = {}
                for seq, piece, reason in await queue.take():
                    entry = merged.setdefault(seq.tag, ["", None])
                    entry[0] += piece
                    entry[1] = reason if reason is not None else entry[1]
                for tag, (piece, reason) in merged.items():
                    open_ -= reason is not None
                    yield tag, piece, reason
        finally:
            for seq in seqs:
                seq.cancel()
            metrics.completion_tokens.inc(used(seqs))

    async def stream_chat(rid, body, seqs, queue, n_prompt, notice):
        created, with_usage = api.now(), body.include_usage
        for i in range(len(seqs)):
            first = api.chat_chunk(
                rid, model_name, created, i, {"role": "assistant", "content": ""}, None, with_usage
            )
            if notice and i == 0:
                first["notice"] = notice
            yield first
        async for index, piece, reason in events(seqs, queue):
            if reason == "error":
                yield api.error_body("the server stopped this request (shutting down)", "server_error")
                continue
            if piece:
                yield api.chat_chunk(rid, model_name, created, index, {"content": piece}, None, with_usage)
            if reason is not None:
                yield api.chat_chunk(rid, model_name, created, index, {}, reason, with_usage)
        if with_usage:
            yield api.usage_chunk(rid, model_name, created, "chat.completion.chunk", n_prompt, used(seqs))

    async def stream_completion(rid, body, seqs, queue, n_prompt, notice):
        created, with_usage = api.now(), body.include_usage
        first = True
        async for index, piece, reason in events(seqs, queue):
            if reason == "error":
                yield api.error_body("the server stopped this request (shutting down)", "server_error")
                continue
            if piece or reason is not None:
                chunk = api.completion_chunk(rid, model_name, created, index, piece, reason, with_usage)
                if notice and first:
                    chunk["notice"] = notice
                first = False
                yield chunk
        if with_usage:
            yield api.usage_chunk(rid, model_name, created, "text_completion", n_prompt, used(seqs))

    return app


def used(seqs) -> int:
    return sum(s.generated for s in seqs)


def sse(chunks) -> StreamingResponse:
    """Server-sent events: one `data: JSON` per chunk, then `data: [DONE]`."""

    async def lines():
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)
