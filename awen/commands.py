"""The commands that talk to a running lab (decision 0014 §6), all through `awen.client.connect`.

``awen submit | jobs | job | results | cancel | pause | resume | devices |
watch | calibrate | status``. Tables go to stdout (plain text when it is not a
terminal), progress to stderr when stderr is a terminal. ``--json`` prints one
JSON document on stdout (``watch``: one per line); an error is one line on
stderr, ``awen: error: ...``, never a traceback, and its exit code says what
kind it was (`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from protocol import AwenError, ErrorCode
from protocol.circuit import CircuitError

EXIT_OK = 0
EXIT_FAILED = 1
"""The job or calibration failed or was cancelled; another error the daemon reported."""
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_REFUSED = 5
EXIT_TIMEOUT = 6
EXIT_INTERRUPTED = 130

TOP_PATTERNS = 8
"""How many of a register's patterns the result summary shows (most frequent first)."""


class UsageError(AwenError):
    """A bad argument or an unreadable file: exit 2."""

    code = "usage"  # type: ignore[assignment]  # not a daemon's code: the command's own


class CommandFailed(AwenError):
    """The command did its work and the outcome was a failure: a job that failed (exit 1), a wait that timed out (6).

    ``document``: what ``--json`` prints besides the error (the partial result, the job).
    """

    def __init__(
        self, message: str, document: dict[str, Any] | None = None, *, exit: int = 1, code: str = "failed"
    ) -> None:
        super().__init__(message)
        self.document = document
        self.exit = exit
        self.code = code  # type: ignore[assignment]  # the command's own code, not a daemon's


def exit_code(exc: BaseException) -> int:
    """The exit code of decision 0014 §6 for what a command raised."""
    from .client import CircuitRefused, DaemonUnreachable, JobNotFound, KeyConflict, WaitTimeout

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, CommandFailed):
        return exc.exit
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, DaemonUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, JobNotFound) or getattr(exc, "code", None) in (ErrorCode.NOT_FOUND, ErrorCode.UNKNOWN_DEVICE):
        return EXIT_NOT_FOUND
    if isinstance(exc, CircuitRefused | KeyConflict | CircuitError):
        return EXIT_REFUSED
    if isinstance(exc, WaitTimeout):
        return EXIT_TIMEOUT
    return EXIT_FAILED


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(getattr(exc, "code", None) or type(exc).__name__)


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command's body, its errors reported in one line (and as ``{"error": ...}`` with ``--json``), exit coded."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every error becomes one line and a code
            return report(args, exc)
        except BaseExceptionGroup as group:  # a KeyboardInterrupt that reached a trio nursery
            return report(args, group)

    return run


def _unwrap(exc: BaseException) -> BaseException:
    """The error inside a trio exception group (the client's `connect` raises `DaemonUnreachable` in one)."""
    from runtime import first_awen_error

    if not isinstance(exc, BaseExceptionGroup):
        return exc
    found = first_awen_error(exc)
    if found is not None:
        return found
    interrupted, _ = exc.split(KeyboardInterrupt)
    if interrupted is not None:
        return KeyboardInterrupt()
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def report(args: argparse.Namespace, exc: BaseException) -> int:
    """Print ``exc`` as the commands do: one line on stderr; with ``--json`` one document on stdout."""
    exc = _unwrap(exc)
    code = exit_code(exc)
    if isinstance(exc, KeyboardInterrupt):
        message = getattr(args, "interrupted", "") or "interrupted"
    elif isinstance(exc, OSError) and not isinstance(exc, AwenError):
        message = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    else:
        message = str(exc) or type(exc).__name__
    if code == EXIT_FAILED and not isinstance(exc, AwenError):
        message = f"{type(exc).__name__}: {message}"  # a bug of ours, said in one line, not a traceback
    message = _one_line(message)
    if getattr(args, "json", False):
        document = getattr(exc, "document", None) or {}
        _print_json({**document, "error": {"code": _error_code(exc), "message": message}})
    print(f"awen: error: {message}", file=sys.stderr, flush=True)
    return code


