"""Verifies one received webhook request independently of hookfleet's code.

Reads JSON on stdin: {"style": "standard" | "github", "secret": "...",
"headers": {name: value}, "body_b64": "..."}. Standard style is checked with the
`standardwebhooks` package (PyPI, the reference implementation of the spec);
GitHub style with Python's own hmac, as GitHub's docs show. Exits 0 and prints
"ok" when the request verifies, exits 1 with the reason when it does not.
"""

import base64
import hashlib
import hmac
import json
import sys


def main() -> int:
    req = json.load(sys.stdin)
    body = base64.b64decode(req["body_b64"])
    headers = {k.lower(): v for k, v in req["headers"].items()}
    if req["style"] == "standard":
        from standardwebhooks import Webhook, WebhookVerificationError

        try:
            Webhook(req["secret"]).verify(body, headers)
        except WebhookVerificationError as e:
            print(f"standard: {e}")
            return 1
    else:
        expected = "sha256=" + hmac.new(req["secret"].encode(), body, hashlib.sha256).hexdigest()
        got = headers.get("x-hub-signature-256", "")
        if not hmac.compare_digest(expected, got):
            print("github: signature mismatch")
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
