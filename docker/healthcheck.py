"""The images' HEALTHCHECK: exit 0 when GET /v2/health/ready answers 200 (ready), 1 otherwise (503 while loading or
draining, or no answer). Standard library only (the images have no curl). Follows the server's environment:
ODETOODE_HTTP_PORT, and HTTPS when ODETOODE_TLS_CERT is set (the certificate is not verified: this is the local
process; with mutual TLS, ODETOODE_TLS_CLIENT_CA, the check presents the server's own pair as its client pair)."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


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
    url = f"{'https' if cert else 'http'}://127.0.0.1:{port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as e:
        print(f"not ready: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
