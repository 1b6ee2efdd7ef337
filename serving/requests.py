"""What ``POST /v1/ner`` accepts: reading the body within its size bound, checking its media type,
parsing it into documents, and the contract that ``GET /openapi.json`` publishes.

Parsing is hand-written, so that every client mistake gets one precise message and status
(:class:`ClientError`: 400 / 413 / 415 / 422, see :mod:`serving.server`); the pydantic models at the
end describe the same shapes for the OpenAPI document and are never used to parse.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from serving.engine import Document

if TYPE_CHECKING:
    from serving.server import Settings

__all__ = ["ClientError", "parse_request", "read_body", "drain_limit", "content_type_problem",
           "request_models", "Entity", "Entities", "Results", "ErrorBody"]

JSON_TYPES = ("application/json",)


class ClientError(Exception):
    """A bad request: HTTP ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


# --------------------------------------------------------------------------- parsing
def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _check_text(value, where: str, settings: Settings) -> str:
    if not isinstance(value, str):
        raise ClientError(422, f"{where} must be a string, got {_json_type(value)}", "wrong_type")
    if len(value) > settings.max_chars:
        raise ClientError(413, f"{where} has {len(value)} characters; the limit is {settings.max_chars}",
                          "too_many_chars")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError(400, f"{where} contains invalid Unicode (a lone surrogate escape such as \\ud800)",
                          "invalid_unicode") from None
    return value


def _json_type(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(v), type(v).__name__)


