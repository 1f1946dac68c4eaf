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
# a stand-in for NVIDIA's tegrastats: prints the lines of lines.txt, one per --interval, round and round.
# lines.txt is read again before every line, so a test can change the board's state (heat it, cool it).
import sys, time
args = sys.argv[1:]
with open({argv_file!r}, "w") as f:
    f.write(" ".join(args))
interval = int(args[args.index("--interval") + 1]) / 1000 if "--interval" in args else 1.0
{before}
i = 0
while True:
    with open({lines_file!r}) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    if lines:
        sys.stdout.write(lines[i % len(lines)] + "\\n")
        sys.stdout.flush()
    i += 1
    time.sleep(interval)
"""


def fake_tegrastats(directory: Path, fixture: Path, *, exit_code: int | None = None) -> Path:
    """Write an executable ``tegrastats`` into ``directory``; it records its arguments in ``args.txt``
    and prints the lines of ``directory/lines.txt`` (a copy of ``fixture``; overwrite it to change
    what the board reports, e.g. to cool it down).

    With ``exit_code`` it prints nothing and exits at once (a tegrastats that does not work here).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tegrastats"
    lines_file = directory / "lines.txt"
    lines_file.write_text(fixture.read_text())
    before = f"sys.exit({exit_code})" if exit_code is not None else ""
    path.write_text(
        FAKE_TEGRASTATS.format(
            python=sys.executable, argv_file=str(directory / "args.txt"), lines_file=str(lines_file), before=before
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
