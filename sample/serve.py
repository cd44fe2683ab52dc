"""`python -m sample.serve checkpoint=<run, checkpoint dir or hf:...>`: an OpenAI-compatible HTTP server.

FastAPI + uvicorn on 127.0.0.1 by default. Endpoints: POST /v1/completions (prompt: a string or a list; max_tokens,
temperature, top_p, n, stop, seed, stream, echo, presence_penalty, frequency_penalty, and the sampler's other
controls under their nanoloom names: top_k, min_p, typical_p, repetition_penalty, no_repeat_ngram_size), POST
/v1/chat/completions (checkpoints tuned with task=instruct), GET /v1/models, GET /health. Streaming is server-sent
events in OpenAI's chunk format, ending with `data: [DONE]`. Requests share decoding steps through the continuous
batching engine (sample/engine.py); a seeded request gets what pipeline(...) gives for the same prompt, controls
and seed (choice j of a call samples with seed + j, as the pipeline's rows do). A bad request is an HTTP 400 (404
for an unknown model) with OpenAI's error JSON naming the field; a full queue is a 429 with Retry-After. The server
keeps serving whatever a request holds. GET / is the playground: one static page (sample/static/playground.html,
no build step, no CDN) with a prompt box, presets (story, code, chat for a chat model), temperature, top-p, max
tokens and seed, streaming the completion as it is generated with its tokens/s.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime.
import asyncio
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from data.chat import render
from nanoloom.cli import run_command
from sample.engine import Engine, Job
from sample.generate import prompt_ids, row_seeds
from sample.sampling import scalar_controls

USAGE = """usage: python -m sample.serve checkpoint=<run, checkpoint dir or hf:...> [key=value ...]
keys: host (127.0.0.1) port (8000) device (auto) dtype (auto) max_batch_size (8) max_queue (64)
      request_timeout (seconds, 600) model_name (default: the checkpoint directory's name)
"""
MAX_N = 16  # choices per request
MAX_LOGPROBS = 20  # alternatives per token (OpenAI: 5)
# GenerationConfig's controls a request may set by their nanoloom names beside OpenAI's fields (beam search, lengths,
# assisted decoding's drafts, which continuous batching does not run, and the OpenAI-named ones aside: max_tokens is
# max_new_tokens)
OPENAI_NAMED = {"temperature", "top_p", "presence_penalty", "frequency_penalty"}
NOT_SERVED = {"max_new_tokens", "max_length", "num_beams", "length_penalty", "early_stopping",
              "prompt_lookup_num_tokens", "max_matching_ngram_size", "num_assistant_tokens"}  # fmt: skip
EXTRA_CONTROLS = set(scalar_controls()) - OPENAI_NAMED - NOT_SERVED
PLAYGROUND = Path(__file__).resolve().parent / "static" / "playground.html"  # the page at /


@dataclass
class ServeConfig:
    checkpoint: str = ""  # required: a run or checkpoint directory, or hf:<hub name or folder>
    host: str = "127.0.0.1"  # 0.0.0.0 serves other machines too: only on a network you trust
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_batch_size: int = 8  # requests decoded together; more wait in the queue
    max_queue: int = 64  # waiting requests; beyond it a request is answered 429 at once
    request_timeout: float = 600.0  # seconds a request may take before it is cancelled (504)
    model_name: Optional[str] = None  # the id clients name; default: the checkpoint directory's name

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint= is required: a run or checkpoint directory, or hf:<hub name or folder>")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port={self.port} must be in 0..65535 (0: any free port)")
        for key in ("max_batch_size", "max_queue"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout={self.request_timeout} must be > 0 (seconds)")


class APIError(Exception):
    """An OpenAI-shaped error: HTTP status, message, the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _models() -> tuple[type, type]:
    """The request schemas (pydantic, imported with FastAPI: the server's optional dependency)."""
    from pydantic import BaseModel, ConfigDict, Field, create_model

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str
        max_tokens: Optional[int] = Field(default=None, ge=1)
        temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
        top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
        n: int = Field(default=1, ge=1, le=MAX_N)
        stop: Optional[Union[str, list[str]]] = None
        seed: Optional[int] = Field(default=None, ge=0, lt=2**63)
        stream: bool = False
        presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
        frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
        user: Optional[str] = None

    # nanoloom's other controls as extra body fields with the sampler's names (its one declaration: GenerationConfig);
    # GenerationConfig checks their values
    extras = {name: (Optional[kind], None) for name, kind in scalar_controls().items() if name in EXTRA_CONTROLS}
    Sampling = create_model("Sampling", __base__=Sampling, **extras)  # noqa: N806 (a class)

    class CompletionRequest(Sampling):
        prompt: Union[str, list[str]]
        echo: bool = False
        logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_LOGPROBS)  # alternatives per token

    class Message(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["system", "user", "assistant"]
        content: str

    class ChatRequest(Sampling):
        messages: list[Message] = Field(min_length=1)

    return CompletionRequest, ChatRequest


class Server:
    """The loaded model, its engine thread, and the request -> jobs logic the endpoints share."""

    def __init__(self, cfg: ServeConfig) -> None:
        from sample.pipeline import pipeline

        self.cfg = cfg
        try:
            self.pipe = pipeline("text-generation", model=cfg.checkpoint, device=cfg.device, dtype=cfg.dtype)
        except ValueError as e:
            if "encoder-decoder" not in str(e):
                raise
            raise ValueError(
                f"{cfg.checkpoint} holds a t5; the server serves gpt checkpoints (a t5 answers through "
                "pipeline('text2text-generation'))"
            ) from None
        self.tokenizer = self.pipe.tokenizer
        self.engine = Engine(self.pipe.model, self.tokenizer, cfg.max_batch_size)
        self.name = cfg.model_name or Path(cfg.checkpoint.rstrip("/")).name
        self.created = int(time.time())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.engine.run, args=(self.stop,), daemon=True, name="engine")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.engine.close()

    def config(self, req: Any, chat: bool) -> Any:
        """The GenerationConfig of a request: its fields over the checkpoint's defaults, as the pipeline builds it."""
        controls: dict[str, Any] = {}
        for key in sorted(OPENAI_NAMED | EXTRA_CONTROLS):
            if getattr(req, key) is not None:
                controls[key] = getattr(req, key)
        max_tokens = 16 if req.max_tokens is None and not chat else req.max_tokens  # OpenAI's completions default
        if max_tokens is not None:  # a chat without max_tokens: the checkpoint's default length
            controls["max_new_tokens"] = max_tokens
        if req.stop is not None:
            stops = [req.stop] if isinstance(req.stop, str) else req.stop
            if len(stops) > 4 or not all(stops):
                raise APIError(400, "stop must be a non-empty string or a list of at most 4 of them", "stop")
            controls["stop_strings"] = stops
        if chat:
            controls["eos_token_id"] = [self.tokenizer.chat_ids[-1], self.tokenizer.eot_id]
        do_sample = controls.pop("do_sample", None)
        if do_sample is None and req.temperature is not None:
            do_sample = req.temperature > 0
        try:
            return self.pipe.generation_config(controls, do_sample)
        except ValueError as e:  # names the control: "top_k=-1 must be ..."
            named = re.match(r"(\w+)=", str(e))
            param = {"max_new_tokens": "max_tokens"}.get(named[1], named[1]) if named else None
            raise APIError(400, str(e), param) from None

    def submit(
        self, ids: list[int], config: Any, seed: int, on_text: Any = None, logprobs: int | None = None, prompt: str = ""
    ) -> Job:
        if self.engine.pending.qsize() >= self.cfg.max_queue:
            raise APIError(429, "the server is busy: too many requests are waiting; retry shortly", None, "server_busy")
        try:
            return self.engine.submit(ids, config, seed, on_text, top_logprobs=logprobs, prompt=prompt)
        except ValueError as e:
            param = "prompt" if len(ids) >= self.engine.block_size else "max_tokens"
            raise APIError(400, str(e), param) from None