def parse_request(body: bytes, settings: Settings) -> tuple[str, list[Document]]:
    """Validate a ``/v1/ner`` body. Returns ``(kind, documents)``; raises :class:`ClientError`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClientError(400, f"body is not valid UTF-8 (invalid byte at offset {e.start})", "invalid_utf8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise ClientError(400, "empty body: send a JSON object such as {\"text\": \"...\"}", "invalid_json")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ClientError(400, "invalid JSON: nested too deeply", "invalid_json") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers with too many digits
        msg = "a number has too many digits" if "digits" in str(e) else str(e)[:200]
        raise ClientError(400, f"invalid JSON: {msg}", "invalid_json") from None
    if not isinstance(obj, dict):
        raise ClientError(422, f"the body must be a JSON object with one of \"text\", \"texts\" or \"words\", "
                               f"got {_json_type(obj)}", "wrong_type")
    fields = [k for k in ("text", "texts", "words") if k in obj]
    unknown = sorted(k for k in obj if k not in ("text", "texts", "words"))
    if unknown:
        raise ClientError(422, f"unknown field(s) {', '.join(map(repr, unknown[:5]))}: use one of "
                               f"\"text\", \"texts\" or \"words\"", "unknown_field")
    if len(fields) != 1:
        raise ClientError(422, "send exactly one of \"text\", \"texts\" or \"words\""
                          + (f" (got {', '.join(fields)})" if fields else ""), "missing_field")
    kind = fields[0]
    value = obj[kind]
    if kind == "text":
        return kind, [Document.from_text(_check_text(value, "text", settings))]
    if not isinstance(value, list):
        raise ClientError(422, f"{kind} must be an array, got {_json_type(value)}", "wrong_type")
    if not value:
        raise ClientError(422, f"{kind} must not be empty", "wrong_type")
    if len(value) > settings.max_texts:
        raise ClientError(413, f"{kind} has {len(value)} items; the limit is {settings.max_texts}", "too_many_texts")
    if kind == "texts":
        return kind, [Document.from_text(_check_text(v, f"texts[{i}]", settings)) for i, v in enumerate(value)]
    docs = []
    for i, ws in enumerate(value):
        if not isinstance(ws, list):
            raise ClientError(422, f"words[{i}] must be an array of strings, got {_json_type(ws)}", "wrong_type")
        chars = len(ws) - 1 if ws else 0
        for j, w in enumerate(ws):
            if not isinstance(w, str):
                raise ClientError(422, f"words[{i}][{j}] must be a string, got {_json_type(w)}", "wrong_type")
            chars += len(w)
        if chars > settings.max_chars:
            raise ClientError(413, f"words[{i}] has {chars} characters (joined with spaces); the limit is "
                                   f"{settings.max_chars}", "too_many_chars")
        for j, w in enumerate(ws):
            _check_text(w, f"words[{i}][{j}]", settings)
        docs.append(Document.from_words(ws))
    return kind, docs


# --------------------------------------------------------------------------- body reading
def drain_limit(limit: int) -> int:
    """How much of a rejected body is still read (and discarded) so that the client gets the
    answer: closing a socket with unread data makes the kernel send RST, and the client may lose
    the response. Beyond this the connection is simply closed."""
    return max(4 * limit, 16 << 20)


async def read_body(request, limit: int, drain: int) -> tuple[bytes | None, int]:
    """Read the body; ``None`` once it exceeds ``limit`` (the rest is discarded, up to ``drain`` bytes)."""
    body, total = bytearray(), 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        total += len(chunk)
        if body is not None:
            if total > limit:
                body = None
            else:
                body += chunk
        if not message.get("more_body", False) or total > drain:
            break
    return (bytes(body) if body is not None else None), total


def content_type_problem(headers) -> tuple[str, str] | None:
    """``(message, reason)`` when the body is not declared as plain UTF-8 JSON, else ``None``."""
    ctype = headers.get("content-type", "")
    media, _, params = ctype.partition(";")
    media = media.strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        return f"Content-Type must be application/json, got {ctype[:100] or 'none'!r}", "content_type"
    charset = next((p.split("=", 1)[1].strip().strip('"').lower() for p in params.split(";")
                    if p.strip().lower().startswith("charset=")), "utf-8")
    if charset not in ("utf-8", "utf8"):
        return f"only UTF-8 JSON is accepted, got charset={charset[:40]!r}", "content_type"
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"Content-Encoding {encoding[:40]!r} is not supported; send plain JSON", "content_encoding"
    return None


# --------------------------------------------------------------------------- the contract (GET /openapi.json)
class Entity(BaseModel):
    """One entity found in a text."""

    text: str = Field(description="the entity as it appears in the input: input[start:end]")
    label: str = Field(description="entity type, e.g. PER")
    start: int = Field(description="character offset into the text (for words: into ' '.join(words))")
    end: int = Field(description="character offset, exclusive")
    score: float = Field(description="CRF posterior probability of the entity's exact tag sequence")
    word_start: int = Field(description="index of the first word")
    word_end: int = Field(description="index after the last word")


class Entities(BaseModel):
    """The answer to {"text": ...}; also one item of Results."""

    entities: list[Entity]


class Results(BaseModel):
    """The answer to {"texts": [...]} and {"words": [...]}: one item per text, in order."""

    results: list[Entities]


class ErrorBody(BaseModel):
    """The body of every error answer (4xx and 5xx), whatever the path."""

    error: str = Field(description="what was wrong, in one sentence")


def request_models(settings: Settings) -> list[type[BaseModel]]:
    """The three request shapes under ``settings``' limits, for the OpenAPI document. A body is exactly one
    of them (each has one required field and no other). Not expressible here, checked by
    :func:`parse_request`: a ``words`` item's characters joined with spaces (``max_chars``), lone
    surrogates; and the body's size, media type and encoding (:func:`read_body`, :func:`content_type_problem`)."""
    strict = ConfigDict(extra="forbid", strict=True)
    text = Annotated[str, Field(max_length=settings.max_chars)]

    def items(of):
        return Annotated[list[of], Field(min_length=1, max_length=settings.max_texts)]

    class TextRequest(BaseModel):
        """One raw text; the answer is an Entities object."""

        model_config = strict
        text: text

    class TextsRequest(BaseModel):
        """Several raw texts; the answer is a Results object."""

        model_config = strict
        texts: items(text)

    class WordsRequest(BaseModel):
        """Pre-split texts (lists of words; an empty list is an empty text); the answer is a Results object."""

        model_config = strict
        words: items(list[str])

    return [TextRequest, TextsRequest, WordsRequest]
