"""The API server process must never load torch (or touch CUDA): only the engine process does."""

from __future__ import annotations

import subprocess
import sys


def test_server_modules_do_not_import_torch() -> None:
    modules = "seekd.server.app, seekd.server.images, seekd.cli"
    code = f"import sys, {modules}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
