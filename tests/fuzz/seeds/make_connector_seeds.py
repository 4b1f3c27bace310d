#!/usr/bin/env python3
"""Writes the seed inputs of the "connector" fuzz target into seeds/connector/ (see the input
layout at the top of tests/fuzz/fuzz_connector.c). Run it again after changing that layout or the
order of the connectors there; the fuzzer finds its way from any seed, these only save it time."""
import json
import os

# The order of `cases` in fuzz_connector.c when every connector is built.
CONNECTORS = ["mastodon", "x", "linkedin", "facebook", "webhook", "outbox", "bluesky", "telegram",
              "discord", "slack", "matrix", "wordpress", "email"]
# Indexes into `statuses` in fuzz_connector.c.
S = {200: 0, 201: 1, 202: 2, 204: 3, 400: 7, 401: 8, 403: 9, 404: 10, 422: 14, 429: 15, 500: 16,
     503: 18, 250: 20, 421: 21, 535: 23, 550: 24}
SEP = b"\n===\n"

OK_HEADERS = ("Content-Type: application/json\nx-restli-id: urn:li:share:6844785523593134080\n"
              "Location: https://blog.example.org/wp-json/wp/v2/posts/7\n"
              "x-ratelimit-remaining: 299\nx-ratelimit-reset: 2023-11-14T22:15:00.000Z\n")
OK_BODY = {
    "ok": True, "id": "1100", "url": "https://example.social/@fuzz/1100",
    "uri": "at://did:plc:abc123/app.bsky.feed.post/3kabc", "cid": "bafyreiabc",
    "accessJwt": "jwt-a", "refreshJwt": "jwt-r", "did": "did:plc:abc123", "handle": "alice.test",
    "active": True,
    "blob": {"$type": "blob", "ref": {"$link": "bafkreiabc"}, "mimeType": "image/png", "size": 70},
    "value": {"createdAt": "2024-01-02T09:00:00Z", "text": "hi",
              "uploadUrl": "https://api.linkedin.example/upload/1", "image": "urn:li:image:C4E10"},
    "data": {"id": "1720000000000000001", "text": "hi", "username": "fuzz"},
    "media_id_string": "710511363345354753", "processing_info": {"state": "succeeded"},
    "result": {"message_id": 42, "chat": {"id": -100123, "username": "calpost_news"}},
    "event_id": "$ev1:example.org", "content_uri": "mxc://example.org/abc",
    "room_id": "!AbCdEf:example.org", "user_id": "@bot:example.org",
    "link": "https://blog.example.org/?p=7", "slug": "spring-release",
    "capabilities": {"publish_posts": True, "upload_files": True, "manage_categories": True},
    "sub": "782bbtaQ", "channel_id": "555000", "guild_id": "777000", "acct": "fuzz",
    "configuration": {"statuses": {"max_characters": 500, "characters_reserved_per_url": 23}},
}
OK_INT_BODY = {"id": 7, "link": "https://blog.example.org/?p=7", "name": "News", "slug": "news",
               "source_url": "https://blog.example.org/wp-content/uploads/poster.png",
               "ok": True, "result": {"message_id": 43, "chat": {"username": "calpost_news"}}}
PENDING_BODY = {"media_id_string": "710511363345354753", "id": "56", "url": None,
                "processing_info": {"state": "in_progress", "check_after_secs": 5}}
LIMITED = ("Retry-After: 30\nx-ratelimit-remaining: 0\nx-ratelimit-reset: 1700000900\n",
           {"error": "rate limited", "message": "You are being rate limited.", "retry_after": 1.5,
            "global": False, "parameters": {"retry_after": 5}, "errcode": "M_LIMIT_EXCEEDED",
            "retry_after_ms": 2000, "description": "Too Many Requests: retry after 5"})
AUTH_BODY = {"error": {"message": "Error validating access token", "type": "OAuthException",
                       "code": 190, "error_subcode": 463, "fbtrace_id": "AbC"},
             "errcode": "M_UNKNOWN_TOKEN", "soft_logout": False, "code": "invalid_token",
             "message": "Invalid token", "errors": [{"message": "Unauthorized", "code": 89}],
             "description": "Unauthorized"}


def answer(status, body, headers=OK_HEADERS, transport=0):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    return bytes([S[status], transport]) + headers.rstrip("\n").encode() + b"\n\n" + body


def seed(index, flags, flags2, answers, segments=()):
    return bytes([index, flags, flags2]) + SEP.join(list(segments) + answers)


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "connector")
    os.makedirs(out, exist_ok=True)
    for i, name in enumerate(CONNECTORS):
        ok = 250 if name == "email" else 200
        body = "ok" if name == "slack" else OK_BODY
        oks = [answer(ok, body)] * 16
        if name == "wordpress":  # a lookup finds nothing, then everything is created
            oks = [answer(200, "[]"), answer(201, OK_INT_BODY)] * 8
        seeds = {
            "short": seed(i, 0x00, 0x00, oks[:6]),
            "thread-media": seed(i, 0x07, 0x02, oks),
            "mixed": seed(i, 0x07, 0x02, [answer(ok, body), answer(201, OK_INT_BODY)] * 8),
            "two-media-pending": seed(i, 0x0b, 0x00,
                                      [answer(ok, body), answer(202, PENDING_BODY)] * 3 +
                                      [answer(ok, body)] * 10),
            "rate-limited": seed(i, 0x00, 0x00, [answer(429, LIMITED[1], LIMITED[0])]),
            "auth": seed(i, 0x01, 0x00, [answer(401, AUTH_BODY)]),
            "server-error": seed(i, 0x02, 0x00, [answer(ok, body), answer(503, "<html>busy</html>",
                                                                          "Retry-After: 5\n")]),
            "transport": seed(i, 0x06, 0x00, [answer(ok, body), answer(ok, b"", "", 13),
                                              answer(ok, b"", "", 12)]),
            "login": seed(i, 0x80, 0x00,
                          [answer(ok, OK_BODY if name == "wordpress" else body)] * 3),
            "text": seed(i, 0x03, 0x05, oks[:8],
                         [b"Hello @alice@example.social #calpost https://example.org/x?y=1 "
                          b"\xf0\x9f\x8e\x89 <b>&amp;</b> *bold* _it_ [link](https://e.org) "
                          b"\xe6\x98\xa5 " * 12]),
            "retry-progress": seed(i, 0x32, 0x00, oks[:6],
                                   [b"1100 at://did:plc:abc123/app.bsky.feed.post/3kabc "
                                    b"bafyreiabc"]),
        }
        for kind, data in seeds.items():
            with open(os.path.join(out, f"{name}-{kind}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