def logprobs_body(tokenizer: Any, scores: list[tuple[int, float, dict[int, float]]], offset: int) -> dict[str, Any]:
    """OpenAI's completions logprobs of scored tokens: each token's text and log-probability, the alternatives by
    text, and where each token starts in the choice's text (from offset)."""
    tokens = [tokenizer.decode([t]) for t, _, _ in scores]
    starts = []
    for token in tokens:
        starts.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp, _ in scores],
        "top_logprobs": [{tokenizer.decode([i]): v for i, v in top.items()} for _, _, top in scores],
        "text_offset": starts,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def finish_reason(reason: str) -> str:
    """OpenAI's names: "stop" for an end of text or a stop string, "length" for the token budget."""
    return "length" if reason == "length" else "stop"


def create_app(server: Server) -> Any:
    """The FastAPI application of a Server (started and closed with the app's lifespan)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import ValidationError

    CompletionRequest, ChatRequest = _models()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        yield
        server.close()

    app = FastAPI(title="nanoloom", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:  # the server keeps serving
        return JSONResponse(error_body(f"internal error: {e}", None, "server_error"), status_code=500)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(error_body(e.message, e.param, e.kind), status_code=e.status, headers=headers)

    async def parse(request: Request, schema: Any) -> Any:
        """The request body checked against schema; an APIError naming the first field that is wrong."""
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        try:
            return schema.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(x) for x in first.get("loc", ())[:1]) or None
            message = f"unknown field {param!r}" if first.get("type") == "extra_forbidden" else first.get("msg")
            raise APIError(400, f"{param}: {message}" if param else str(message), param) from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        chat = server.tokenizer.chat_ids is not None
        engine = server.engine
        counts = {"running": engine.active, "waiting": engine.pending.qsize(), "finished": dict(engine.finished)}
        return {"status": "ok", "model": server.name, "chat": chat, **counts}

    @app.get("/")
    async def playground() -> Any:
        from fastapi.responses import HTMLResponse

        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": server.name, "object": "model", "created": server.created, "owned_by": "nanoloom"}
        return {"object": "list", "data": [card]}

    def check_model(name: str) -> None:
        if name != server.name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {server.name!r}", "model",
                           "model_not_found")  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await parse(request, CompletionRequest)
        check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or not all(p for p in prompts):
            raise APIError(400, "prompt must be a non-empty string (or a list of them)", "prompt")
        config = server.config(req, chat=False)
        ids = [prompt_ids(server.tokenizer, p, "gpt") for p in prompts]
        rows = [(i, p, j) for i, p in enumerate(prompts) for j in range(req.n)]
        texts = [prompts[i] for i, _, _ in rows]
        return await respond(
            req, config, [(ids[i], (prompts[i] if req.echo else "")) for i, _, _ in rows], False, texts
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req = await parse(request, ChatRequest)
        check_model(req.model)
        if server.tokenizer.chat_ids is None:
            raise APIError(400, f"{server.name} is not a chat model (fine-tune it with task=instruct)", "messages")
        messages = [m.model_dump() for m in req.messages]
        if messages[-1]["role"] == "assistant":
            raise APIError(400, "messages end with an assistant turn; the last message must be the user's", "messages")
        ids = render(server.tokenizer, messages, add_generation_prompt=True)[0]
        config = server.config(req, chat=True)
        return await respond(req, config, [(ids, "")] * req.n, True, [""] * req.n)

    async def respond(req: Any, config: Any, rows: list[tuple[list[int], str]], chat: bool, texts: list[str]) -> Any:
        seed = row_seeds(req.seed, 1)[0]
        loop = asyncio.get_running_loop()
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in rows]
        jobs: list[Job] = []
        try:
            for j, (ids, _) in enumerate(rows):
                put = (lambda q: lambda piece: loop.call_soon_threadsafe(q.put_nowait, piece))(queues[j])
                jobs.append(server.submit(ids, config, seed + j, put, getattr(req, "logprobs", None), texts[j]))
        except APIError:
            for job in jobs:
                job.cancel()
            raise
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"
        if req.stream:
            scored = getattr(req, "logprobs", None) is not None
            events = stream(rid, kind, jobs, queues, rows, chat, scored)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(asyncio.to_thread(job.wait) for job in jobs)), server.cfg.request_timeout
            )
        except asyncio.TimeoutError:
            for job in jobs:
                job.cancel()
            raise APIError(504, f"the request took longer than request_timeout={server.cfg.request_timeout} s",
                           None, "timeout") from None  # fmt: skip
        choices = []
        for j, (result, (_, echo)) in enumerate(zip(results, rows)):
            reason = finish_reason(result.finish_reason)
            if chat:
                choices.append({"index": j, "message": {"role": "assistant", "content": result.text},
                                "finish_reason": reason})  # fmt: skip
            else:
                scored = (
                    logprobs_body(server.tokenizer, jobs[j].scores, len(echo)) if req.logprobs is not None else None
                )
                choices.append({"index": j, "text": echo + result.text, "logprobs": scored, "finish_reason": reason})
        prompt_tokens = sum(len(ids) for ids, _ in rows[:: max(1, req.n)])
        body = {"id": rid, "object": kind, "created": int(time.time()), "model": server.name, "choices": choices,
                "usage": usage(prompt_tokens, sum(len(r.token_ids) for r in results))}  # fmt: skip
        return JSONResponse(body)

    async def stream(
        rid: str, kind: str, jobs: list[Job], queues: list[asyncio.Queue], rows: list[Any], chat: bool, scored: bool
    ) -> AsyncIterator[str]:
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())
        sent = [0] * len(jobs)  # scored tokens already sent, per choice
        offsets = [len(echo) for _, echo in rows]  # where the next token starts in the choice's text

        def event(j: int, text: str | None, reason: str | None, score: bool = True) -> str:
            if chat:
                delta = {"role": "assistant", "content": text} if text is not None else {}
                choice = {"index": j, "delta": delta, "finish_reason": reason}
            else:
                logprobs = None
                if scored and score and text is not None:  # the tokens drawn since the last chunk
                    new = jobs[j].scores[sent[j] :]
                    sent[j] += len(new)
                    logprobs = logprobs_body(server.tokenizer, new, offsets[j])
                    offsets[j] += sum(len(t) for t in logprobs["tokens"])
                choice = {"index": j, "text": text or "", "logprobs": logprobs, "finish_reason": reason}
            body = {"id": rid, "object": chunk_kind, "created": created, "model": server.name, "choices": [choice]}
            return f"data: {json.dumps(body)}\n\n"

        deadline = time.monotonic() + server.cfg.request_timeout
        try:
            for j, (_, echo) in enumerate(rows):
                if echo:
                    yield event(j, echo, None, score=False)  # the echoed prompt is not scored
            open_rows = set(range(len(jobs)))
            while open_rows and time.monotonic() < deadline:
                for j in sorted(open_rows):
                    finished = jobs[j].done.is_set()
                    if finished:  # the engine scheduled its last pieces (call_soon_threadsafe) before it set done:
                        await asyncio.sleep(0)  # one pass of the event loop puts them in the queue
                    while not queues[j].empty():
                        yield event(j, queues[j].get_nowait(), None)
                    if finished:
                        open_rows.discard(j)
                        result = jobs[j].result
                        yield event(j, None if chat else "", finish_reason(result.finish_reason if result else "stop"))
                await asyncio.sleep(0.005)
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:  # a client gone mid-stream (or the deadline): its rows stop
                if not job.done.is_set():
                    job.cancel()

    return app


def serve(cfg: ServeConfig) -> None:
    """Load the checkpoint, start the engine and answer HTTP until Ctrl-C."""
    import uvicorn

    server = Server(cfg)
    app = create_app(server)
    print(f"nanoloom: serving {server.name} on http://{cfg.host}:{cfg.port} (OpenAI API under /v1)", file=sys.stderr)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    run_command("serve", ServeConfig, serve, sys.argv[1:] if argv is None else list(argv), USAGE)


if __name__ == "__main__":
    main()
