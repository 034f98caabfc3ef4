"""The ``awen`` command."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import trio

from protocol import AwenError, Codec, ConfigError, ProtocolError, protocol_schema
from protocol.catalog import CATALOG
from protocol.paths import DEFAULT_PORT
from protocol.system import GetStatus, Ping
from runtime import (
    Actor,
    ResolvedSystem,
    SystemConfig,
    configure_logging,
    describe_failure,
    first_awen_error,
    load_system,
    open_system,
)

EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_HTTP = "127.0.0.1:7461"
"""Where ``awen up`` serves HTTP by default (decision 0015 §1)."""
DRAIN_TIMEOUT_S = 30.0
"""How long ``awen up`` waits, on SIGTERM, for the running job to reach a phase boundary (``--drain-timeout``)."""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(verbose=args.verbose)


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import main as run_main

    return run_main(args)


OFFLINE_CALIBRATE_DEFAULTS = {"modes": 8, "seed": 1}


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """The running lab's chip (decision 0014 §6); ``--offline`` (or an offline-only option) starts a lab of its own."""
    offline = (
        args.offline or args.data_dir is not None or args.verbose or args.modes is not None or args.seed is not None
    )
    if not offline:
        from . import commands

        return commands.calibrate(args)
    from .calibrate import main as calibrate_main

    for name, default in OFFLINE_CALIBRATE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return calibrate_main(args)


