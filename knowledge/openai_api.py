"""The OpenAI-compatible endpoints under /v1/: `POST /v1/chat/completions` and `GET /v1/models`,
so a RAG app that already talks to OpenAI through an official client (or LangChain, LlamaIndex)
uses ragloop by changing only its base URL and key (docs/conversations.md).

Plain Django views rather than the ninja API of knowledge.api: every response here, errors
included, must have OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), and a
streamed answer is a server-sent event stream, neither of which the ninja API is built around.
The views parse and check the request, call one service (knowledge.services.conversations.
chat_ask), and write the result in the Chat Completions shape.
"""

import json
import re
import secrets
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from knowledge.errors import ServiceError, Unauthenticated
from knowledge.models import KnowledgeBase, Turn
from knowledge.rate_limits import RateLimited, rate_limit_hit
from knowledge.services.conversations import chat_ask
from knowledge.services.tokens import (
    api_token_authenticate,
    api_token_can_access,
    api_token_has_scope,
    api_token_knowledge_bases,
)
from rag.conversation import ConversationError, count_tokens, messages_parse, split_conversation
from rag.text_checks import text_problem

CONVERSATION_HEADER = "X-Ragloop-Conversation-Id"
STREAM_WORDS_PER_CHUNK = 3


class OpenAIError(Exception):
    """An error to answer in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JsonResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JsonResponse(body, status=self.status)


def _rate_limited_response(error: RateLimited) -> JsonResponse:
    # OpenAI's own 429 shape; the official clients wait for Retry-After before they retry.
    response = openai_error_response(429, str(error), type="requests", code="rate_limit_exceeded")
    response["Retry-After"] = str(error.retry_after_seconds)
    return response


def openai_error_response(status: int, message: str, **kwargs) -> JsonResponse:
    return OpenAIError(status, message, **kwargs).response()


def _authenticated(request: HttpRequest):
    header = request.headers.get("Authorization", "")
    scheme, _, plain = header.partition(" ")
    try:
        token = api_token_authenticate(plain=plain.strip()) if scheme.lower() == "bearer" and plain.strip() else None
    except Unauthenticated as refused:  # revoked or expired: say which
        raise OpenAIError(401, str(refused), code="invalid_api_key") from None
    if token is None:
        raise OpenAIError(
            401,
            "Missing or unknown API key (send 'Authorization: Bearer <ragloop API token>').",
            code="invalid_api_key",
        )
    return token


def _model(token, name) -> tuple[KnowledgeBase, str | None]:
    """The knowledge base a `model` names ("kb-slug" or "kb-slug:generator-version") and the
    generator version it pins, if any."""
    if not isinstance(name, str) or not name.strip():
        raise OpenAIError(400, "model: name the knowledge base to answer from (its slug).", param="model")
    slug, _, version = name.partition(":")
    knowledge_base = KnowledgeBase.objects.filter(slug=slug).first() if not text_problem(slug) else None
    if knowledge_base is None or not api_token_can_access(token=token, knowledge_base=knowledge_base):
        # The same answer for a knowledge base the key may not use: a key must not learn which exist.
        raise OpenAIError(404, f"The model {name!r} does not exist or you do not have access to it.", param="model", code="model_not_found")
    return knowledge_base, version or None


def _live_generator_version(knowledge_base: KnowledgeBase) -> str:
    return knowledge_base.live_generator_version or knowledge_base.generator_version


def _parse_body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as error:
        raise OpenAIError(400, f"The body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, f"The body must be a JSON object, not {type(body).__name__}.")
    return body


def _conversation_param(value, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 255 or text_problem(value):
        raise OpenAIError(400, f"{where}: a conversation id is a string of at most 255 characters.", param=where)
    return value


def _option(body: dict, name: str, kind, default, check=None):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or check and not check(value):
        raise OpenAIError(400, f"{name}: {value!r} is not a valid value.", param=name)
    return value


@csrf_exempt
def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        if request.method != "POST":
            raise OpenAIError(405, "Use POST for /v1/chat/completions.")
        token = _authenticated(request)
        if not api_token_has_scope(token=token, scope="ask"):
            raise OpenAIError(403, "This API key may not ask (it lacks the 'ask' scope).", code="insufficient_scope")
        body = _parse_body(request)
        knowledge_base, pinned_version = _model(token, body.get("model"))
        rate_limit_hit(token_id=token.pk, knowledge_base_id=knowledge_base.pk)
        if pinned_version and pinned_version != _live_generator_version(knowledge_base):
            raise OpenAIError(
                404,
                f"The model {body['model']!r} is not served: the live generator of {knowledge_base.slug!r} is "
                f"{_live_generator_version(knowledge_base)!r}.",
                param="model",
                code="model_not_found",
            )
        try:
            messages = messages_parse(body.get("messages"))
            split_conversation(messages)  # the last message must be the user's question
        except ConversationError as error:
            param = str(error).split(":", 1)[0]
            raise OpenAIError(400, str(error), param=param if param.startswith("messages") else "messages") from None
        stream = _option(body, "stream", bool, False)
        include_usage = bool(_option(body, "stream_options", dict, {}).get("include_usage"))
        for name in ("tools", "functions"):
            if body.get(name):
                raise OpenAIError(400, f"{name}: ragloop's generators do not call tools.", param=name)
        if _option(body, "n", int, 1) != 1:
            raise OpenAIError(400, "n: ragloop answers with one choice.", param="n")
        k = _option(body, "k", int, 5, lambda value: 1 <= value <= 100)
        end_user = _option(body, "user", str, "", lambda value: len(value) <= 255 and not text_problem(value))
        conversation = _conversation_param(body.get("conversation_id"), "conversation_id") or _conversation_param(
            request.headers.get(CONVERSATION_HEADER), CONVERSATION_HEADER
        )
        turn = chat_ask(
            knowledge_base=knowledge_base,
            messages=messages,
            k=k,
            conversation_external_id=conversation,
            end_user=end_user,
        )
    except OpenAIError as error:
        return error.response()
    except RateLimited as error:
        return _rate_limited_response(error)
    except ServiceError as error:
        # OpenAI answers every invalid request with 400 (clients raise BadRequestError for it).
        status = 400 if error.status_code == 422 else error.status_code
        kind = "api_error" if status >= 500 else "invalid_request_error"
        return openai_error_response(status, str(error), type=kind)

    turn = Turn.objects.select_related("knowledge_base", "conversation").prefetch_related("passages").get(pk=turn.pk)
    completion = _completion_fields(turn, knowledge_base)
    if stream:
        response = StreamingHttpResponse(
            _event_stream(turn, completion, include_usage=include_usage), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass the events on as they come
    else:
        response = JsonResponse(
            {
                **completion,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": turn.answer, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(turn),
            }
        )
    response[CONVERSATION_HEADER] = turn.conversation.external_id
    return response


def _completion_fields(turn: Turn, knowledge_base: KnowledgeBase) -> dict:
    """The fields every response and chunk of one completion share; the last four are
    ragloop's (clients ignore fields they do not know)."""
    return {
        "id": f"chatcmpl-{turn.pk}-{secrets.token_hex(4)}",
        "created": int(turn.created_at.timestamp()),
        "model": f"{knowledge_base.slug}:{turn.generator_version}",
        "system_fingerprint": None,
        "conversation_id": turn.conversation.external_id,
        "turn_id": turn.pk,
        "rewritten_query": turn.rewritten_query,
        "passages": [
            {"rank": p.rank, "score": p.score, "document": p.source_id, "chunk": p.chunk_id, "title": p.title, "text": p.text}
            for p in turn.passages.all()
        ],
    }


