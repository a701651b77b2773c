"""The server's TLS context: TLS 1.3 only unless 1.2 is asked for, and client certificates (mTLS)
required whenever a CA bundle for them is given.

uvicorn builds a context from its own flags but has no minimum-version setting, so `seekd serve`
installs this one on the uvicorn config instead.
"""

from __future__ import annotations

import ssl

from seekd.config import SecurityConfig

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def build_ssl_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """None when TLS is off (no certificate configured)."""
    if not security.ssl_certfile:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[security.ssl_min_version]
    try:
        ctx.load_cert_chain(security.ssl_certfile, security.ssl_keyfile)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(
            f"cannot load the TLS certificate {security.ssl_certfile} / key {security.ssl_keyfile}: {e}"
        ) from e
    if security.ssl_ca_certs:
        try:
            ctx.load_verify_locations(security.ssl_ca_certs)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load the client CA bundle {security.ssl_ca_certs}: {e}") from e
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