def _cmd_up(args: argparse.Namespace) -> int:
    """Run a lab until SIGINT or SIGTERM: one per data directory, found by its ``awen.json`` (decision 0014 §2)."""
    from protocol.paths import default_data_dir, is_loopback

    from . import daemon

    for url in args.listen or ():
        if not is_loopback(url):
            print(daemon.refusal(url), file=sys.stderr)
            return EXIT_USAGE
    web = None if args.no_http else args.http
    if web is not None and not is_loopback(f"tcp://{web}"):
        print(f"awen: error: refusing to serve HTTP on {web}: nothing is authenticated; use loopback", file=sys.stderr)
        return EXIT_USAGE
    config: SystemConfig | None = None
    if args.config is not None:
        try:
            config = load_system(args.config)
        except ConfigError as exc:
            print(f"awen: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    configured = daemon.memory_data_dir(config) if config is not None else None
    data_dir = Path(args.data_dir or configured or default_data_dir()).expanduser().absolute()
    try:
        lock = daemon.DaemonLock(data_dir)
        lock.acquire()
    except daemon.DaemonRunning as exc:
        print(f"awen: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"awen: error: cannot lock {data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if config is None:
            config = daemon.default_lab(
                data_dir, seed=args.seed, modes=args.modes, port=args.port, listen=args.listen or (), web=web
            )
        else:
            if args.data_dir:
                config = daemon.with_data_dir(config, data_dir)
            if args.listen or args.port != DEFAULT_PORT:
                config = daemon.with_door_endpoints(
                    config, daemon.client_endpoints(data_dir, port=args.port, listen=args.listen or ())
                )
        endpoints = daemon.door_endpoints(config, data_dir)
        refused = daemon.refused_endpoints(endpoints)
        if refused:
            print(daemon.refusal(refused[0]), file=sys.stderr)
            return EXIT_USAGE
        taken = daemon.ports_in_use(config, endpoints)
        if taken:
            print(
                f"awen: error: {', '.join(taken)} in use (another awen, or another program): stop it, or choose "
                "other ports with --port and --http (or --no-http)",
                file=sys.stderr,
            )
            return EXIT_ERROR
        if args.log_format is not None:
            config = msgspec.structs.replace(config, log_format=args.log_format)
        configure_logging(config.log_level, fmt=config.log_format)
        trio.run(_serve, config, data_dir, daemon.lab_name(config), endpoints, args.drain_timeout)
        return 0
    finally:
        daemon.remove_daemon_file(data_dir)
        lock.release()


async def _serve(
    config: SystemConfig, data_dir: Path, lab: str, endpoints: list[str], drain_timeout: float = DRAIN_TIMEOUT_S
) -> None:
    from . import _notify, daemon

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with open_system(config) as supervisor, trio.open_nursery() as beside:
                reporting = trio.CancelScope()  # readiness on stdout, and to systemd, while it runs (_notify.report)
                await supervisor.wait_started()
                daemon.write_daemon_file(
                    data_dir,
                    daemon.daemon_info(
                        data_dir=data_dir,
                        lab=lab,
                        endpoints=endpoints,
                        system_file=supervisor.system_file,
                        http=daemon.http_url(config),
                    ),
                )
                where = ", ".join(endpoints) or "no client endpoint (the system has no door)"
                print(
                    f"awen: up, pid {os.getpid()}, data {data_dir}, listening on {where}, "
                    f"{_http_part(config)}system file {supervisor.system_file}",  # last: scripts take the last word
                    flush=True,
                )
                beside.start_soon(_notify.report, supervisor, reporting)
                async for signum in signals:
                    daemon.remove_daemon_file(data_dir)
                    reporting.cancel()  # no more READY or WATCHDOG: the lab is stopping
                    await _drain(supervisor, signal.Signals(signum).name, signals, drain_timeout)
                    print(f"awen: {signal.Signals(signum).name}: stopping", flush=True)
                    supervisor.shutdown()
                    break
        finally:
            daemon.remove_daemon_file(data_dir)
    print("awen: stopped", flush=True)


async def _drain(supervisor: Any, name: str, signals: Any, seconds: float) -> None:
    """Drain the lab before it stops (decision 0015 §4): the running job leaves the device at a phase boundary.

    Bounded by ``seconds``; a second signal meanwhile stops at once.
    """
    from . import _notify, daemon

    print(f"awen: {name}: draining (at most {seconds:g} s; signal again to stop at once)", flush=True)
    _notify.notify("STOPPING=1\nSTATUS=draining: the running job leaves the device at its next phase boundary")
    async with trio.open_nursery() as nursery:

        async def again() -> None:
            async for signum in signals:
                print(f"awen: {signal.Signals(signum).name} again: stopping at once", flush=True)
                nursery.cancel_scope.cancel()
                return

        nursery.start_soon(again)
        for line in await daemon.drain(supervisor, seconds):
            print(f"awen: drained: {line}", flush=True)
        nursery.cancel_scope.cancel()


def _http_part(config: SystemConfig) -> str:
    from . import daemon

    url = daemon.http_url(config)
    return "" if url is None else f"http {url}, "


def _cmd_config_check(args: argparse.Namespace) -> int:
    """Every problem of a system file at once; exit 2 if there is one."""
    from .daemon import check_system_file

    report = check_system_file(args.file)
    for warning in report.warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if report.problems:
        return EXIT_USAGE
    print(f"{args.file}: ok ({report.actors} actors)")
    return 0


async def _client(system: ResolvedSystem) -> Actor:
    # A name outside the directory makes a client-only actor: it can ask, not be asked.
    return Actor(f"cli-{os.getpid()}", system.runtime_for())


def _cmd_status(args: argparse.Namespace) -> int:
    if args.system is not None and not args.system.endswith(".json") and not Path(args.system).exists():
        args.actors, args.system = [args.system, *args.actors], None  # `awen status memory`: an actor of the lab
    if args.system is None:
        from . import commands

        return commands.status(args)
    system = ResolvedSystem.load(args.system)
    names = args.actors or list(system.directory)

    async def ask() -> list[dict[str, Any]]:
        client = await _client(system)
        rows: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            for name in names:
                try:
                    with trio.fail_after(args.timeout):
                        status = await client.request(name, GetStatus())
                    rows.append(msgspec.to_builtins(status))
                except (AwenError, trio.TooSlowError) as exc:
                    rows.append({"name": name, "error": str(exc) or f"no answer within {args.timeout:g} s"})
            nursery.cancel_scope.cancel()
        return rows

    rows = trio.run(ask)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'actor':<16}{'kind':<12}{'pid':>8}{'uptime':>10}{'handled':>10}{'failed':>8}{'malformed':>10}  peers")
        for row in rows:
            if "error" in row:
                print(f"{row['name']:<16}unreachable: {row['error']}")
                continue
            peers = " ".join(f"{n}:{p['state']}" for n, p in row["peers"].items())
            print(
                f"{row['name']:<16}{row['kind']:<12}{row['pid']:>8}{row['uptime']:>9.1f}s{row['handled']:>10}"
                f"{row['failed']:>8}{row['malformed']:>10}  {peers}"
            )
    return 0 if all("error" not in row for row in rows) else EXIT_ERROR


def _cmd_ping(args: argparse.Namespace) -> int:
    system = ResolvedSystem.load(args.system)

    async def ping() -> list[float]:
        client = await _client(system)
        times: list[float] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            for _ in range(args.count):
                start = time.perf_counter()
                with trio.fail_after(args.timeout):
                    await client.request(args.actor, Ping())
                times.append(time.perf_counter() - start)
            nursery.cancel_scope.cancel()
        return times

    times = sorted(trio.run(ping))
    p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
    print(
        f"{args.actor}: {len(times)} pings, round trip p50 {statistics.median(times) * 1e6:.0f} us, "
        f"p99 {p99 * 1e6:.0f} us"
    )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(protocol_schema(CATALOG), indent=2))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    """Show what a frame holds and whether awen accepts it: for client writers."""
    try:
        frame = bytes.fromhex("".join(args.hex))
    except ValueError as exc:
        raise AwenError(f"not hexadecimal: {exc}") from exc
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        print("MessagePack:", raw)
    except (msgpack.UnpackException, ValueError) as exc:
        print(f"MessagePack: not valid ({exc})")
    try:
        envelope = Codec(CATALOG).decode(frame)
    except ProtocolError as exc:
        print(f"awen: refused [{exc.code}] {exc}")
        return EXIT_ERROR
    print("awen: accepted", envelope)
    return 0


def _cmd_sim_serve(args: argparse.Namespace) -> int:
    import sim

    try:
        config = sim.load_config(args.device) if args.device else sim.SimConfig()
        faults = [sim.parse_fault(spec) for spec in args.fault]
    except sim.SimConfigError as exc:
        raise ConfigError(str(exc)) from exc
    if faults:
        config = msgspec.structs.replace(config, faults=[*config.faults, *faults])
    configure_logging(args.log_level)
    server = sim.DeviceServer(config, seed=args.seed, record=args.record)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            if args.tcp is not None:
                host, _, port = args.tcp.rpartition(":")
                if not port.isdigit():
                    raise ConfigError(f"--tcp expects HOST:PORT, got {args.tcp!r}")
                bound = await nursery.start(sim.serve_tcp, server, host or "127.0.0.1", int(port))
                print(f"awen sim: {server.banner()} listening on {bound[0]}:{bound[1]}", flush=True)
            else:
                link = Path(args.link) if args.link else None

                def moved(path: str) -> None:
                    print(path, flush=True)

                path = await nursery.start(functools.partial(sim.serve_pty, server, link=link, on_path=moved))
                print(path, flush=True)
                print(f"awen sim: {server.banner()} on {path}" + (f" (link {link})" if link else ""), flush=True)
            if args.control is not None:
                host, _, port = args.control.rpartition(":")
                if not port.isdigit():
                    raise ConfigError(f"--control expects HOST:PORT, got {args.control!r}")
                try:
                    bound = await nursery.start(sim.serve_control, server, host or "127.0.0.1", int(port))
                except ValueError as exc:
                    raise ConfigError(str(exc)) from exc
                print(f"awen sim: control on {bound[0]}:{bound[1]}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)
    return 0


def _open_store(args: argparse.Namespace) -> Any:
    from actors.memory import default_data_dir, open_store

    return open_store(args.data_dir or default_data_dir())


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _cmd_store_jobs(args: argparse.Namespace) -> int:
    from actors.memory import _store as ops

    store = _open_store(args)
    jobs = store.read(ops.query_jobs(states=args.state or (), device=args.device, limit=args.limit))
    if args.json:
        print(msgspec.json.encode(jobs).decode())
        return 0
    print(
        f"{'job':<24} {'state':<12} {'prio':>4} {'device':<10} {'frames':>6} {'results':>7}  {'submitted':<19}  reason"
    )
    for j in jobs:
        print(
            f"{j.job:<24} {j.state:<12} {j.priority:>4} {j.device:<10} {j.frames:>6} {j.results:>7}  "
            f"{_when(j.submitted)}  {j.reason}"
        )
    return 0


def _cmd_store_show(args: argparse.Namespace) -> int:
    from actors.memory import _store as ops

    store = _open_store(args)
    record = store.read(ops.get_job(args.job))
    _, results = store.read(ops.query_results(args.job, values=False))
    if args.json:
        print(msgspec.json.encode({"job": record, "results": results}, enc_hook=repr).decode())
        return 0
    print(f"job {record.job}: {record.state}{f' ({record.reason})' if record.reason else ''}")
    print(f"  device {record.device or '-'}, plan {record.plan or '-'}, calibration {record.calibration or '-'}")
    print(f"  {record.shots} shots, priority {record.priority}, {record.frames} frames, {record.results} results")
    for t in record.transitions:
        print(f"  {_when(t.ts)}  {t.previous or '':>11} -> {t.state:<11} {t.reason}")
    slots: dict[str, int] = {}
    for r in results:
        slots[r.slot] = slots.get(r.slot, 0) + 1
    for slot, count in slots.items():
        first = next(r for r in results if r.slot == slot)
        print(f"  slot {slot}: {first.dtype}{first.shape}, {count} frames")
    return 0


def _cmd_store_export(args: argparse.Namespace) -> int:
    from actors.memory import _store as ops

    store = _open_store(args)
    out = Path(args.out or f"{args.job}.{args.format}")
    size = store.read(lambda conn: ops.export_job(conn, args.job, args.format, out))
    print(f"awen: wrote {out} ({size:,} bytes)")
    return 0


def _cmd_store_events(args: argparse.Namespace) -> int:
    from actors.memory import _store as ops

    store = _open_store(args)
    events = store.read(ops.query_events(prefix=args.prefix, since=None, until=None, after_seq=0, limit=args.limit))
    for e in events:
        print(f"{e.seq:>6} {_when(e.ts)} {e.sender:<10} {e.type:<24} {json.dumps(e.body, default=repr)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awen", description="A runtime for photonic lab hardware.")
    parser.add_argument("--connect", dest="connect_global", metavar="URL", help=CONNECT_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_lab_commands(commands)
    _add_client_commands(commands)
    _add_sim_commands(commands)
    _add_store_commands(commands)
    _add_protocol_commands(commands)
    return parser


Commands = Any
"""What ``add_subparsers`` returns (argparse's type for it is private)."""


def _add_lab_commands(commands: Commands) -> None:
    """demo, run, calibrate, up, status, ping: a lab started, or one running."""
    demo = commands.add_parser("demo", help="start a small system of actor processes and show what they do")
    demo.add_argument("-v", "--verbose", action="store_true", help="also show the runtime's log")
    demo.set_defaults(run=_cmd_demo)

    run = commands.add_parser(
        "run", help="run a circuit on a simulated chip: the whole stack, calibration included, and print the results"
    )
    run.add_argument("circuit", help="the circuit (JSON; see docs/circuits.md and examples/)")
    run.add_argument("--shots", type=int, help="override the circuit's shots")
    run.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    run.add_argument("--data-dir", help="where the store lives (default: $AWEN_DATA_DIR or ./awen-data)")
    run.add_argument("--modes", type=int, default=8, help="modes of the simulated chip (default 8)")
    run.add_argument("--seed", type=int, default=1, help="the simulated chip's seed (default 1)")
    run.add_argument("-v", "--verbose", action="store_true", help="also show the actors' log")
    run.set_defaults(run=_cmd_run)

    _add_calibrate_command(commands)

    up = commands.add_parser(
        "up",
        help="run the lab until SIGINT or SIGTERM: a system file's, or the standard lab on a simulated chip",
    )
    up.add_argument(
        "config", nargs="?", help="the system's TOML file (default: the standard lab on a seeded simulated chip)"
    )
    up.add_argument(
        "--data-dir", help="the data directory (default: the file's memory data_dir, $AWEN_DATA_DIR, or XDG's)"
    )
    up.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"the door's loopback tcp port (default {DEFAULT_PORT})"
    )
    up.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help="listen here instead of tcp://127.0.0.1:PORT (repeatable; loopback tcp and ipc only)",
    )
    up.add_argument("--seed", type=int, default=1, help="without a file: the simulated chip's seed (default 1)")
    up.add_argument("--modes", type=int, default=8, help="without a file: modes of the simulated chip (default 8)")
    up.add_argument(
        "--http",
        default=DEFAULT_HTTP,
        metavar="ADDR",
        help=f"without a file: serve probes, metrics and the lab page on HOST:PORT (default {DEFAULT_HTTP})",
    )
    up.add_argument("--no-http", action="store_true", help="without a file: no web actor")
    up.add_argument("--log-format", choices=["text", "json"], help="every process's log: text, or JSON lines")
    up.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT_S,
        metavar="S",
        help=f"on SIGTERM: wait at most S s for the running job to reach a phase boundary ({DRAIN_TIMEOUT_S:g})",
    )
    up.set_defaults(run=_cmd_up)

    config = commands.add_parser("config", help="system files")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = config_commands.add_parser("check", help="report every problem of a system file at once")
    check.add_argument("file", help="the system's TOML file")
    check.set_defaults(run=_cmd_config_check)

    status = commands.add_parser("status", help="ask a running lab's actors how they are")
    status.add_argument(
        "system",
        nargs="?",
        help="the system file a running `awen up` printed (default: ask the running lab through its door)",
    )
    status.add_argument("actors", nargs="*", help="actor names (default: all)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--timeout", type=float, default=2.0, help="with a system file: seconds to wait for each actor")
    status.add_argument("--connect", metavar="URL", help=CONNECT_HELP)
    status.set_defaults(run=_cmd_status)

    ping = commands.add_parser("ping", help="measure round trips to one actor")
    ping.add_argument("system", help="the system file a running `awen up` printed")
    ping.add_argument("actor")
    ping.add_argument("-n", "--count", type=int, default=100)
    ping.add_argument("--timeout", type=float, default=2.0)
    ping.set_defaults(run=_cmd_ping)


