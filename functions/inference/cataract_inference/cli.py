"""The local runner: the function on a laptop, with no AWS and no Docker.

cataract-screen invoke EVENT.json        replay an API Gateway event through the real handler
cataract-screen serve [--port 8000]      the same app on http://127.0.0.1:8000 (uvicorn)
cataract-screen predict IMAGE [IMAGE…]   screen image files (through the handler, as Lambda would)
cataract-screen make-event IMAGE -o F    write an event for `invoke` or `sam local invoke -e`
cataract-screen draw-eye {normal,cataract} -o F   draw a synthetic eye (a drawing, not a photo)

Exit status: 0 done; 1 invoke's response was a 5xx; 2 a usage error, or an image predict did not screen (any status
but 200); 3 cannot start (the model, or a setting such as a POWERTOOLS_* variable or LOG_LEVEL); 4 serve cannot listen
(the port is in use); 130 interrupted (Ctrl-C; serve, which Ctrl-C stops, exits 0); 141 whatever read the output
stopped reading (`| head`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import ipaddress
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from . import events
from .settings import LAMBDA_SYNC_PAYLOAD_BYTES, ConfigError

EXIT_CANNOT_START = 3  # the model or a setting: the runner cannot serve at all
EXIT_CANNOT_LISTEN = 4  # serve: the address is taken or not this machine's
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader left (`| head`)


@dataclass
class LocalContext:
    """Enough of a Lambda context for the handler and Powertools."""

    function_name: str = "cataract-screening-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 2048
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:cataract-screening-local"
    log_group_name: str = "/aws/lambda/cataract-screening-local"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def _quiet_observability(verbose: bool) -> None:
    # Set before the handler is imported: Powertools reads these when it builds its objects.
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    if not verbose:
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")


def _handler() -> ModuleType:
    """The handler module, imported (the model loaded) after the environment is set.

    A Powertools variable it cannot read is a ConfigError (observability names it), "cannot start" as a bad model is.
    """
    with contextlib.redirect_stdout(sys.stderr):  # the logger binds whatever stdout is when it is built
        return importlib.import_module(".handler", __package__)


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):  # as anyio's task groups wrap what their tasks raise
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


@contextlib.contextmanager
def _interrupts_end_the_runner() -> Iterator[None]:
    """Raise KeyboardInterrupt after the block when Mangum swallowed one inside it.

    Mangum catches every exception the app raises, KeyboardInterrupt included (Ctrl-C while the model runs), logs it
    and answers a plain-text 500, which `predict` and `invoke` would report as the function's answer. The record it
    logs is the interrupt's one trace: noted and dropped here, ahead of observability's filter (which strips the
    exception from it), so that Ctrl-C ends the runner with its one line, as it does anywhere else.
    """
    noted: list[BaseException] = []

    def note(record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_interrupt(exc):
            noted.append(exc)
            return False
        return True

    mangum = logging.getLogger("mangum.http")
    mangum.filters.insert(0, note)
    try:
        yield
    finally:
        mangum.removeFilter(note)
    if noted:
        raise KeyboardInterrupt


def invoke_event(event: dict[str, Any]) -> dict[str, Any]:
    """Run one event through the real Lambda handler, in this process.

    As under ``sam local invoke``, the function's own output (logs, EMF metrics) goes to stderr
    and only the response to stdout: the logger binds whatever stdout is when it is built.
    """
    handler = _handler()  # Loads the model: after the environment is set.
    with contextlib.redirect_stdout(sys.stderr), _interrupts_end_the_runner():
        response: dict[str, Any] = handler.lambda_handler(event, LocalContext())
    return response


def _print_response(response: dict[str, Any], body_only: bool) -> None:
    if body_only:
        body = response.get("body") or ""
        try:
            print(json.dumps(json.loads(body), indent=2))
        except json.JSONDecodeError:
            print(body)
        return
    try:
        shown = {**response, "body": json.loads(response.get("body") or "null")}
    except json.JSONDecodeError:
        shown = response
    print(json.dumps(shown, indent=2))


class UsageError(Exception):
    """A mistake in what was asked of the runner: one line, exit 2."""


# What the runner reads of an event file or an image for make-event: far above anything Lambda accepts (6 MB), far
# below what would exhaust a laptop's memory (a video passed by mistake).
READ_LIMIT = 8 * LAMBDA_SYNC_PAYLOAD_BYTES


def _read(name: str) -> bytes:
    """A file's bytes, or standard input's for ``-``; over ``READ_LIMIT`` bytes, a UsageError, having read no more."""
    data = _head(name, READ_LIMIT + 1)
    if len(data) > READ_LIMIT:
        raise UsageError(
            f"{name} is over {READ_LIMIT:,} bytes; Lambda takes at most {LAMBDA_SYNC_PAYLOAD_BYTES:,} bytes an "
            "invocation"
        )
    return data


def _head(name: str, size: int) -> bytes:
    """At most the first ``size`` bytes of a file, or of standard input for ``-``."""
    if name == "-":
        if sys.stdin is None:  # started with standard input closed (`<&-`)
            raise UsageError("- means standard input, which is closed here; name a file, or pipe one in")
        return sys.stdin.buffer.read(size)
    with open(name, "rb") as fh:
        return fh.read(size)


def _note_if_lambda_would_refuse(what: str, size: int) -> None:
    if size > LAMBDA_SYNC_PAYLOAD_BYTES:
        print(
            f"cataract-screen: note: {what} is {size:,} bytes, over Lambda's {LAMBDA_SYNC_PAYLOAD_BYTES:,}-byte "
            "invocation limit: on AWS it would never reach the function. Downscale the photo (a 1600 px JPEG is "
            "about 200 kB).",
            file=sys.stderr,
        )


def _cmd_invoke(args: argparse.Namespace) -> int:
    data = _read(args.event)
    try:
        event = json.loads(data)  # UTF-8 (with or without a BOM), UTF-16 or UTF-32, as the API itself reads JSON
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{args.event} is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise UsageError(f"{args.event} is not an event: its JSON is nested too deeply to read") from exc
    problem = events.event_problem(event)
    if problem:
        raise UsageError(
            f"{args.event} is not an API Gateway proxy event (REST v1 or HTTP API v2): {problem}; "
            "make one with `cataract-screen make-event IMAGE`"
        )
    _note_if_lambda_would_refuse(args.event, len(data))
    response = invoke_event(event)
    _print_response(response, args.body)
    return 0 if int(response.get("statusCode", 500)) < 500 else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from .settings import get_settings

    if args.images.count("-") > 1:
        # The second read would find standard input exhausted: an empty "image" the user never sent.
        raise UsageError("- (standard input) is named more than once; it can be read only once: name it once")
    worst = 0
    indent = None if args.compact else 2
    # One byte over the body limit is enough for the handler's own 413: a larger file is not held whole.
    limit = get_settings().max_body_bytes
    for name in args.images:
        try:
            data = _head(name, limit + 1)
        except OSError as exc:  # report it and go on: the other files still get screened
            print(json.dumps({"file": name, "error": {"code": "unreadable", "message": str(exc)}}, indent=indent))
            worst = 2
            continue
        if not data:  # the handler would answer 422 about an "image" field that the user never wrote
            what = "standard input" if name == "-" else name
            message = f"{what} is empty (0 bytes): nothing to screen"
            print(json.dumps({"file": name, "error": {"code": "empty", "message": message}}, indent=indent))
            worst = 2
            continue
        response = invoke_event(events.predict_event(data, explain=False))
        status = int(response.get("statusCode", 500))
        print(json.dumps({"file": name, "status": status, **_body_object(response, status)}, indent=indent))
        worst = max(worst, 0 if status == 200 else 2)
    return worst


def _body_object(response: dict[str, Any], status: int) -> dict[str, Any]:
    """The response's JSON body; for one that is not a JSON object (Mangum's plain-text 500), an error saying so."""
    body = response.get("body")
    try:
        parsed = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    shown = body if isinstance(body, str) else repr(body)
    message = f"the handler answered {status} with a body that is not a JSON object: {shown[:80]!r}"
    return {"error": {"code": "unexpected_response", "message": message}}


def _cmd_make_event(args: argparse.Namespace) -> int:
    data = _read(args.image)
    what = "standard input" if args.image == "-" else args.image
    if not data:  # the event's empty "image" would be refused with a 422 about a field the user never wrote
        raise UsageError(f"{what} is empty (0 bytes): nothing to screen")
    # The type the bytes say, not the name: a GIF or a TIFF was labelled image/jpeg.
    from .imaging import sniff_media_type

    media = sniff_media_type(data)
    if media is None:
        print(
            f"cataract-screen: note: {what} does not start as an image the service reads (JPEG, PNG, WebP, BMP, "
            "GIF or TIFF); the event is written, and the service will refuse it",
            file=sys.stderr,
        )
        media = "application/octet-stream"
    event = events.predict_event(data, explain=args.explain, http_api=args.http_api, raw=args.raw, media_type=media)
    text = json.dumps(event, indent=2) + "\n"
    _note_if_lambda_would_refuse("the event", len(text))
    if args.output and args.output != "-":  # `-o -` is standard output, as `-` is standard input to invoke
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({len(text)} bytes)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to ``host:port``, not yet listening: one per address a host name resolves to (``localhost`` is
    often both ::1 and 127.0.0.1, and a client may try either).

    Bound here, before the model loads, so that a port a server listens on fails at once with a plain message
    (uvicorn logs the error and exits 3, the code for a bad model); they listen only once the model is loaded, so
    that a client never waits on a server that cannot answer yet.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, sockaddr[0]) for family, _, _, _, sockaddr in infos))
    # An IPv6 socket takes IPv4 too unless told not to: only beside an IPv4 one of its own (::1 and 127.0.0.1) is it.
    v6_only = any(family == socket.AF_INET for family, _ in addresses)
    bound: list[socket.socket] = []
    unusable: OSError | None = None
    try:
        for family, address in addresses:
            # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY on the connections it accepts only for a socket that
            # says so, and without it every keep-alive answer waited on a delayed ACK (15 ms a request became 75 ms).
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                if os.name != "nt":  # as asyncio and socket.create_server: restart at once after Ctrl-C
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6_only))
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                if exc.errno not in {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}:
                    raise
                unusable = exc  # e.g. ::1 listed for localhost on a machine without IPv6
                continue
            bound.append(sock)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    if not bound:
        raise unusable or OSError(errno.EADDRNOTAVAIL, f"{host} resolves to no address")
    return bound


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        socks = _bind(args.host, args.port)  # before the model loads: a port a server listens on fails at once
    except OSError as exc:
        return _cannot_listen(exc, args)
    with contextlib.ExitStack() as stack:
        for sock in socks:
            stack.enter_context(sock)
        return _serve_on(socks, args)


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # as a URL writes an IPv6 address


def _cannot_listen(exc: OSError, args: argparse.Namespace) -> int:
    if exc.errno in {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None)}:  # Windows reports the latter
        why = f"port {args.port} is in use (another server, or a `serve` still running); stop it or choose --port"
    elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        why = f"{args.host} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 for every interface"
    else:
        why = exc.strerror or str(exc)
    print(f"cataract-screen: cannot listen on {_shown(args.host)}:{args.port}: {why}", file=sys.stderr)
    return EXIT_CANNOT_LISTEN


def _serve_on(socks: list[socket.socket], args: argparse.Namespace) -> int:
    handler = _handler()  # first: host_guard imports the app, which would build the logger on the real stdout
    import uvicorn

    from .host_guard import LoopbackHostGuard
    from .observability import uvicorn_logs_as_ours
    from .serve_protocol import with_deadlines

    app, settings = handler.app, handler.settings
    try:
        for sock in socks:
            sock.listen(2048)  # uvicorn's backlog, which it sets again
    except OSError as exc:  # another `serve` bound the port too while this one loaded (both not yet listening)
        return _cannot_listen(exc, args)
    print(f"cataract-screen: serving on http://{_shown(args.host)}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    if not _is_loopback(args.host):
        print(
            "cataract-screen: warning: reachable from other machines, with no API key (API Gateway checks keys, "
            "the runner does not) and no TLS; for a trusted network only",
            file=sys.stderr,
        )
    served = LoopbackHostGuard(app, settings.disclaimer) if _is_loopback(args.host) else app
    # Powertools prints each EMF flush to stdout, which the runner keeps for results: under -v they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        config = uvicorn.Config(
            served,
            host=args.host,
            port=args.port,
            http=with_deadlines(settings.disclaimer),  # uvicorn puts no deadline on a request's headers
            log_level="warning" if not args.verbose else "info",
            access_log=False,  # it prints client addresses and whole query strings; -v logs screenings and refusals
            limit_concurrency=64,  # beyond it, 503 at once rather than a slow pile-up of open uploads
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,  # Ctrl-C does not wait on a client that stopped mid-upload
            # A keep-alive connection's next request runs in a copy of the last one's context: a refusal made before
            # the app's middleware (a bad Host) logged that request's id and start time as its own.
            reset_contextvars=True,
        )
        uvicorn_logs_as_ours()
        # Ctrl-C is how serve stops: uvicorn re-raises it once shut down, and uvicorn.run swallowed it too.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=socks)
    return 0


def _cmd_draw_eye(args: argparse.Namespace) -> int:
    from .drawing import draw_eye

    draw_eye(args.kind, seed=args.seed).save(args.output)
    print(f"wrote {args.output}: a drawing, not a photo", file=sys.stderr)
    return 0


# What draw-eye writes: the formats the API decodes, by the extension Pillow chooses the format from.
DRAWING_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _drawing_path(text: str) -> str:
    if Path(text).suffix.lower() not in DRAWING_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text!r} needs an image extension, which sets the format: one of {', '.join(DRAWING_SUFFIXES)}"
        )
    return text


def _whole_number(text: str, lowest: int, highest: int, refusal: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = lowest - 1
    if not lowest <= number <= highest:
        raise argparse.ArgumentTypeError(f"{text!r} is not {refusal}")
    return number


def _seed(text: str) -> int:
    return _whole_number(text, 0, sys.maxsize, "a seed: use a whole number, 0 or more")


def _port(text: str) -> int:
    return _whole_number(text, 1, 65535, "a port (1-65535)")


# Settings come from the environment, as on Lambda: say so where a user looks for a --model flag.
MODEL_EPILOG = (
    "The model is functions/inference/model unless MODEL_DIR names another folder (one that `cataract-train export` "
    "or `pull` wrote), or MODEL_S3_URI with MODEL_SHA256 and MODEL_MANIFEST_SHA256 names a published one."
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="cataract-screen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Powertools logs and metrics")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("invoke", epilog=MODEL_EPILOG, help="replay an API Gateway event through the handler")
    p.add_argument("event", help="an event file, or - for standard input")
    p.add_argument("--body", action="store_true", help="print only the response body")
    p.set_defaults(func=_cmd_invoke)

    p = sub.add_parser("serve", epilog=MODEL_EPILOG, help="run the app on 127.0.0.1 with uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("predict", epilog=MODEL_EPILOG, help="screen image files")
    p.add_argument("images", nargs="+", help="image files, or - for standard input")
    p.add_argument("--compact", action="store_true", help="one JSON line per image")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("make-event", help="turn an image into a POST /predict event")
    p.add_argument("image", help="an image file, or - for standard input")
    p.add_argument("-o", "--output", help="the event file to write; standard output when left out or -")
    p.add_argument("--explain", action="store_true", help="ask for a heat map")
    p.add_argument("--http-api", action="store_true", help="an HTTP API (v2) event instead of REST (v1)")
    p.add_argument("--raw", action="store_true", help="send the image as a binary body, not JSON")
    p.set_defaults(func=_cmd_make_event)

    p = sub.add_parser("draw-eye", help="draw a synthetic eye")
    p.add_argument("kind", choices=["normal", "cataract"])
    p.add_argument("-o", "--output", type=_drawing_path, required=True, help="the image file to write")
    p.add_argument("--seed", type=_seed, default=0, help="which drawing: a whole number, 0 or more (default 0)")
    p.set_defaults(func=_cmd_draw_eye)
    return parser


def _stdout_to_devnull() -> None:
    """Point standard output at the null device, so that the interpreter's own flush at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # not a file (a test's capture): nothing to do
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def _writes_results_to_stdout(args: argparse.Namespace) -> bool:
    if args.func in (_cmd_invoke, _cmd_predict):
        return True
    return args.func is _cmd_make_event and args.output in (None, "-")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cataract-screen`` console script."""
    args = build_parser().parse_args(argv)
    if sys.stdout is None and _writes_results_to_stdout(args):  # started with standard output closed (`>&-`)
        print("cataract-screen: standard output is closed, so the results would be lost: redirect it", file=sys.stderr)
        return 2
    _quiet_observability(args.verbose)
    code = _run(args)
    try:
        if sys.stdout is not None:  # None when started with standard output closed (`>&-`)
            sys.stdout.flush()  # here, not at exit, whatever the outcome: a reader that left shows as BrokenPipeError
    except BrokenPipeError:
        _stdout_to_devnull()
        return code or EXIT_BROKEN_PIPE  # an interrupt or an error says more than the reader that left with it
    except OSError as exc:  # a full disk, a file over its size limit: the results did not all get out
        _stdout_to_devnull()
        print(f"cataract-screen: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return code or 2
    return code


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a Ctrl-C: one during an import can surface as another error (an
    extension module's ``ImportError: initialization failed``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _run(args: argparse.Namespace) -> int:
    try:
        return _run_reporting(args)
    except (KeyboardInterrupt, Exception) as exc:
        if not _interrupted(exc):
            raise
    print("cataract-screen: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _run_reporting(args: argparse.Namespace) -> int:
    from .model_source import ModelLoadError

    try:
        return int(args.func(args))
    except (ModelLoadError, ConfigError) as exc:
        if _interrupted(exc):
            raise
        print(f"cataract-screen: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except BrokenPipeError:
        # Whatever read the output stopped reading (`| head`): no error of ours, so no message; the exit status says
        # the output was cut short, as for a command killed by SIGPIPE.
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except (UsageError, OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        if _interrupted(exc):
            raise
        print(f"cataract-screen: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
