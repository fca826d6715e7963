"""A minimal OpenAI-compatible chat server over a local Hugging Face model (`bridgerl serve-teacher`).

It answers `POST /v1/chat/completions` (non-streaming; n, temperature, top_p, max_tokens /
max_completion_tokens, seed) and `GET /v1/models`, generating with transformers. It exists so the
endpoint teacher can be tried and tested end to end without vLLM; for real teachers use vLLM or SGLang.
A model without a chat template gets the messages' contents joined by blank lines plus a newline
(the same text bridgerl.model.prompts renders without a template). With `api_key` set, requests must carry
`Authorization: Bearer <key>`. Generation is serialized by a lock (one model, one device).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    pass


class HFChatBackend:
    """Chat completions from a causal LM directory or hub id."""

    def __init__(self, model_path: str, name: str = "teacher", dtype: str = "auto", max_tokens_default: int = 256):
        from bridgerl.model.loading import default_device, load_model, load_tokenizer, resolve_dtype

        self.name, self.max_tokens_default = name, max_tokens_default
        self.device = default_device()
        self.tok = load_tokenizer(model_path)
        self.model = load_model(model_path, resolve_dtype(dtype, self.device), device=self.device)
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()

    def render(self, messages: list[dict]) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(str(m.get("content") or "") for m in messages) + "\n"

    def chat(self, body: dict) -> dict:
        import torch

        from bridgerl.rollout.generation import generate

        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise BadRequest("'messages' must be a non-empty list of {role, content} objects")
        if body.get("stream"):
            raise BadRequest("streaming is not supported by this server")
        try:
            n = int(body.get("n") or 1)
            temperature = float(body.get("temperature", 1.0))
            top_p = float(body.get("top_p", 1.0))
            max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or self.max_tokens_default)
            seed = body.get("seed")
            seed = None if seed is None else int(seed)
        except (TypeError, ValueError) as e:
            raise BadRequest(f"bad sampling parameter: {e}") from None
        if not 1 <= n <= 16 or max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise BadRequest("n must be 1..16, max_tokens ≥ 1, temperature ≥ 0, 0 < top_p ≤ 1")
        prompt = self.render(msgs)
        prompt_len = len(self.tok(prompt, add_special_tokens=False)["input_ids"])
        new = max_tokens if self.context is None else min(max_tokens, self.context - prompt_len)
        if new < 1:
            raise BadRequest(f"prompt of {prompt_len} tokens fills the model's context ({self.context})")
        with self._lock:
            if seed is not None:
                torch.manual_seed(seed)
            g = generate(self.model, self.tok, [prompt] * n, new, temperature=temperature, top_p=top_p, batch_size=n)
        choices = [{"index": i, "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if trunc else "stop"}
                   for i, (text, trunc) in enumerate(zip(g.texts, g.truncated))]
        completion = sum(len(r) for r in g.response_ids)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_len, "completion_tokens": completion,
                          "total_tokens": prompt_len + completion}}


class ChatHandler(BaseHTTPRequestHandler):
    """Routes: GET /v1/models, GET /health, POST /v1/chat/completions."""

    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def log_message(self, fmt, *args):  # quiet by default; never logs headers
        log.debug("%s %s", self.address_string(), fmt % args)

    def send_json(self, code: int, obj, headers: dict | None = None) -> None:
        self.send_raw(code, json.dumps(obj).encode(), headers)

    def send_raw(self, code: int, data: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True

    def error(self, code: int, message: str, kind: str = "invalid_request_error") -> None:
        self.send_json(code, {"error": {"message": message, "type": kind, "code": code}})

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {key}".encode())

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            return self.send_json(200, {"status": "ok"})
        if self.path.rstrip("/") == "/v1/models":
            if not self.authorized():
                return self.error(401, "invalid API key", "authentication_error")
            return self.send_json(200, {"object": "list", "data": [
                {"id": self.server.backend.name, "object": "model", "owned_by": "bridgerl"}]})
        self.error(404, f"no route {self.path}")

    def do_POST(self):
        raw = self.read_body()
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.error(404, f"no route {self.path}")
        if not self.authorized():
            return self.error(401, "invalid API key", "authentication_error")
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            if body.get("model") not in (None, self.server.backend.name):
                return self.error(404, f"model {body.get('model')!r} not found (serving {self.server.backend.name!r})")
            reply = self.server.backend.chat(body)
        except (json.JSONDecodeError, BadRequest) as e:
            return self.error(400, str(e))
        except Exception as e:  # a generation failure is the server's fault
            log.exception("generation failed")
            return self.error(500, f"generation failed: {type(e).__name__}", "server_error")
        self.send_json(200, reply)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    backend: HFChatBackend
    api_key: str | None


class TeacherServer:
    """Serve a backend on host:port (port 0: any free port) in a background thread or the foreground."""

    def __init__(self, backend, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 handler: type[ChatHandler] = ChatHandler):
        self.httpd = _HTTPServer((host, port), handler)
        self.httpd.backend, self.httpd.api_key = backend, api_key
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "TeacherServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="teacher-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "TeacherServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