CONNECT_HELP = (
    "the daemon's address (tcp://127.0.0.1:7460, ipc://PATH); default: $AWEN_CONNECT, "
    "the data directory's awen.json, then the default port"
)


def _add_calibrate_command(commands: Commands) -> None:
    """calibrate: the running lab's chip, or (--offline) a simulated one in a lab of its own."""
    cal = commands.add_parser(
        "calibrate",
        help="calibrate the running lab's chip now and print (or plot) the fit per heater",
        description=(
            "Calibrate the chip of the running lab (found as every client finds it, or --connect URL) and print "
            "the fit per heater; --plot draws the fitted phi0 and alpha per heater. With --offline (implied by "
            "--data-dir, --modes, --seed or -v) no daemon is used: a lab on a simulated chip is started for the "
            "calibration alone, and --plot draws its sweep's readings and fitted curves."
        ),
    )
    cal.add_argument("--points", type=int, help="voltages per heater (default: the actor's, 10)")
    cal.add_argument("--plot", metavar="FILE.png", help="plot the fit per heater (needs matplotlib)")
    cal.add_argument("--json", action="store_true", help="print the fits as JSON")
    cal.add_argument("--connect", metavar="URL", help=CONNECT_HELP)
    cal.add_argument("--offline", action="store_true", help="calibrate a simulated chip in a lab of its own")
    cal.add_argument("--data-dir", help="--offline: where the store lives (default ./awen-data)")
    cal.add_argument("--modes", type=int, help="--offline: modes of the simulated chip (default 8)")
    cal.add_argument("--seed", type=int, help="--offline: the simulated chip's seed (default 1)")
    cal.add_argument("-v", "--verbose", action="store_true", help="--offline: also show the actors' log")
    cal.set_defaults(run=_cmd_calibrate)


