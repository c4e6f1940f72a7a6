"""The images' HEALTHCHECK: exit 0 when GET /v2/health/ready answers 200 (ready), 1 otherwise (503 while loading or
draining, or no answer). Standard library only (the images have no curl). Follows the server's environment:
ODETOODE_HTTP_PORT; HTTPS when ODETOODE_TLS_CERT is set (the certificate is not verified: this is the local process;
with mutual TLS, ODETOODE_TLS_CLIENT_CA, the check presents the server's own pair as its client pair); and, when health
is closed behind authentication (ODETOODE_AUTH_OPEN_HEALTH=false), a bearer token: the first of ODETOODE_AUTH_TOKENS
(a JSON list, as the server reads it) or of ODETOODE_AUTH_TOKEN_FILE (one per line; blank lines and # comments are
not tokens, as for the server)."""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.request


def bearer_token() -> str | None:
    if os.environ.get("ODETOODE_AUTH_OPEN_HEALTH", "true").strip().lower() not in ("false", "0", "no", "off"):
        return None
    listed = json.loads(os.environ.get("ODETOODE_AUTH_TOKENS", "[]") or "[]")
    if listed:
        return str(listed[0]).strip()
    path = os.environ.get("ODETOODE_AUTH_TOKEN_FILE")
    if path:
        with open(path, "rb") as f:
            for line in f.read().splitlines():
                token = line.strip()
                if token and not token.startswith(b"#"):
                    return token.decode()
    return None


def main() -> int:
    port = os.environ.get("ODETOODE_HTTP_PORT", "8000")
    cert = os.environ.get("ODETOODE_TLS_CERT")
    context = None
    if cert:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if os.environ.get("ODETOODE_TLS_CLIENT_CA") and os.environ.get("ODETOODE_TLS_KEY"):
            context.load_cert_chain(cert, os.environ["ODETOODE_TLS_KEY"])
    request = urllib.request.Request(f"{'https' if cert else 'http'}://127.0.0.1:{port}/v2/health/ready")
    try:
        token = bearer_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return 0 if response.status == 200 else 1
    except (OSError, ValueError) as e:
        print(f"not ready: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
