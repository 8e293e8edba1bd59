"""A Gemini API server speaking the REST protocol `google-genai` calls, with behaviour scripted by
model name. It checks the `x-goog-api-key` header and records every request, so tests can assert
exactly what Anima sent (systemInstruction, contents, generationConfig).

    gemini-2.0-flash (or any name)  REPLY in three SSE chunks, usage and STOP on the last;
                                    fewer chunks and MAX_TOKENS if maxOutputTokens < 3
    blocked        200 with promptFeedback.blockReason SAFETY and no candidates
    quota          429 RESOURCE_EXHAUSTED          fail-500   500 INTERNAL
    thinker        a `"thought": true` part first, then REPLY (sent whether or not
                   thinkingConfig.includeThoughts is set, unlike the real API)
    cut            two chunks, then finishReason SAFETY with no content
    slow           waits 2 s before answering (timeout tests)
    stall          one chunk, then nothing for 60 s (a stall after the first byte)

Any model given `tools[].functionDeclarations` (and a last turn that is not a functionResponse)
answers two whole `functionCall` parts for the first function, args TOOL_ARGS, without ids (as the
Developer API does), the first carrying a `thoughtSignature`; finishReason STOP. After function
responses it answers TOOL_REPLY + their `response` objects as JSON.
`generationConfig.responseLogprobs` adds a `logprobsResult` (chosen token + `logprobs` top
candidates) to each text chunk. `:batchEmbedContents` answers one `{"values": [...]}` per request
(8 dims, or `outputDimensionality`, `vector_of` the text).

Paths: `POST /{version}/models/{model}:streamGenerateContent?alt=sse` and `:generateContent`,
`GET /{version}/models/{model}`, `GET /{version}/models` (paged by `pageSize`/`pageToken`).
Wrong keys get Google's answers: no key → 403 PERMISSION_DENIED, a wrong key → 400
INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers.openai_stub import vector_of

API_KEY = "test-key"
REPLY = ("Hello", " from", " Gemini!")
THOUGHT = "The user greets me; I greet back."
PROMPT_TOKENS = 9
TOOL_ARGS = {"location": "Paris"}
TOOL_REPLY = "The tool said: "
CATALOG = {  # name → (inputTokenLimit, supportedGenerationMethods)
    "gemini-2.0-flash": (1_048_576, ["generateContent", "countTokens"]),
    "gemini-2.5-pro": (2_097_152, ["generateContent", "countTokens"]),
    "text-embedding-004": (2048, ["embedContent"]),
}


@dataclass
class GeminiState:
    """What the server was asked: one dict per request (method, version, model, action, key, body)."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["body"] is not None]


def google_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=code)


def _key_error(key: str | None) -> Response | None:
    if key is None:
        return google_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity).",
        )
    if key != API_KEY:
        info = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        }
        return google_error(
            400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info]
        )
    return None


def _response(parts: list[dict[str, Any]], finish: str | None, usage: dict[str, int]) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish is not None:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.0-flash-001",
        "responseId": "resp-test",
    }