def _add_client_commands(commands: Commands) -> None:
    """submit, jobs, job, results, cancel, pause, resume, devices, watch: the running lab, through its door."""
    from . import commands as run

    def add(name: str, help: str, fn: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help)
        sub.set_defaults(run=fn)
        sub.add_argument("--connect", metavar="URL", help=CONNECT_HELP)
        sub.add_argument("--json", action="store_true", help="print one JSON document")
        return sub

    submit = add(
        "submit", "queue a circuit on the running lab; print its job id (or, with --wait, its results)", run.submit
    )
    submit.add_argument("circuit", metavar="CIRCUIT.json", help="the circuit (JSON; see docs/circuits.md)")
    submit.add_argument("--shots", type=int, help="override the circuit's shots")
    submit.add_argument("--priority", type=int, help="override the circuit's priority (higher runs first)")
    submit.add_argument("--key", help="a submission key: the same key never makes a second job")
    submit.add_argument("--tag", action="append", metavar="TAG", help="tag the job (repeatable)")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end: exit 0 if it completed, 1 if not")
    submit.add_argument(
        "--timeout", type=float, metavar="S", help="with --wait: stop waiting after S seconds, exit 6 (the job goes on)"
    )
    jobs = add("jobs", "list the lab's jobs, oldest first", run.jobs)
    jobs.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    jobs.add_argument("--tag", action="append", metavar="TAG", help="only jobs with this tag (repeatable: all of them)")
    jobs.add_argument(
        "--since", metavar="TIME", help="only jobs submitted since: unix seconds, ISO time, or an age (2h)"
    )
    jobs.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    job = add("job", "one job's record: its state, transitions, plan and calibration", run.job)
    job.add_argument("job", metavar="JOB")
    results = add("results", "a job's results: counts per register, figures", run.results)
    results.add_argument("job", metavar="JOB")
    results.add_argument(
        "--npz", metavar="FILE", help="also write them to FILE (.npz; awen.client.Result.load reads it)"
    )
    cancel = add("cancel", "cancel a job (a job already ended is left as it is)", run.cancel)
    cancel.add_argument("job", metavar="JOB")
    pause = add("pause", "stop dispatching jobs (the running one finishes)", run.pause)
    pause.add_argument("--reason", default="", help="why (kept with the pause)")
    add("resume", "dispatch jobs again", run.resume)
    add("devices", "the lab's devices and the state of their links", run.devices)
    reset = add(
        "reset-interlock",
        "re-arm a tripped interlock once its cause is gone (the heaters stay at 0 V)",
        run.reset_interlock,
    )
    reset.add_argument("device", nargs="?", help="the device (default: the lab's first)")
    watch = add("watch", "print the lab's events as they come, one line each, until Ctrl-C", run.watch)
    watch.add_argument(
        "prefixes", nargs="*", metavar="PREFIX", help="only event types starting with one (sched., exec.)"
    )