def _usage(turn: Turn) -> dict:
    """Token counts in rag.conversation.count_tokens units (words and punctuation) of what the
    generator was given (the earlier messages it saw, the question, the passages) and of the
    answer: no tokenizer is shared by every backend, so these are estimates."""
    seen = turn.history[-turn.metadata.get("history_messages_used", 0) :] if turn.metadata.get("history_messages_used") else []
    prompt = sum(count_tokens(m["content"]) for m in seen) + count_tokens(turn.query)
    prompt += sum(count_tokens(p.title) + count_tokens(p.text) for p in turn.passages.all())
    completion = count_tokens(turn.answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _answer_pieces(answer: str) -> list[str]:
    """The answer in pieces of a few words, each keeping its following whitespace, so the
    pieces concatenate to the answer exactly."""
    words = re.findall(r"\S+\s*", answer)
    leading = answer[: len(answer) - len(answer.lstrip())]
    pieces = ["".join(words[i : i + STREAM_WORDS_PER_CHUNK]) for i in range(0, len(words), STREAM_WORDS_PER_CHUNK)]
    if leading and pieces:
        pieces[0] = leading + pieces[0]
    return pieces or [answer]


def _event_stream(turn: Turn, completion: dict, *, include_usage: bool) -> Iterator[bytes]:
    """The answer as Chat Completions chunks (server-sent events), then `data: [DONE]`.

    ragloop generates the whole answer before the first event (the turn is stored first, so
    nothing is lost if the client goes away); the stream then sends it a few words at a time.
    """

    def event(choices: list, **extra) -> bytes:
        chunk = {**completion, "object": "chat.completion.chunk", "choices": choices, **extra}
        if include_usage and "usage" not in extra:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk)}\n\n".encode()

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    for piece in _answer_pieces(turn.answer):
        yield event([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    if include_usage:
        yield event([], usage=_usage(turn))
    yield b"data: [DONE]\n\n"


@csrf_exempt
def models_list(request: HttpRequest) -> HttpResponse:
    """The knowledge bases the key may use, as OpenAI models (their ids are the slugs)."""
    try:
        if request.method != "GET":
            raise OpenAIError(405, "Use GET for /v1/models.")
        token = _authenticated(request)
        rate_limit_hit(token_id=token.pk, knowledge_base_id=None)
    except OpenAIError as error:
        return error.response()
    except RateLimited as error:
        return _rate_limited_response(error)
    visible = api_token_knowledge_bases(token=token).order_by("slug")
    return JsonResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": kb.slug,
                    "object": "model",
                    "created": int(kb.created_at.timestamp()),
                    "owned_by": "ragloop",
                    "generator_version": _live_generator_version(kb),
                }
                for kb in visible
            ],
        }
    )
