"""A corpus of bad (and odd but valid) requests for ``POST /v1/ner`` and their expected status.

Shared by the tests (``tests/test_serving.py``) and the load test (``python -m benchmarks.serving_load``),
which sends it while the server is under load. Every ``BAD`` case must get its 4xx with a JSON
``{"error": "..."}`` body; every ``EDGE`` case (emoji, control characters, zero-width characters,
text at the exact size limit, ...) is valid and must get a 200 with well-formed entities. After
any of them the server must keep answering good requests.

    from serving.badinput import corpus, send
    for case in corpus(settings):          # settings: anything with max_texts / max_chars / max_body_bytes
        r = send(client, case)              # an httpx.Client or fastapi.testclient.TestClient
        assert r.status_code == case.expect
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["Case", "corpus", "bad_cases", "edge_cases", "send", "asend", "check_response"]

JSON = (("content-type", "application/json"),)


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes | None
    expect: int
    method: str = "POST"
    path: str = "/v1/ner"
    headers: tuple = JSON
    chunked: bool = False          # send the body with Transfer-Encoding: chunked (no Content-Length)
    tags: tuple = field(default=())

    @property
    def bad(self) -> bool:
        return self.expect >= 400


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _limits(settings) -> tuple[int, int, int]:
    get = (lambda k, d: settings.get(k, d)) if isinstance(settings, dict) else \
        (lambda k, d: getattr(settings, k, d))
    return (int(get("max_texts", 64)), int(get("max_chars", 10_000)), int(get("max_body_bytes", 1_000_000)))


def bad_cases(settings=None) -> list[Case]:
    """Client mistakes: each must get its 4xx."""
    max_texts, max_chars, max_body = _limits(settings or {})
    big = max_body + 1
    C = Case
    cases = [
        # ---- not JSON / not UTF-8 -> 400
        C("empty_body", b"", 400),
        C("whitespace_body", b"  \n\t ", 400),
        C("truncated_json", b'{"text": "Paris"', 400),
        C("trailing_garbage", b'{"text": "Paris"} x', 400),
        C("single_quotes", b"{'text': 'Paris'}", 400),
        C("unquoted_key", b'{text: "Paris"}', 400),
        C("trailing_comma", b'{"text": "Paris",}', 400),
        C("nan_literal", b'{"text": NaN}', 400),
        C("infinity_literal", b'{"texts": [Infinity]}', 400),
        C("huge_integer", b'{"text": 1' + b"9" * 5000 + b"}", 400),
        C("raw_control_char_in_string", b'{"text": "Par\x01is"}', 400),
        C("raw_newline_in_string", b'{"text": "line1\nline2"}', 400),
        C("raw_nul_in_body", b'{"text": "a"}\x00', 400),
        C("invalid_utf8_ff", b'{"text": "\xff\xfe"}', 400),
        C("invalid_utf8_truncated_multibyte", b'{"text": "\xe2\x82"}', 400),
        C("invalid_utf8_overlong", b'{"text": "\xc0\xaf"}', 400),
        C("invalid_utf8_surrogate_bytes", b'{"text": "\xed\xa0\x80"}', 400),
        C("latin1_bytes", '{"text": "Zürich"}'.encode("latin-1"), 400),
        C("utf16_body", '{"text": "Paris"}'.encode("utf-16"), 400),
        C("lone_surrogate_escape", b'{"text": "\\ud800"}', 400),
        C("lone_surrogate_in_texts", b'{"texts": ["ok", "\\udfff x"]}', 400),
        C("lone_surrogate_in_words", b'{"words": [["ok", "\\ud83d"]]}', 400),
        C("deeply_nested_arrays", b"[" * 100_000 + b"]" * 100_000, 400),
        C("deeply_nested_objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400),
        C("binary_garbage", bytes(range(256)) * 4, 400),
        # ---- valid JSON, wrong shape or types -> 422
        C("null_body", b"null", 422),
        C("array_body", b'["Paris", "Berlin"]', 422),
        C("string_body", b'"Paris"', 422),
        C("number_body", b"42", 422),
        C("empty_object", b"{}", 422),
        C("unknown_field_only", _j({"txt": "Paris"}), 422),
        C("extra_field", _j({"text": "Paris", "lang": "en"}), 422),
        C("emoji_key", _j({"😀": "Paris"}), 422),
        C("text_and_texts", _j({"text": "a", "texts": ["b"]}), 422),
        C("texts_and_words", _j({"texts": ["a"], "words": [["b"]]}), 422),
        C("text_number", _j({"text": 123}), 422),
        C("text_null", _j({"text": None}), 422),
        C("text_bool", _j({"text": True}), 422),
        C("text_array", _j({"text": ["Paris"]}), 422),
        C("text_object", _j({"text": {"text": "Paris"}}), 422),
        C("text_nested_objects", _j({"text": {"text": {"text": {"text": "Paris"}}}}), 422),
        C("text_infinite_float", b'{"text": 1e999999}', 422),
        C("texts_string", _j({"texts": "Paris"}), 422),
        C("texts_empty", _j({"texts": []}), 422),
        C("texts_numbers", _j({"texts": [1, 2]}), 422),
        C("texts_with_null", _j({"texts": ["ok", None]}), 422),
        C("texts_nested_lists", _j({"texts": [["Paris"]]}), 422),
        C("texts_deeply_nested", _j({"texts": [[[[[[[[[["x"]]]]]]]]]]}), 422),
        C("texts_object", _j({"texts": {"0": "Paris"}}), 422),
        C("words_flat_list", _j({"words": ["Paris", "is", "nice"]}), 422),
        C("words_numbers", _j({"words": [[1, 2]]}), 422),
        C("words_mixed", _j({"words": [["ok"], "Paris"]}), 422),
        C("words_empty", _j({"words": []}), 422),
        C("words_null_word", _j({"words": [["a", None]]}), 422),
        C("words_nested_deeper", _j({"words": [[["Paris"]]]}), 422),
        # ---- too large -> 413
        C("too_many_texts", _j({"texts": ["Paris"] * (max_texts + 1)}), 413),
        C("too_many_word_lists", _j({"words": [["Paris"]] * (max_texts + 1)}), 413),
        C("text_too_long", _j({"text": "a" * (max_chars + 1)}), 413),
        C("one_of_texts_too_long", _j({"texts": ["ok", "Paris " * (max_chars // 6 + 1)]}), 413),
        C("words_too_long", _j({"words": [["word"] * (max_chars // 5 + 2)]}), 413),
        C("many_empty_words", _j({"words": [[""] * (max_chars + 2)]}), 413),
        C("body_too_large", _j({"text": "a" * big}), 413),
        C("body_too_large_whitespace", b"{" + b" " * big + b"}", 413),
        C("body_too_large_chunked", _j({"text": "a" * big}), 413, chunked=True),
        # ---- wrong content type / encoding -> 415
        C("content_type_text_plain", _j({"text": "Paris"}), 415, headers=(("content-type", "text/plain"),)),
        C("content_type_form", b"text=Paris", 415,
          headers=(("content-type", "application/x-www-form-urlencoded"),)),
        C("content_type_multipart", b"--x\r\n\r\nParis\r\n--x--", 415,
          headers=(("content-type", "multipart/form-data; boundary=x"),)),
        C("content_type_missing", _j({"text": "Paris"}), 415, headers=()),
        C("content_type_xml", b"<text>Paris</text>", 415, headers=(("content-type", "application/xml"),)),
        C("charset_latin1", _j({"text": "Paris"}), 415,
          headers=(("content-type", "application/json; charset=latin-1"),)),
        C("content_encoding_gzip", _j({"text": "Paris"}), 415,
          headers=JSON + (("content-encoding", "gzip"),)),
        # ---- wrong method / path
        C("get_ner", None, 405, method="GET"),
        C("put_ner", _j({"text": "Paris"}), 405, method="PUT"),
        C("delete_ner", None, 405, method="DELETE"),
        C("post_healthz", _j({"text": "Paris"}), 405, path="/healthz"),
        C("unknown_path", _j({"text": "Paris"}), 404, path="/v1/nerr"),
        C("unknown_version", _j({"text": "Paris"}), 404, path="/v2/ner"),
        C("path_traversal", None, 404, method="GET", path="/../../etc/passwd"),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


def edge_cases(settings=None) -> list[Case]:
    """Odd but valid input: each must get a 200 with entities whose offsets slice the text."""
    max_texts, max_chars, max_body = _limits(settings or {})
    C = Case
    return [
        C("empty_string", _j({"text": ""}), 200),
        C("whitespace_only", _j({"text": " \t\n\r  "}), 200),
        C("emoji_only", _j({"text": "😀🎉👍🏽"}), 200),
        C("emoji_mixed", _j({"text": "Angela Merkel 😀 visited Paris 🇫🇷 !"}), 200),
        C("escaped_control_chars", _j({"text": "Paris\u0000\u0001\u0007\u001b[31m Berlin"}), 200),
        C("zero_width_chars", _j({"text": "Pa\u200bris \u200d\ufeff Berlin"}), 200),
        C("combining_accents", _j({"text": "Zu\u0308rich and Reykjavi\u0301k"}), 200),
        C("rtl_and_cjk", _j({"text": "مرحبا Paris 東京 Berlin"}), 200),
        C("bom_prefixed_body", b"\xef\xbb\xbf" + _j({"text": "Paris"}), 200),
        C("json_charset_utf8", _j({"text": "Paris"}), 200,
          headers=(("content-type", "application/json; charset=UTF-8"),)),
        C("exact_char_limit", _j({"text": ("Paris " * (max_chars // 6 + 1))[:max_chars]}), 200),
        C("exact_text_count", _j({"texts": ["Paris"] * max_texts}), 200),
        C("one_huge_word", _j({"text": "x" * min(max_chars, 5000)}), 200),
        C("empty_word", _j({"words": [["", "Paris", ""]]}), 200),
        C("word_with_space", _j({"words": [["New York", "is", "big"]]}), 200),
        C("empty_word_list", _j({"words": [[], ["Paris"]]}), 200),
        C("duplicate_key_last_wins", b'{"text": 5, "text": "Paris"}', 200),
        C("chunked_small_body", _j({"text": "Paris"}), 200, chunked=True),
    ]


def corpus(settings=None) -> list[Case]:
    return bad_cases(settings) + edge_cases(settings)


def _request_kwargs(case: Case) -> dict:
    kw = {"headers": dict(case.headers)}
    if case.body is not None:
        if case.chunked:
            data = case.body

            def gen(chunk=64 * 1024):
                for i in range(0, len(data), chunk):
                    yield data[i:i + chunk]

            kw["content"] = gen()
        else:
            kw["content"] = case.body
    return kw


def send(client, case: Case):
    """Send ``case`` with a synchronous httpx-style client (``httpx.Client``, ``TestClient``)."""
    return client.request(case.method, case.path, **_request_kwargs(case))


async def asend(client, case: Case):
    """Send ``case`` with an ``httpx.AsyncClient`` (chunked bodies as an async iterator)."""
    kw = _request_kwargs(case)
    if case.chunked and case.body is not None:
        sync = kw["content"]

        async def agen():
            for c in sync:
                yield c

        kw["content"] = agen()
    return await client.request(case.method, case.path, **kw)


def check_response(case: Case, response) -> str | None:
    """``None`` if ``response`` is what ``case`` expects, else a description of the problem."""
    if response.status_code != case.expect:
        return f"{case.name}: expected {case.expect}, got {response.status_code}: {response.text[:200]!r}"
    try:
        obj = response.json()
    except ValueError:
        return f"{case.name}: response is not JSON: {response.text[:200]!r}"
    if case.bad:
        if not isinstance(obj, dict) or not isinstance(obj.get("error"), str) or not obj["error"]:
            return f"{case.name}: error response without an 'error' message: {obj!r}"
        return None
    results = [obj] if "entities" in obj else obj.get("results")
    if not isinstance(results, list) or not all(isinstance(r.get("entities"), list) for r in results):
        return f"{case.name}: malformed 200 answer: {str(obj)[:200]}"
    for r in results:
        for e in r["entities"]:
            if not (0 <= e["start"] <= e["end"] and 0.0 <= e["score"] <= 1.0 and e["label"]):
                return f"{case.name}: bad entity {e!r}"
    return None