def _add_sim_commands(commands: Commands) -> None:
    """sim serve: the simulated device on its own."""
    simulator = commands.add_parser("sim", help="the Photonica device simulator")
    sim_commands = simulator.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")
    serve = sim_commands.add_parser("serve", help="serve a simulated device on TCP or a pseudo-terminal")
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on a raw TCP port (port 0: any free one)")
    where.add_argument("--pty", action="store_true", help="open a pseudo-terminal and print its path")
    serve.add_argument("--link", metavar="PATH", help="with --pty: keep a symlink to the current terminal here")
    serve.add_argument("--seed", type=int, help="seed of the chip and its noise (default: the device file's, or 0)")
    serve.add_argument("--device", metavar="FILE", help="device description (TOML) overriding the defaults")
    serve.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help=(
            "inject a fault: close|delay|corrupt|error|interlock|stuck[:p=P,nth=N+M,seconds=S,code=C,heater=H,volts=V]"
        ),
    )
    serve.add_argument(
        "--record",
        metavar="FILE",
        help="write every change that reaches the chip to FILE, one JSON line each, as it happens (an audit record)",
    )
    serve.add_argument(
        "--control",
        metavar="HOST:PORT",
        help="also open a control port (loopback only; port 0: any free one) to inject faults and drift",
    )
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_cmd_sim_serve)


