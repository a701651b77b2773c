"""The images' HEALTHCHECK: exit 0 when GET /health answers 200 (liveness needs no key), else 1.

Plain standard library, so the check runs in the image without curl. The port is the argument
(the router's, in Compose) or else SEEKD_PORT, the variable `seekd serve` reads its port from.
"""

import os
import sys
import urllib.request

HEALTH_PATH = "/health"

port = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SEEKD_PORT", "8000")
url = f"http://127.0.0.1:{port}{HEALTH_PATH}"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as e:
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
