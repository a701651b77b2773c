"""Cloud spill-over: which requests may leave the building, and the audit record of each that did.

Never by default: with no external URL nothing spills, and with one only requests the policy marks
non-sensitive do — those of a listed tenant, or (if `allow_header`) those that say so themselves
with `X-Seekd-Data-Class: non-sensitive`. They spill only when no local backend can take them
(all down, open or saturated). Each spilled request is one record in a hash-chained audit log
(`seekd audit verify` reads it), written before the request leaves.
"""

from __future__ import annotations

import time
from pathlib import Path

from seekd.ops.audit import AuditLog
from seekd.router.config import SpillConfig

DATA_CLASS_HEADER = "x-seekd-data-class"
NON_SENSITIVE = "non-sensitive"


class SpillPolicy:
    def __init__(self, config: SpillConfig, audit_dir: Path) -> None:
        self.config = config
        path = Path(config.audit_log).expanduser()
        self.audit = AuditLog(path if path.is_absolute() else audit_dir / path)

    @property
    def enabled(self) -> bool:
        return bool(self.config.url)

    def allows(self, tenant: str, headers: dict[str, str]) -> str | None:
        """Why this request may spill ("tenant" or "header"), or None when it must stay local."""
        if not self.enabled:
            return None
        if tenant in self.config.tenants:
            return "tenant"
        if self.config.allow_header and headers.get(DATA_CLASS_HEADER, "").strip().lower() == NON_SENSITIVE:
            return "header"
        return None

    def record(self, request_id: str, tenant: str, route: str, model: str, because: str, local: str) -> None:
        self.audit.append(
            {
                "time": time.time(),
                "event": "spill_over",
                "request_id": request_id,
                "tenant": tenant,
                "route": route,
                "model": model,
                "endpoint": self.config.url,
                "allowed_by": because,
                "local_state": local,
            }
        )
