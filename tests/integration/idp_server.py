#!/usr/bin/env python3
"""A stand-in identity provider for the key-fetch tests (suite jwks): an HTTPS server
with the test CA's certificate that serves files from DIR (the discovery document and
the JWKS), misbehaving as DIR/behaviour.json says, reread on every request:

  {"mode": "ok" | "status" | "garbage" | "huge" | "redirect_http" | "slow",
   "status": 503, "delay": 5, "max_age": 600}

Every request is appended to DIR/requests.log ("GET /path"), so tests count fetches.
Usage: idp_server.py PORT CERT KEY DIR
"""
import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


def behaviour():
    try:
        with open(os.path.join(root, "behaviour.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"mode": "ok"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("idp: " + (fmt % args) + "\n")

    def send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with open(os.path.join(root, "requests.log"), "a") as f:
            f.write("GET %s\n" % self.path)
        b = behaviour()
        mode = b.get("mode", "ok")
        if mode == "slow":
            time.sleep(float(b.get("delay", 5)))
        if mode == "status":
            self.send(int(b.get("status", 503)), b"unavailable\n")
            return
        if mode == "garbage":
            self.send(200, b"<html>this is not JSON</html>\n", [("Content-Type", "text/html")])
            return
        if mode == "huge":
            self.send(200, b'{"keys": [' + b" " * (2 << 20) + b"]}", [("Content-Type", "application/json")])
            return
        if mode == "redirect_http":
            self.send(302, b"", [("Location", "http://127.0.0.1:%d%s" % (port, self.path))])
            return
        path = os.path.normpath(os.path.join(root, "files", self.path.lstrip("/")))
        if not path.startswith(os.path.join(root, "files")) or not os.path.isfile(path):
            self.send(404, b"not found\n")
            return
        with open(path, "rb") as f:
            body = f.read()
        headers = [("Content-Type", "application/json")]
        if "max_age" in b:
            headers.append(("Cache-Control", "public, max-age=%d" % int(b["max_age"])))
        self.send(200, body, headers)


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
