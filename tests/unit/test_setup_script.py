"""``scripts/setup``'s ``apt_install``: it waits for another package manager's dpkg lock instead of failing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup"


def test_apt_install_waits_for_the_dpkg_lock_and_says_so(tmp_path: Path) -> None:
    function = re.search(r"^apt_install\(\) \{.*?^\}$", SETUP.read_text(), re.MULTILINE | re.DOTALL)
    assert function, "scripts/setup defines apt_install"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    # stand-ins that record their arguments: no package is installed, no root needed
    for name in ("apt-get", "sudo"):
        tool = bin_dir / name
        body = 'exec "$@"' if name == "sudo" else f'echo "$*" >> {log}'
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    script = f"{function.group(0)}\napt_install redis-server\n"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=True)
    calls = log.read_text().splitlines()
    assert calls == [
        "-o DPkg::Lock::Timeout=600 update -qq",
        "-o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends redis-server",
    ]
    assert "waits up to 10 minutes for the dpkg lock" in out.stdout