def _add_store_commands(commands: Commands) -> None:
    """store jobs|show|export|events: a data directory read directly."""
    store = commands.add_parser("store", help="read the store of a data directory (also while awen runs)")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    jobs = store_commands.add_parser("jobs", help="list jobs in acceptance order")
    jobs.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    jobs.add_argument("--device")
    jobs.add_argument("--limit", type=int, default=1000)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(run=_cmd_store_jobs)
    show = store_commands.add_parser("show", help="one job: its transitions and its results")
    show.add_argument("job")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_cmd_store_show)
    export = store_commands.add_parser("export", help="write a job's results to .npz or .json")
    export.add_argument("job")
    export.add_argument("--format", choices=["npz", "json"], default="npz")
    export.add_argument("--out", help="file to write (default: JOB.FORMAT here)")
    export.set_defaults(run=_cmd_store_export)
    events = store_commands.add_parser("events", help="the event log, oldest first")
    events.add_argument("--prefix", default="", help="only event types starting with this")
    events.add_argument("--limit", type=int, default=1000)
    events.set_defaults(run=_cmd_store_events)
    for sub in (jobs, show, export, events):
        sub.add_argument(
            "--data-dir", help="the memory actor's data_dir (default: $AWEN_DATA_DIR or ~/.local/share/awen)"
        )


def _add_protocol_commands(commands: Commands) -> None:
    """protocol schema|decode."""
    proto = commands.add_parser("protocol", help="the message protocol")
    proto_commands = proto.add_subparsers(dest="protocol_command", required=True, metavar="COMMAND")
    schema = proto_commands.add_parser("schema", help="print the JSON Schema of every message")
    schema.set_defaults(run=_cmd_schema)
    decode = proto_commands.add_parser("decode", help="decode a frame given in hex, and say whether awen accepts it")
    decode.add_argument("hex", nargs="+")
    decode.set_defaults(run=_cmd_decode)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an ExceptionGroup from trio, usually
        error = first_awen_error(exc)
        if error is None:
            raise
        print(f"awen: error: {describe_failure(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
