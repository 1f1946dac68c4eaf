"""Shared by the telemetry tests: the fixture lines and a fake ``tegrastats`` executable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import Daemon, smollm_entry, start_daemon, write_registry

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NANO = FIXTURES / "orin-nano-8gb-jp62-busy.txt"
AGX = FIXTURES / "agx-orin-64gb-l4t364.txt"
XAVIER = FIXTURES / "xavier-nx-jp512.txt"
THROTTLED = FIXTURES / "orin-nx-16gb-throttled.txt"


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


FAKE_TEGRASTATS = """#!{python}
# a stand-in for NVIDIA's tegrastats: prints the fixture lines, one per --interval, round and round
import sys, time
args = sys.argv[1:]
with open({argv_file!r}, "w") as f:
    f.write(" ".join(args))
interval = int(args[args.index("--interval") + 1]) / 1000 if "--interval" in args else 1.0
lines = [l for l in open({fixture!r}).read().splitlines() if l.strip()]
{before}
i = 0
while True:
    sys.stdout.write(lines[i % len(lines)] + "\\n")
    sys.stdout.flush()
    i += 1
    time.sleep(interval)
"""


def fake_tegrastats(directory: Path, fixture: Path, *, exit_code: int | None = None) -> Path:
    """Write an executable ``tegrastats`` into ``directory``; it records its arguments in ``args.txt``.

    With ``exit_code`` it prints nothing and exits at once (a tegrastats that does not work here).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tegrastats"
    before = f"sys.exit({exit_code})" if exit_code is not None else ""
    path.write_text(
        FAKE_TEGRASTATS.format(
            python=sys.executable, argv_file=str(directory / "args.txt"), fixture=str(fixture), before=before
        )
    )
    path.chmod(0o755)
    return path


def start_board_daemon(tmp: Path, smollm_path: Path, fixture: Path, api_key: str | None = None) -> Daemon:
    """A real daemon serving SmolLM2 on a "board" whose tegrastats prints ``fixture`` every 0.5 s."""
    bin_dir = tmp / "bin"
    fake_tegrastats(bin_dir, fixture)
    registry = write_registry(tmp, {"smollm2-135m": smollm_entry(smollm_path)}, {"zoe-chat": "smollm2-135m"})
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return start_daemon(registry, tmp, "--telemetry-interval", "0.5", env=env, api_key=api_key)
