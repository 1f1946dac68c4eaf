"""The real Home Assistant 2026.11 against zoe-edge: how often the house does what was said.

For each model name Home Assistant is configured with (a route through ``auto``, the model itself,
the second model), the unmodified ``ollama`` integration runs one conversation of commands, state
questions and chit-chat in the fixture home of tests/ha/driver.py, and every turn is graded by what
Home Assistant did (tests/ha/scenario.py): the share of commands that changed exactly the right
entity, the share of state questions answered truthfully, loops, errors, and the median turn
latency as Home Assistant measured it (``conversation.async_converse``).

    .venv/bin/python bench/ha_real.py [--models auto:latest,smollm2-135m:latest,zoe-small:latest] [--quick]

Targets (SmolLM2-135M through ``auto``): >= 80% of commands correct, >= 80% of state questions
true, 0 loops, 0 errors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench.report import Report, add_arguments  # noqa: E402
from tests.conftest import smollm_entry, start_daemon, write_registry  # noqa: E402
from tests.ha.scenario import BENCH_CONVERSATION, CONVERSATION, Verdict, grade, run_driver  # noqa: E402
from zoe_edge.registry import ensure_model_file, load_registry  # noqa: E402


def share(verdicts: list[Verdict], kind: str) -> tuple[int, int]:
    of_kind = [v for v in verdicts if v.turn.kind == kind]
    return sum(v.ok for v in of_kind), len(of_kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="auto:latest,smollm2-135m:latest,zoe-small:latest")
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("ha_real", "The real Home Assistant 2026.11: commands, state questions, loops, errors")
    turns = CONVERSATION if args.quick else BENCH_CONVERSATION

    state = Path(os.environ.setdefault("ZOE_STATE_DIR", str(REPO / ".state")))
    shipped = load_registry(REPO / "models.yaml")
    files = {name: ensure_model_file(entry, REPO, state) for name, entry in shipped.models.items()}
    ha_python = subprocess.run(
        [str(REPO / "scripts" / "setup-ha")], capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]

    report.line(f"{len(turns)} turns per conversation; the fixture home of tests/ha/driver.py")
    report.line(
        f"{'HA model name':24} {'commands right':>15} {'states true':>12} {'chat ok':>8} {'loops':>6} "
        f"{'errors':>7} {'median turn':>12}"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "smollm2-135m": smollm_entry(files["smollm2-135m"], n_ctx=4096),
            "gemma3-270m": {**smollm_entry(files["gemma3-270m"], n_ctx=4096), "chat_format": "gemma"},
        }
        registry = write_registry(Path(tmp), models, {"zoe-chat": "smollm2-135m", "zoe-small": "gemma3-270m"})
        data = yaml.safe_load(registry.read_text())
        raw = yaml.safe_load((REPO / "models.yaml").read_text())
        data["routes"] = {name: {"targets": ["smollm2-135m"]} for name in raw["routes"]}  # local only
        data["auto"] = raw["auto"]
        registry.write_text(yaml.safe_dump(data))
        daemon = start_daemon(registry, Path(tmp))
        try:
            for model in args.models.split(","):
                lines = run_driver(ha_python, daemon.url, model, turns, timeout=7200)
                verdicts = grade(turns, lines)
                cmd_ok, cmd_n = share(verdicts, "command")
                q_ok, q_n = share(verdicts, "question")
                chat_ok, chat_n = share(verdicts, "chat")
                loops = sum(v.loop for v in verdicts)
                errors = sum(v.error for v in verdicts)
                median = statistics.median(v.elapsed_s for v in verdicts)
                report.line(
                    f"{model:24} {f'{cmd_ok}/{cmd_n}':>15} {f'{q_ok}/{q_n}':>12} {f'{chat_ok}/{chat_n}':>8} "
                    f"{loops:>6} {errors:>7} {median:>10.1f} s"
                )
                for v in verdicts:
                    if not v.ok:
                        report.line(f"    missed {v.turn.text!r}: {v.why} (said {v.speech!r})")
                results[model] = {
                    "commands": cmd_ok / cmd_n,
                    "states": q_ok / q_n,
                    "loops": loops,
                    "errors": errors,
                    "median_turn_s": median,
                }
        finally:
            daemon.stop()
    report.data = results
    auto = results.get("auto:latest")
    if auto is not None:
        for name, key, target in (
            ("commands right (auto)", "commands", ">= 0.8"),
            ("state questions true (auto)", "states", ">= 0.8"),
            ("loops (auto)", "loops", "<= 0"),
            ("errors (auto)", "errors", "<= 0"),
        ):
            met = report.target(name, target, auto[key])
            report.line(f"{name}: {auto[key]:g} (target {target}) {report.verdict(met)}")
    report.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