def scripted(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The GenerateContentResponse chunks this model answers with."""
    if model == "blocked":
        feedback = {"blockReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT"}]}
        return [{"promptFeedback": feedback, "usageMetadata": {"promptTokenCount": PROMPT_TOKENS}}]
    declared = [f for t in body.get("tools") or [] for f in t.get("functionDeclarations") or []]
    last = (body.get("contents") or [{}])[-1].get("parts") or []
    answered = [p["functionResponse"]["response"] for p in last if "functionResponse" in p]
    if declared and not answered:
        call = {"functionCall": {"name": declared[0]["name"], "args": TOOL_ARGS}}
        usage = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": 5, "totalTokenCount": 14}
        return [_response([call | {"thoughtSignature": "c2lnbmF0dXJl"}, call], "STOP", usage)]
    if answered:
        text = TOOL_REPLY + json.dumps(answered)
        usage = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": 2, "totalTokenCount": 11}
        return [_response([{"text": text}], "STOP", usage)]
    limit = (body.get("generationConfig") or {}).get("maxOutputTokens")
    pieces = REPLY[: min(limit, len(REPLY))] if limit else REPLY
    finish = "MAX_TOKENS" if len(pieces) < len(REPLY) else "STOP"
    running = {"promptTokenCount": PROMPT_TOKENS}
    chunks = []
    if model == "thinker":
        chunks.append(_response([{"text": THOUGHT, "thought": True}], None, running))
    if model == "cut":
        pieces, finish = REPLY[:2], "SAFETY"
    config = body.get("generationConfig") or {}
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1 and model != "cut"
        chunks.append(_response([{"text": piece}], finish if last else None, running))
        if config.get("responseLogprobs"):
            chunks[-1]["candidates"][0]["logprobsResult"] = _logprobs_result(
                piece, config.get("logprobs") or 0
            )
    if model == "cut":
        chunks.append(_response([], "SAFETY", running))
    usage = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": len(pieces)}
    if model == "thinker":
        usage["thoughtsTokenCount"] = 7
    usage["totalTokenCount"] = sum(usage.values())
    chunks[-1]["usageMetadata"] = usage
    return chunks


def _logprobs_result(piece: str, top: int) -> dict[str, Any]:
    """Gemini's per-step logprobs: the chosen token and `top` candidates."""
    chosen = {"token": piece, "tokenId": 7, "logProbability": -0.25}
    alternatives = [{"token": piece, "tokenId": 7, "logProbability": -0.5}] * top
    return {
        "chosenCandidates": [chosen],
        "topCandidates": [{"candidates": alternatives}],
        "logProbabilitySum": -0.25,
    }


def _merged(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What `:generateContent` answers: the chunks' parts in one candidate (thoughts kept apart)."""
    last = dict(chunks[-1])
    if "candidates" in last:
        parts = [
            p for c in chunks for p in (c.get("candidates") or [{}])[0].get("content", {}).get("parts", [])
        ]
        texts = "".join(p["text"] for p in parts if not p.get("thought"))
        thoughts = [p for p in parts if p.get("thought")]
        finish = last["candidates"][0].get("finishReason")
        last = _response([*thoughts, {"text": texts}], finish, last["usageMetadata"])
    return last


def gemini_app(state: GeminiState | None = None) -> Starlette:
    state = state or GeminiState()

    async def models(request: Request) -> Response:
        target = request.path_params["target"]
        model, _, action = target.partition(":")
        body = json.loads(await request.body() or b"null")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        state.requests.append(
            {
                "method": request.method,
                "version": request.path_params["version"],
                "model": model,
                "action": action,
                "query": dict(request.query_params),
                "key": key,
                "body": body,
            }
        )
        if (denied := _key_error(key)) is not None:
            return denied
        if request.method == "GET":
            return _get_model(model)
        return await _generate(model, action, body or {}, request)

    async def listing(request: Request) -> Response:
        key = request.headers.get("x-goog-api-key")
        state.requests.append(
            {
                "method": "GET",
                "version": request.path_params["version"],
                "model": None,
                "action": "list",
                "query": dict(request.query_params),
                "key": key,
                "body": None,
            }
        )
        if (denied := _key_error(key)) is not None:
            return denied
        size = int(request.query_params.get("pageSize") or 2)
        start = int(request.query_params.get("pageToken") or 0)
        names = list(CATALOG)
        page: dict[str, Any] = {"models": [_model_json(n) for n in names[start : start + size]]}
        if start + size < len(names):
            page["nextPageToken"] = str(start + size)
        return JSONResponse(page)

    routes = [
        Route("/{version:str}/models", listing, methods=["GET"]),
        Route("/{version:str}/models/{target:str}", models, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes)


def _embedding(request: dict[str, Any]) -> dict[str, Any]:
    text = "".join(p.get("text", "") for p in request["content"]["parts"])
    return {"values": vector_of(text, int(request.get("outputDimensionality") or 8))}


def _model_json(name: str) -> dict[str, Any]:
    limit, methods = CATALOG[name]
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name,
        "inputTokenLimit": limit,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": methods,
    }


def _get_model(model: str) -> Response:
    if model not in CATALOG:
        return _not_found(model)
    return JSONResponse(_model_json(model))


def _not_found(model: str) -> Response:
    message = f"models/{model} is not found for API version v1beta, or is not supported for generateContent."
    return google_error(404, "NOT_FOUND", message)


async def _generate(model: str, action: str, body: dict[str, Any], request: Request) -> Response:
    if model == "quota":
        return google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "rpm"}]}],
        )
    if model == "fail-500":
        return google_error(500, "INTERNAL", "An internal error has occurred. Please retry.")
    if model == "slow":
        await asyncio.sleep(2)
    if action == "batchEmbedContents":
        return JSONResponse({"embeddings": [_embedding(r) for r in body.get("requests") or []]})
    if not body.get("contents"):
        return google_error(
            400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified"
        )
    chunks = scripted(model, body)
    if action == "generateContent":
        return JSONResponse(_merged(chunks))
    if action != "streamGenerateContent" or request.query_params.get("alt") != "sse":
        return _not_found(model)

    async def events() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(chunks):
            yield b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"
            if model == "stall" and i == 0:
                await asyncio.sleep(60)

    return StreamingResponse(events(), media_type="text/event-stream")