# --- output ------------------------------------------------------------------------------------


def _print_json(document: Any) -> None:
    print(json.dumps(msgspec.to_builtins(document, enc_hook=_plain), indent=1), flush=True)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(file=stream, width=None if terminal else 160, highlight=False, soft_wrap=not terminal)


def _table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in _NUMERIC else "left")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    return table


_NUMERIC = frozenset({"shots", "count", "fraction", "pid", "uptime", "handled", "failed", "malformed", "frames"})


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while the block runs, if stderr is a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    with _console(stderr=True).status(message):
        yield


def _connect(args: argparse.Namespace) -> Any:
    from .client import connect

    return connect(getattr(args, "connect", None) or getattr(args, "connect_global", None), client="awen-cli")


# --- submit ------------------------------------------------------------------------------------


def _read_circuit(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a circuit is a JSON object, got {type(data).__name__}")
    return data


@command
def submit(args: argparse.Namespace) -> int:
    """Queue a circuit; print its job id. With ``--wait``: follow it to its end and print its results."""
    circuit = _read_circuit(args.circuit)
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout goes with --wait")
    lab = _connect(args)
    job = lab.submit(circuit, shots=args.shots, priority=args.priority, tags=args.tag or (), key=args.key)
    if not job.created:
        _say(f"awen: already submitted as {job.id} ({job.state()})")
    if not args.wait:
        if args.json:
            record = job.record()
            _print_json({"job": job.id, "created": job.created, "state": record.state, "key": record.key})
        else:
            print(job.id, flush=True)
        return EXIT_OK
    if not args.json:
        _say(f"awen: {job.id} submitted, waiting")
    args.interrupted = f"interrupted: job {job.id} goes on (awen cancel {job.id} cancels it)"
    return _wait(args, job)


def _wait(args: argparse.Namespace, job: Any) -> int:
    from .client import JobFailed, WaitTimeout

    stop = _show_progress(job) if sys.stderr.isatty() and not args.json else None
    try:
        result = job.wait(timeout=args.timeout)
    except WaitTimeout:
        message = f"job {job.id} did not end within {args.timeout:g} s; it goes on"
        raise CommandFailed(message, {"job": job.id}, exit=EXIT_TIMEOUT, code=ErrorCode.TIMEOUT) from None
    except JobFailed as exc:
        partial = exc.result()
        if not args.json:
            _print_result(partial)
        raise CommandFailed(str(exc), partial.to_dict(), code=exc.state) from None
    finally:
        if stop is not None:
            stop()
    if args.json:
        _print_json(result.to_dict())
    else:
        _print_result(result)
    return EXIT_OK


def _show_progress(job: Any) -> Callable[[], None]:
    """A progress bar on stderr fed by the job's progress events (in a thread); returns what stops it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"{job.id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_console(stderr=True),
        transient=True,
    )
    task = progress.add_task("shots", total=None)

    def follow() -> None:
        try:
            for done, total in job.progress():
                progress.update(task, completed=done, total=total)
        except Exception:  # noqa: BLE001 - the bar is a convenience: the wait reports what matters
            return

    progress.start()
    threading.Thread(target=follow, name="awen-progress", daemon=True).start()
    return progress.stop


def _print_result(result: Any) -> None:
    console = _console()
    what = f"job {result.job} {result.state}" + (f" ({result.reason})" if result.reason else "")
    console.print(
        f"{what}: {result.shots} shots on {result.device or '-'}, calibration {result.calibration or '-'}, "
        f"plan {result.plan or '-'}" + (", partial" if result.partial else "")
    )
    for name in result.registers:
        patterns = result.patterns(name)
        total = sum(patterns.values()) or 1
        rows = [[p, n, f"{n / total:.4f}"] for p, n in list(patterns.items())[:TOP_PATTERNS]]
        more = len(patterns) - TOP_PATTERNS
        title = f"register {name} (modes {result.modes(name)})" + (f", {more} more patterns" if more > 0 else "")
        console.print(_table(title, ["pattern", "count", "fraction"], rows))
    if result.figures:
        rows = []
        for name, figure in result.figures.items():
            sigma = figure.get("sigma")
            value = figure.get("value")
            shown = f"{value:.6g}" if isinstance(value, int | float) else str(value)
            rows.append([name, figure.get("figure", ""), shown, "-" if sigma is None else f"{sigma:.2g}"])
        console.print(_table("figures", ["name", "figure", "value", "sigma"], rows))


# --- jobs --------------------------------------------------------------------------------------

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """A time as unix seconds, ISO 8601 (local time unless it says), or an age: ``90s``, ``10m``, ``2h``, ``3d``."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    ago = _AGO.match(text.strip())
    if ago:
        return time.time() - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(
            f"--since {text!r}: give unix seconds, an ISO time (2026-05-01T12:00) or an age (2h)"
        ) from None


def _key(key: str | None) -> str:
    if not key:
        return "-"
    return "(auto)" if key.startswith("auto:") else key


@command
def jobs(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since is not None else None
    lab = _connect(args)
    found = lab.jobs(state=args.state or None, since=since, tags=args.tag or (), limit=args.limit)
    if args.json:
        _print_json({"jobs": found})
        return EXIT_OK
    rows = [[j.job, j.state, _when(j.submitted), j.shots, ",".join(j.tags) or "-", _key(j.key)] for j in found]
    _console().print(_table(None, ["job", "state", "submitted", "shots", "tags", "key"], rows))
    return EXIT_OK


@command
def job(args: argparse.Namespace) -> int:
    lab = _connect(args)
    record = lab.job(args.job).record()
    if args.json:
        _print_json(record)
        return EXIT_OK
    console = _console()
    console.print(f"job {record.job}: {record.state}" + (f" ({record.reason})" if record.reason else ""))
    circuit = record.circuit
    console.print(
        f"  {record.shots} shots, priority {record.priority}, device {record.device or '-'}, "
        f"submitted {_when(record.submitted)} by {record.submitter or '-'}"
        + (f", circuit {circuit.name}" if circuit is not None and circuit.name else "")
    )
    console.print(
        f"  plan {record.plan or '-'}, calibration {record.calibration or '-'}, "
        f"{record.frames} frames, key {record.key or '-'}, tags {','.join(record.tags) or '-'}"
    )
    rows = [[_when(t.ts), t.previous or "", t.state, t.reason] for t in record.transitions]
    console.print(_table("transitions", ["when", "from", "to", "reason"], rows))
    return EXIT_OK


@command
def results(args: argparse.Namespace) -> int:
    lab = _connect(args)
    result = lab.result(args.job)
    if args.npz:
        try:
            result.to_npz(args.npz)
        except OSError as exc:
            raise UsageError(f"cannot write {args.npz}: {exc.strerror or exc}") from None
        if not args.json:
            _say(f"awen: wrote {args.npz}")
    if args.json:
        _print_json(result.to_dict())
    else:
        _print_result(result)
    return EXIT_OK


@command
def cancel(args: argparse.Namespace) -> int:
    lab = _connect(args)
    lab.cancel(args.job)
    state = lab.job(args.job).state()
    if args.json:
        _print_json({"job": args.job, "state": state})
    else:
        print(f"{args.job}: cancel asked; {state} now", flush=True)
    return EXIT_OK


def _queue_line(queue: Any) -> str:
    running = f", running {queue.running}" if queue.running else ""
    held = "; ".join(f"{k}: {v}" for k, v in queue.suspended.items())
    return f"{'paused' if queue.paused else 'dispatching'}: {len(queue.jobs)} queued{running}" + (
        f" (suspended: {held})" if held else ""
    )


@command
def pause(args: argparse.Namespace) -> int:
    lab = _connect(args)
    lab.pause(args.reason)
    return _print_queue(args, lab.queue())


@command
def resume(args: argparse.Namespace) -> int:
    lab = _connect(args)
    lab.resume()
    return _print_queue(args, lab.queue())


def _print_queue(args: argparse.Namespace, queue: Any) -> int:
    if args.json:
        _print_json(queue)
    else:
        print(_queue_line(queue), flush=True)
    return EXIT_OK


@command
def devices(args: argparse.Namespace) -> int:
    return _print_devices(args, _connect(args))


@command
def reset_interlock(args: argparse.Namespace) -> int:
    """The operator's reset, once whatever tripped the interlock is gone; the devices after it."""
    lab = _connect(args)
    lab.reset_interlock(args.device)
    return _print_devices(args, lab)


def _print_devices(args: argparse.Namespace, lab: Any) -> int:
    found = lab.devices()
    if args.json:
        _print_json({"devices": found})
        return EXIT_OK
    rows = [[d.name, d.state, d.url, d.identity, d.detail] for d in found]
    _console().print(_table(None, ["device", "state", "url", "identity", "detail"], rows))
    return EXIT_OK


@command
def watch(args: argparse.Namespace) -> int:
    """Events as the lab publishes them, one line each, until Ctrl-C (exit 130)."""
    lab = _connect(args)
    if not args.json:
        where = ", ".join(args.prefixes) or "every event"
        _say(f"awen: watching {where} at {lab.welcome.lab}; Ctrl-C stops")
    try:
        for env in lab.events(*args.prefixes):
            _print_event(args, env)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # the way to stop watching: no error
    return EXIT_OK


def _print_event(args: argparse.Namespace, env: Any) -> None:
    body = msgspec.to_builtins(env.body, enc_hook=_plain)
    if args.json:
        line = {"type": env.type, "from": env.sender, "ts": env.ts, "body": body}
        print(json.dumps(line, separators=(",", ":")), flush=True)
    else:
        fields = json.dumps(body, separators=(",", ":"), default=str)
        stamp = time.strftime("%H:%M:%S", time.localtime(env.ts)) + f".{int(env.ts * 1000) % 1000:03d}"
        print(f"{stamp} {env.sender:<12} {env.type:<26} {fields}", flush=True)


# --- calibrate ---------------------------------------------------------------------------------


@command
def calibrate(args: argparse.Namespace) -> int:
    """Calibrate the running lab's chip now; print the fit per heater (and plot it with ``--plot``)."""
    lab = _connect(args)
    with _spinner("calibrating the chip"):
        done = lab.calibrate(points=args.points)
    stored = lab.calibration(done.version, device=done.device)
    if args.plot:
        plot_calibration(stored, Path(args.plot))
    if args.json:
        fit = {
            "fits": stored.fits,
            "uncertainties": stored.uncertainties,
            "residuals": stored.residuals,
            "sources": stored.data.sources,
            "hom": stored.data.hom,
        }
        _print_json({"version": stored.version, "calibrated": done, **msgspec.to_builtins(fit)})
    else:
        _print_calibration(done, stored)
    if args.plot and not args.json:
        _say(f"awen: wrote {args.plot}")
    return EXIT_OK


def _heater_names(stored: Any) -> list[str]:
    from protocol.mesh import clements_layout

    count = len(stored.fits.phi0)
    modes = len(stored.data.output_scales)
    try:
        layout = clements_layout(modes)
    except Exception:  # noqa: BLE001 - the names are a help; a mesh we cannot describe is numbered
        return [""] * count
    if layout.heater_count != count:
        return [""] * count
    return [layout.describe_heater(h) for h in range(count)]


def _print_calibration(done: Any, stored: Any) -> None:
    console = _console()
    console.print(
        f"calibration version {done.version} of {done.device} (job {done.job}, {done.seconds:.1f} s): "
        f"residual {done.residual_rms:.2e}, reduced chi2 {done.reduced_chi2:.3f}, {done.heaters_fitted} heaters fitted"
    )
    sig_phi0 = list(stored.uncertainties.phi0) or [None] * len(stored.fits.phi0)
    sig_alpha = list(stored.uncertainties.alpha) or [None] * len(stored.fits.alpha)
    rows = []
    for h, what in enumerate(_heater_names(stored)):
        if sig_phi0[h] is not None and sig_phi0[h] < 0:
            rows.append([h, what, "not measurable by photodiodes", "", "", ""])
            continue
        rows.append(
            [
                h,
                what,
                f"{stored.fits.phi0[h]:.5f}",
                _sigma(sig_phi0[h]),
                f"{stored.fits.alpha[h]:.5f}",
                _sigma(sig_alpha[h]),
            ]
        )
    console.print(_table(None, ["heater", "what", "phi0 (rad)", "+-", "alpha (rad/V^2)", "+-"], rows))
    if stored.data.sources:
        console.print(f"single-photon sources (HBT and HOM, job {stored.data.sources_job}):")
        source_rows = [
            [
                f.mode,
                f"{f.efficiency:.4f}",
                f"{f.g2:.4f}",
                _sigma(f.g2_sigma),
                f"{f.indistinguishability:.4f}",
                _sigma(f.indistinguishability_sigma),
            ]
            for f in stored.data.sources
        ]
        headers = ["input", "clicks per pulse", "g2", "+-", "indistinguishability M", "+-"]
        console.print(_table(None, headers, source_rows))
        hom_rows = [
            [f"{h.modes[0]}, {h.modes[1]}", f"{h.visibility:.4f}", _sigma(h.visibility_sigma), h.coincidences]
            for h in stored.data.hom
        ]
        console.print(_table(None, ["inputs", "HOM visibility", "+-", "coincidences"], hom_rows))


def _sigma(value: float | None) -> str:
    return "-" if value is None or value < 0 else f"{value:.1e}"


def plot_calibration(stored: Any, path: Path) -> None:
    """The fitted phi0 and alpha of every heater, with their uncertainties, in two panels (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'awen[plot]'") from None
    phi0 = np.asarray(stored.fits.phi0, dtype=float)
    alpha = np.asarray(stored.fits.alpha, dtype=float)
    heaters = np.arange(len(phi0))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(phi0)), 5.5), sharex=True)
    for ax, values, sigmas, label in (
        (top, phi0, stored.uncertainties.phi0, "phi0 (rad)"),
        (bottom, alpha, stored.uncertainties.alpha, "alpha (rad/V^2)"),
    ):
        sig = np.asarray(sigmas if len(sigmas) == len(values) else [0.0] * len(values), dtype=float)
        seen = sig >= 0
        ax.errorbar(heaters[seen], values[seen], yerr=sig[seen], fmt="o", ms=4, capsize=2, label="fitted")
        if (~seen).any():
            ax.plot(heaters[~seen], values[~seen], "x", color="grey", label="not measurable (kept)")
            ax.legend(fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    bottom.set_xlabel("heater")
    bottom.set_xticks(heaters)
    fig.suptitle(f"calibration version {stored.version} of {stored.device}: fitted phi0 and alpha per heater")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


# --- status ------------------------------------------------------------------------------------


@command
def status(args: argparse.Namespace) -> int:
    """Every actor of the running lab: how it is, or why it did not answer."""
    lab = _connect(args)
    found = lab.status()
    actors = [a for a in found.actors if not args.actors or a.name in args.actors]
    if args.actors and not actors:
        raise UsageError(f"no actor {', '.join(args.actors)} in lab {found.lab}")
    if args.json:
        _print_json({"lab": found.lab, "actors": actors})
    else:
        rows = []
        for a in actors:
            s = a.status
            if s is None:
                rows.append([a.name, "-", "-", "-", "-", "-", "-", f"unreachable: {a.error}"])
                continue
            peers = " ".join(f"{n}:{p.state}" for n, p in s.peers.items() if p.state != "up") or "all up"
            rows.append([a.name, s.kind, s.pid, f"{s.uptime:.1f}s", s.handled, s.failed, s.malformed, peers])
        title = f"lab {found.lab} ({lab.welcome.awen}, pid {lab.welcome.pid})"
        columns = ["actor", "kind", "pid", "uptime", "handled", "failed", "malformed", "peers"]
        _console().print(_table(title, columns, rows))
    return EXIT_OK if all(a.status is not None for a in actors) else EXIT_FAILED
