#!/usr/bin/python3
"""Loopback SMTP sink for the email connector's tests (aiosmtpd, Debian python3-aiosmtpd).

    smtp_sink.py --dir DIR [--user NAME --password SECRET]

Makes a self-signed certificate for 127.0.0.1 and localhost in DIR (cert.pem, key.pem; openssl
req), then listens on two free ports of 127.0.0.1 and prints "TLS_PORT PLAIN_PORT" as the first
line on stdout:
  TLS_PORT    STARTTLS required before anything else, then AUTH (PLAIN or LOGIN) required with
              NAME / SECRET (default calpost / "s3cret pass"); a wrong password gets 535.
  PLAIN_PORT  no TLS, no AUTH (for `starttls = no` on loopback).
Exits on SIGTERM, SIGINT, or when its stdin reaches end of file.

Recipients steer faults: tempfail@... gets 451 4.3.0 at RCPT, permfail@... 550 5.1.1 at RCPT,
and a message for dropdata@... is recorded and then the connection is cut before the reply to
the end of DATA.

Every message is appended to DIR/messages.jsonl as one JSON object, parsed with python's email
package: mail_from, rcpt_tos, tls, auth (the login or null), port, headers ([[name, raw value]]),
subject / from / to / date / message_id (decoded), structure (content types in walk order),
parts (leaf parts: content_type, charset, cte, disposition, filename, description, and content
as text or content_b64), raw (the first 64 KiB, as latin-1), and checks of the raw bytes: crlf_only (no bare CR or LF), max_line
(longest line without CRLF), ascii (7-bit only). Every AUTH and MAIL is appended to
DIR/events.jsonl ({"event": "auth", "login", "ok"} / {"event": "mail", "from"}).
"""

import argparse
import asyncio
import base64
import email
import email.policy
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import logging
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


# aiosmtpd 1.4 logs a warning about its own use of Session.login_data on every AUTH, and a
# traceback for a client that refuses the certificate (a case the tests make on purpose).
logging.getLogger("mail.log").setLevel(logging.CRITICAL)


def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


class Log:
    def __init__(self, d):
        self.lock = threading.Lock()
        self.messages = os.path.join(d, "messages.jsonl")
        self.events = os.path.join(d, "events.jsonl")
        for p in (self.messages, self.events):
            open(p, "w").close()

    def write(self, path, obj):
        with self.lock:
            with open(path, "a") as f:
                f.write(json.dumps(obj) + "\n")


def raw_checks(raw):
    bare = re.search(rb"(?<!\r)\n|\r(?!\n)", raw) is not None
    lines = raw.split(b"\r\n")
    return {
        "crlf_only": not bare,
        "max_line": max((len(l) for l in lines), default=0),
        "ascii": all(b < 128 for b in raw),
    }


def describe(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out = {
        "headers": [[k, v] for k, v in msg.raw_items()],
        "subject": str(msg.get("Subject", "")),
        "from": str(msg.get("From", "")),
        "to": str(msg.get("To", "")),
        "date": str(msg.get("Date", "")),
        "message_id": str(msg.get("Message-ID", "")),
        "structure": [p.get_content_type() for p in msg.walk()],
        "parts": [],
        "raw": raw[:65536].decode("latin-1"),
    }
    for part in msg.walk():
        if part.is_multipart():
            continue
        p = {
            "content_type": part.get_content_type(),
            "charset": part.get_content_charset(),
            "cte": part.get("Content-Transfer-Encoding"),
            "disposition": part.get_content_disposition(),
            "filename": part.get_filename(),
            "description": str(part["Content-Description"]) if part["Content-Description"] else None,
        }
        if part.get_content_maintype() == "text":
            p["content"] = part.get_content()
        else:
            p["content_b64"] = base64.b64encode(part.get_payload(decode=True)).decode()
        out["parts"].append(p)
    out.update(raw_checks(raw))
    return out


class Handler:
    def __init__(self, log, port_name):
        self.log = log
        self.port_name = port_name

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.log.write(self.log.events, {"event": "mail", "from": address, "port": self.port_name})
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local == "tempfail":
            return "451 4.3.0 Mailbox temporarily unavailable"
        if local == "permfail":
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or b""
        rec = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "tls": session.ssl is not None,
            "auth": getattr(session, "sink_login", None),
            "port": self.port_name,
        }
        try:
            rec.update(describe(raw))
        except Exception as e:  # a message python cannot parse is a finding, not a crash
            rec["parse_error"] = repr(e)
        drop = any(r.split("@")[0].lower() == "dropdata" for r in envelope.rcpt_tos)
        rec["dropped"] = drop
        self.log.write(self.log.messages, rec)
        if drop:
            server.transport.abort()
            return "250 never seen by the client"
        return "250 2.0.0 Message accepted for delivery"


def make_authenticator(log, user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        ok = login == user and auth_data.password.decode("utf-8", "replace") == password
        log.write(log.events, {"event": "auth", "login": login, "ok": ok,
                               "mechanism": mechanism})
        if ok:
            session.sink_login = login
        return AuthResult(success=ok, handled=False)
    return authenticate


async def serve(args):
    cert, key = make_cert(args.dir)
    log = Log(args.dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    auth = make_authenticator(log, args.user, args.password)

    def tls_factory():
        return SMTP(Handler(log, "tls"), hostname="sink.test", tls_context=ctx,
                    require_starttls=True, auth_required=True, auth_require_tls=True,
                    authenticator=auth)

    def plain_factory():
        return SMTP(Handler(log, "plain"), hostname="sink.test")

    tls_srv = await loop.create_server(tls_factory, "127.0.0.1", 0)
    plain_srv = await loop.create_server(plain_factory, "127.0.0.1", 0)
    print(tls_srv.sockets[0].getsockname()[1], plain_srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--user", default="calpost")
    ap.add_argument("--password", default="s3cret pass")
    args = ap.parse_args()

    def stop(*_):
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
