"""command line: main(argv=None) parses and dispatches; one function per subcommand (check, push,
serve, watch)."""

from __future__ import annotations

import os
import sys
import threading
import time

from .header import __version__, log
from .helpers import (
    _handling_signals, _number, _printable, _seconds, _time_left, describe_error,
)
from .formats import (
    _STATUSES, _nagios_text, format_prometheus, mark_optional, required_checks_passed,
)
from .checks import HealthCheck, format_report
from .checkers import Disk, HTTP, TCP
from .transport import AMQP, AMQPParameters
from .client import _check_name
from .pusher import AMQPPusher
from .statefile import write_atomically
from .watcher import Watcher
from .server import HealthServer, _http_classes
from .fleet import _FleetPages, _Hooks, _live_table, _print_change, fleet_exit_code, format_fleet
from .compat import _loop_interval, load_healthcheck_from_yaml, read_config


_EXAMPLES = """\
examples:
  pihace                      this machine's report as JSON, as `pihace check` prints it
  pihace check --format str --tcp db=localhost:5432 --http web=http://localhost:8080/health
  pihace check --no-system --disk data=/var/lib/app:10 --amqp mq=amqp://guest:guest@localhost/
  PIHACE_AMQP_PASSWORD=secret pihace push --url amqp://app@broker/ --name app \\
      --component-version 1.2 --interval 60

  pihace serve --listen 0.0.0.0:8000 --tcp db=localhost:5432 --optional db

exit codes: 0 Available (push: confirmed), 1 Partially Available, 2 Unavailable (push: not
confirmed), 3 usage or internal error; `pihace check --help` lists the formats and the
Docker mode. Environment: PIHACE_AMQP_URL, PIHACE_AMQP_PASSWORD.
"""
_CHECK_EPILOG = """\
formats (--format):
  json         the report (the default)
  str          a few lines for people
  health+json  application/health+json, draft-inadarei-api-health-check (pass/warn/fail)
  prometheus   Prometheus text format 0.0.4; --textfile PATH writes it to a file for
               node_exporter's textfile collector (atomically, without timestamps)
  nagios       one status line and perfdata, per the Monitoring Plugins guidelines

exit codes (--exit-codes nagios, the default, as Nagios plugins):
  0 Available (OK), 1 Partially Available (WARNING), 2 Unavailable (CRITICAL),
  3 usage or internal error (UNKNOWN)
exit codes with --exit-codes docker (Docker's HEALTHCHECK reserves 2):
  0 every check not named by --optional passed, 1 otherwise (errors included)

--timeout bounds the whole command, every attempt included: each attempt of each check
gets 0.9 x SECONDS / (1 + retries), and a check still running then is reported as timed out.
"""
_CHECK_OPTIONS = {  # --option: (its value, what makes the check pass)
    "tcp": ("NAME=HOST:PORT", "a TCP connection opens ([::1]:5672 for IPv6)"),
    "http": ("NAME=URL", "a GET answers 2xx or 3xx (redirects are not followed)"),
    "disk": ("NAME=PATH:MIN_FREE_PERCENT", "at least that much space is free"),
    "amqp": ("NAME=URL", "an AMQP connection opens"),
}


def _checker(kind, spec, http_timeout):
    """(name, checker) from --tcp/--http/--disk/--amqp NAME=...; ValueError if malformed."""
    name, _, target = spec.partition("=")
    if not name or not target or "://" in name:
        raise ValueError(f"expected {_CHECK_OPTIONS[kind][0]}")
    if kind == "http":
        return name, HTTP(target, http_timeout)
    if kind == "amqp":
        return name, AMQP(_amqp_urls([target], os.environ.get("PIHACE_AMQP_PASSWORD"))[0])
    head, _, tail = target.rpartition(":")
    if not head or not tail.replace(".", "", kind == "disk").isdigit():
        raise ValueError(f"expected {_CHECK_OPTIONS[kind][0]}, a number after the last ':'")
    if kind == "disk":
        return name, Disk(head, float(tail))
    host = head[1:-1] if head.startswith("[") and head.endswith("]") else head
    if ":" in head and host == head:
        raise ValueError("write an IPv6 address in brackets, as in [::1]:5672")
    return name, TCP(host, int(tail))


def _amqp_urls(urls, password):
    """The URLs of --url or --amqp (else PIHACE_AMQP_URL), with `password` (from
    PIHACE_AMQP_PASSWORD) percent-encoded into each that has none."""
    from urllib.parse import quote, urlsplit  # here, not at the top: slow to import

    urls = list(urls or [os.environ.get("PIHACE_AMQP_URL") or ""])
    if not urls[0]:
        raise ValueError("push needs --url or PIHACE_AMQP_URL")
    for index, url in enumerate(urls if password else ()):
        try:
            parts = urlsplit(url)
        except ValueError:  # left as it is: AMQPParameters says what is wrong, masked
            continue
        if parts.password is None:
            user, at, host = parts.netloc.rpartition("@")
            netloc = f"{user if at else 'guest'}:{quote(password, safe='')}@{host}"
            urls[index] = parts._replace(netloc=netloc).geturl()
    return urls


def _mask_user_info(text):
    """`text` with all between its first :// and the last @ after it written ***, so that no
    piece of a URL's user name or password shows, whatever its shape (spaces, @, quotes) and
    however many arguments argparse joined into `text`. The full-width and small commercial
    at count as @: NFKC, which urllib applies to host parts, turns them into one."""
    start = text.find("://") + 3
    end = max(text.rfind(at) for at in "@\uff20\ufe6b")
    return f"{text[:start]}***{text[end:]}" if 3 <= start <= end else text


class _UsageError(SystemExit):
    """A usage error, said on stderr already: exit code 3; `reason` for a Nagios line."""

    def __init__(self, reason):
        super().__init__(3)
        self.reason = reason


def _nagios_unknown(argv, reason):
    """With --format nagios, the UNKNOWN line that Nagios shows (it reads stdout only)."""
    if "--format=nagios" in argv or any(option == "--format" and value == "nagios"
                                        for option, value in zip(argv, argv[1:])):
        print(f"PIHACE UNKNOWN - {_nagios_text(reason)}", flush=True)


def _parser():
    """The pihace command's argument parser: an error is one line and exit code 3."""
    import argparse  # here, not at the top: importing pihace should not pay for it

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line and exit code 3, instead of usage and 2
            reason = _printable(_mask_user_info(message))
            sys.stderr.write(f"pihace: error: {reason}\n")
            raise _UsageError(reason)

    common = Parser(add_help=False)
    common.add_argument("--name", help="component name in the report")
    common.add_argument("--component-version", metavar="VERSION")
    common.add_argument("--system", action="store_true", default=True,
                        help="include system information (default)")
    common.add_argument("--no-system", dest="system", action="store_false")
    for kind, (metavar, passes) in _CHECK_OPTIONS.items():
        common.add_argument(f"--{kind}", action="append", default=[], metavar=metavar,
                            help=f"a check that passes when {passes}; repeatable")
    common.add_argument("--http-timeout", type=float, default=5.0, metavar="SECONDS")
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="of messages on stderr (default: INFO with --interval, else WARNING)")
    parser = Parser(prog="pihace", description="Health checks, printed or pushed to an AMQP "
                    "broker.", epilog=_EXAMPLES, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pihace {__version__}")
    parser.add_argument("--config", metavar="FILE", help="run what a pihace 1.0.0 config file "
                        "(YAML with PyYAML, JSON, or TOML) describes, until SIGTERM or Ctrl-C")
    commands = parser.add_subparsers(dest="command", metavar="{check,push,serve,watch}")
    probe = Parser(add_help=False)
    probe.add_argument("--retries", type=int, metavar="N",
                       help="extra attempts of a check after a failed one (default 2)")
    probe.add_argument("--optional", action="append", default=[], metavar="NAME",
                       help="a check whose failure makes the status Partially Available, "
                       "never Unavailable; repeatable")
    _check_parser(commands, common, probe)
    _push_parser(commands, common)
    _serve_parser(commands, common, probe)
    _watch_parser(commands, Parser)
    return parser


def _check_parser(commands, common, probe):
    """pihace check: print the report once."""
    import argparse  # loaded already by _parser()

    check = commands.add_parser("check", parents=[common, probe], help="print the report "
                                "(default)", epilog=_CHECK_EPILOG,
                                formatter_class=argparse.RawTextHelpFormatter)
    check.add_argument("--format", choices=("json", "str", "health+json", "prometheus", "nagios"),
                       help="of the output (default json; see below)")
    check.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="one deadline for the whole command, all attempts included")
    check.add_argument("--textfile", metavar="PATH", help="write the report in Prometheus text "
                       "format to PATH (printed too only with --format)")
    check.add_argument("--exit-codes", choices=("nagios", "docker"), default="nagios",
                       help="nagios: 0/1/2/3 (default); docker: 0 or 1 only")


def _push_parser(commands, common):
    """pihace push: publish the report, once or every --interval."""
    push = commands.add_parser("push", parents=[common], help="publish the report to a queue")
    push.add_argument("--url", action="append", help="amqp[s]:// URL; repeat for failover")
    push.add_argument("--queue", default="pihace.healthcheck")
    push.add_argument("--exchange", default="")
    push.add_argument("--exchange-type", metavar="TYPE", help="declare --exchange, durable, of "
                      "this type (fanout, topic, direct...), as the watchers do")
    push.add_argument("--routing-key", help="default: the queue name")
    push.add_argument("--maintenance", metavar="DURATION", help="announce maintenance: one "
                      "report saying this device is paused for DURATION (90s, 15m, 2h, 1d), "
                      "then exit; watchers show it paused and run no failure hook meanwhile")
    push.add_argument("--reason", metavar="TEXT", help="with --maintenance: why")
    push.add_argument("--interval", type=float, metavar="SECONDS",
                      help="push every SECONDS until stopped (default: once)")
    push.add_argument("--buffer-size", type=int, default=1000, metavar="REPORTS")
    push.add_argument("--spool", metavar="DIR",
                      help="keep undelivered reports in this folder, so that they survive a "
                      "restart (delivered first, in order, by the next run)")
    push.add_argument("--max-connection-age", type=float, metavar="SECONDS",
                      help="with several --url: replace a connection about this old at the "
                      "next report, at a random node (spreads a fleet again after a node "
                      "returns; default 3600, 0: never)")
    push.add_argument("--no-declare", dest="declare", action="store_false",
                      help="publish without declaring the queue or exchange (it exists already, "
                      "or the user may not configure)")
    push.add_argument("--queue-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="an argument of the declared queue, e.g. x-max-length=1000 or "
                      "x-queue-type=quorum (a whole number is sent as one, true/false as a "
                      "boolean); repeatable")


def _serve_parser(commands, common, probe):
    """pihace serve: health over HTTP."""
    serve = commands.add_parser("serve", parents=[common, probe], help="answer /livez, /readyz, "
                                "/health and /metrics over HTTP")
    serve.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:8000, this machine only; "
                       "0.0.0.0:8000 or [::]:8000 in a container)")
    serve.add_argument("--cache-seconds", type=float, default=1.0, metavar="SECONDS",
                       help="run the checks at most once per SECONDS (default 1)")
    serve.add_argument("--background", action="store_true", default=True,
                       help="run the checks every --cache-seconds in a thread, so that no "
                       "request waits for them (the default)")
    serve.add_argument("--on-request", dest="background", action="store_false",
                       help="run the checks when a request finds the report older than "
                       "--cache-seconds instead (a request may then wait up to 10 s: too long "
                       "for a kubelet's probe)")
    serve.add_argument("--partial-ready", action="store_true",
                       help="/readyz answers 200 when Partially Available too")
    serve.add_argument("--show-details", choices=("never", "loopback", "always"),
                       default="loopback", help="who reads the checks' reasons (hosts, ports, "
                       "errors) in /readyz?verbose and /health: loopback (clients on this "
                       "machine; the default), always, or never")
    serve.add_argument("--max-connections", type=int, default=100, metavar="N",
                       help="open at once (default 100); past that the one idle longest is "
                       "closed, or the new one answered 503")


def _watch_parser(commands, parser_class):
    watch = commands.add_parser("watch", help="follow the fleet's reports: who is up, late, "
                                "silent", description="Consume the reports pushers send and "
                                "keep one state per device.")
    watch.add_argument("--url", action="append", help="amqp[s]:// URL; repeat for failover")
    watch.add_argument("--queue", default="pihace.healthcheck",
                       help="queue to consume (with --exchange: '' for a queue of its own)")
    watch.add_argument("--exchange", default="", help="bind the queue to this exchange, so "
                       "that several watchers each see every report")
    watch.add_argument("--exchange-type", help="declare the exchange (fanout, topic...)")
    watch.add_argument("--binding-key", default="#", metavar="KEY")
    watch.add_argument("--no-declare", dest="declare", action="store_false",
                       help="declare nothing: the queue (and exchange) must exist")
    watch.add_argument("--queue-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="an argument of the queue it declares, e.g. x-queue-type=quorum "
                       "(repeat for more)")
    watch.add_argument("--heartbeat", type=int, metavar="SECONDS",
                       help="AMQP heartbeat: a dead link is noticed within about twice this, "
                       "and the view is marked stale after once this (default 5)")
    _watch_rule_arguments(watch)
    _watch_operator_arguments(watch)
    watch.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _watch_rule_arguments(watch):
    """watch: how devices are judged, and what it shows and serves."""
    watch.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                       help="expected interval of reports that do not say theirs (default 60)")
    watch.add_argument("--grace", type=float, metavar="SECONDS",
                       help="late after interval + grace (default: half the interval, >= 2 s)")
    watch.add_argument("--silent-grace", type=float, metavar="SECONDS",
                       help="silent after interval + this (default: 4 x grace)")
    watch.add_argument("--silent-after", type=float, metavar="SECONDS",
                       help="silent after this many seconds without a report, at the latest")
    watch.add_argument("--once", action="store_true",
                       help="read what is waiting, print the fleet's state and exit")
    watch.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                       help="with --once: read for at most this long (default 5)")
    watch.add_argument("--format", choices=("json", "nagios", "prometheus"), default="json",
                       help="with --once (default json)")
    watch.add_argument("--on-change", metavar="COMMAND", help="run COMMAND (split like a "
                       "shell would, never run by one) on each change, with the report as JSON "
                       "on its standard input and PIHACE_DEVICE, PIHACE_NAME, PIHACE_HOST, "
                       "PIHACE_OLD_STATE, PIHACE_NEW_STATE, PIHACE_FIRST_SEEN in a clean "
                       "environment")
    watch.add_argument("--on-change-states", metavar="STATE,...",
                       help="run --on-change only for changes to these states (e.g. "
                       "down,silent,up)")
    watch.add_argument("--announce-first", action="store_true",
                       help="also announce each device's first report (old state empty)")
    watch.add_argument("--hook-timeout", type=float, default=10.0, metavar="SECONDS")
    watch.add_argument("--listen", metavar="HOST:PORT", help="serve the fleet as Prometheus "
                       "metrics (/metrics) and JSON (/devices), and /livez")
    watch.add_argument("--max-devices", type=int, default=100000, metavar="N",
                       help="keep at most N devices; reports of more are refused and counted "
                       "(default 100000)")
    watch.add_argument("--forget-after", type=float, metavar="SECONDS",
                       help="forget a device silent this long (default: never)")


def _watch_operator_arguments(watch):
    """watch: hooks, standby groups, self-reports, rosters, history, pauses and state."""
    watch.add_argument("--standby-group", metavar="NAME", help="one of several watchers (each "
                       "with its own queue bound to --exchange) of which only the leader runs "
                       "--on-change; leadership comes from the broker")
    watch.add_argument("--report-as", metavar="NAME", help="publish the watcher's own report "
                       "as device NAME (Unavailable while its view is stale), where pushers "
                       "publish: another watcher, or any dead man's switch, sees it die")
    watch.add_argument("--report-interval", type=float, default=30.0, metavar="SECONDS",
                       help="with --report-as (default 30)")
    watch.add_argument("--down-after", type=int, default=1, metavar="N", help="down only after "
                       "N bad reports in a row (degraded until then)")
    watch.add_argument("--up-after", type=int, default=1, metavar="N", help="back up only after "
                       "N good reports in a row")
    watch.add_argument("--max-interval", type=float, default=86400.0, metavar="SECONDS",
                       help="cap what a report says its interval is (default one day)")
    watch.add_argument("--remind", metavar="DURATION", help="run --on-change again every "
                       "DURATION while a device stays down, silent or missing (a reminder)")
    watch.add_argument("--roster", metavar="FILE", help="the devices expected (JSON or YAML: a "
                       "list of ids or mappings); a listed device never seen is missing, one "
                       "not listed unexpected; read again on SIGHUP")
    watch.add_argument("--ignore-unexpected", action="store_true",
                       help="with --roster: refuse (and count) reports of devices not listed")
    watch.add_argument("--history-file", metavar="FILE", help="the flip log: one JSON line per "
                       "change of state (default: the --state file's name + .flips)")
    watch.add_argument("--history", nargs="?", const="", metavar="DEVICE", help="print the "
                       "flip log (of DEVICE only, if given) and exit")
    watch.add_argument("--pause", metavar="DEVICE", help="pause DEVICE (name@host) in every "
                       "running watcher, through the broker, for --for; then exit")
    watch.add_argument("--for", dest="pause_for", metavar="DURATION",
                       help="with --pause: how long (90s, 15m, 2h, 1d)")
    watch.add_argument("--resume", metavar="DEVICE", help="end DEVICE's pause in every running "
                       "watcher; then exit")
    watch.add_argument("--reason", metavar="TEXT", help="with --pause: why (shown with who)")
    watch.add_argument("--state", metavar="FILE", help="remember the fleet in FILE across "
                       "restarts and --once runs (written atomically, mode 0600)")


def _health_check(args):
    """The HealthCheck that the arguments describe; ValueError names a bad option."""
    http_timeout = _seconds("--http-timeout", args.http_timeout)
    hc = HealthCheck(with_system=args.system, name=args.name, version=args.component_version)
    for kind in _CHECK_OPTIONS:
        for spec in getattr(args, kind):
            name = spec.partition("=")[0] if "=" in spec else ""
            shown = f" {name}" if name and "://" not in name else ""  # never a password
            try:
                name, checker = _checker(kind, spec, http_timeout)
                if name in hc.checkers:
                    raise ValueError("a second check with this name")
            except ValueError as exc:
                raise ValueError(f"--{kind}{shown}: {exc}") from None
            hc.register(name, checker, **_attempts(args, checker))
    for name in getattr(args, "optional", ()):
        if name not in hc.checkers:
            raise ValueError(f"--optional {_printable(name)}: no check of that name")
    return hc


def _attempts(args, checker):
    """register()'s timeout and retries for a built-in checker: its own timeout and a second
    more, --retries (default 2); with --timeout, short enough for every attempt to end in time."""
    retries = getattr(args, "retries", None)
    retries = 2 if retries is None else _number("--retries", retries, lambda v: 0 <= v <= 100,
                                                "an integer from 0 to 100", int)
    timeout = getattr(checker, "timeout", 4) + 1
    if args.command == "check" and args.timeout is not None:  # 10% left for the rest
        timeout = min(timeout, _seconds("--timeout", args.timeout) * 0.9 / (1 + retries))
    return {"timeout": timeout, "retries": retries}


def _check(args, hc):
    """pihace check: print the report (or write it to --textfile); the exit code says its
    status."""
    report = mark_optional(hc.check("dict"), args.optional)
    if args.textfile:
        try:
            _write_textfile(args.textfile, format_prometheus(report))
        except OSError as exc:
            reason = f"cannot write {_printable(args.textfile)}: {describe_error(exc)}"
            print(f"pihace: {reason}", file=sys.stderr)
            if args.format == "nagios":
                print(f"PIHACE UNKNOWN - {_nagios_text(reason)}")
            return 1 if args.exit_codes == "docker" else 3
    if args.format or not args.textfile:
        print(format_report(report, args.format or "json"))
    if args.exit_codes == "docker":
        return 0 if required_checks_passed(report) else 1
    return {status: code for code, status in enumerate(_STATUSES)}.get(report["status"], 2)


def _write_textfile(path, text):
    """Write `text` to `path` all or nothing: a reader (node_exporter) sees the old file or the
    new one, never a part. Mode 0644: node_exporter's user must read it."""
    write_atomically(path, text.encode("utf-8"), 0o644)


def _listen_address(text):
    """(host, port) from --listen HOST:PORT ([::]:8000 for IPv6)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen: expected HOST:PORT such as 0.0.0.0:8000 or [::]:8000, "
                         f"got {_printable(repr(text))}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError("--listen: write an IPv6 address in brackets, as in [::1]:8000")
    return host.strip("[]"), int(port)


def _serve(args, hc):
    """pihace serve: answer health requests over HTTP until SIGTERM or Ctrl-C."""
    try:
        host, port = _listen_address(args.listen)
        server = HealthServer(hc, host, port, cache_seconds=args.cache_seconds,
                              background=args.background, partial_ready=args.partial_ready,
                              optional=args.optional, show_details=args.show_details,
                              max_connections=args.max_connections)
    except ValueError as exc:
        reason = str(exc).replace("max_connections", "--max-connections")
        print(f"pihace: error: {_printable(reason)}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"pihace: cannot listen on {_printable(args.listen)}: {describe_error(exc)}",
              file=sys.stderr)
        return 3
    stopped = threading.Event()
    with _handling_signals(lambda *_: stopped.set()), server:
        print(f"pihace: serving {server.url} (livez, readyz, health, metrics)",
              file=sys.stderr, flush=True)
        stopped.wait()
    return 0


def _exit_code(argv, code):
    """`code`, or 1 for any failure with --exit-codes docker (Docker reserves 2)."""
    docker = "--exit-codes=docker" in argv or any(
        option == "--exit-codes" and value == "docker" for option, value in zip(argv, argv[1:]))
    return 1 if docker and code not in (0, 1) else code


def _pusher(args, hc):
    """The AMQPPusher that the push arguments describe; ValueError names a bad option."""
    urls = _amqp_urls(args.url, os.environ.get("PIHACE_AMQP_PASSWORD"))
    for url in urls:  # checked here, by the rules AMQPPusher applies, to name the options
        AMQPParameters(url, "--url")
    for option, name in (("--queue", args.queue), ("--exchange", args.exchange),
                         ("--routing-key", args.routing_key)):
        if name is not None:
            _check_name(option, name)
    if args.interval is not None:
        _seconds("--interval", args.interval)
    _number("--buffer-size", args.buffer_size, lambda v: v >= 1, "an integer >= 1", int)
    if args.max_connection_age:  # 0: never
        _seconds("--max-connection-age", args.max_connection_age)
    if args.maintenance is not None:
        _duration("--maintenance", args.maintenance)
    elif args.reason is not None:
        raise ValueError("--reason goes with --maintenance")
    queue_arguments = dict(map(_queue_argument, args.queue_arg))
    try:
        return AMQPPusher(hc, urls, args.queue, exchange=args.exchange,
                          exchange_type=args.exchange_type, routing_key=args.routing_key,
                          buffer_size=args.buffer_size,
                          declare=args.declare, queue_arguments=queue_arguments,
                          outbox_path=args.spool, **({} if args.max_connection_age is None else
                                                     {"max_connection_age":
                                                      args.max_connection_age}))
    except OSError as exc:  # the spool folder
        raise ValueError(f"--spool: {describe_error(exc)}") from None


def _queue_argument(spec):
    """(key, value) from --queue-arg KEY=VALUE: a whole number as an int, true/false as a bool."""
    key, equals, value = spec.partition("=")
    if not key or not equals:
        raise ValueError(f"--queue-arg: expected KEY=VALUE, got {_printable(repr(spec))}")
    if value.lstrip("-").isdigit():
        return key, int(value)
    return key, {"true": True, "false": False}.get(value, value)


def _duration(option, text):
    """Seconds from "90", "90s", "15m", "2h" or "1d"; ValueError names the option."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1
    if not 0 < seconds < 1e7:
        raise ValueError(f"{option} must be a duration such as 90s, 15m, 2h or 1d, got "
                         f"{_printable(repr(text))}")
    return seconds


def _push(pusher, maintenance=None, reason=None):
    """pihace push: one report (with --maintenance, the announcement of a pause); exit code
    0 when the broker confirmed it, else 2."""
    with pusher:
        result = pusher.pause(maintenance, reason) if maintenance else pusher.push()
        kept = len(pusher.outbox) if pusher.outbox.path else 0
    if result is not True:
        print(f"pihace: not delivered: {_printable(result[1])}", file=sys.stderr)
    if kept:
        print(f"pihace: {kept} report(s) kept in {pusher.outbox.path} for the next run",
              file=sys.stderr)
    return 0 if result is True else 2


def _push_until_signalled(pusher, interval):
    """pihace push --interval: push until SIGTERM or Ctrl-C, then close cleanly."""
    import signal  # here, not at the top: only the command line's push loop needs it

    def stop(*_):  # SIGTERM or a first Ctrl-C: end the round, then close cleanly
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one interrupts
        pusher.stop()

    with _handling_signals(stop):
        pusher.push_forever_in_loop(interval)
    return 0


def _watcher(args):
    """The Watcher that the watch arguments describe; ValueError names a bad option."""
    try:
        urls = _amqp_urls(args.url, os.environ.get("PIHACE_AMQP_PASSWORD"))
    except ValueError:
        raise ValueError("watch needs --url or PIHACE_AMQP_URL") from None
    _seconds("--wait", args.wait)
    _seconds("--hook-timeout", args.hook_timeout)
    _check_watch_options(args, urls)
    queue_arguments = dict(map(_queue_argument, args.queue_arg))
    return Watcher(urls, args.queue, exchange=args.exchange,
                   exchange_type=args.exchange_type, binding_key=args.binding_key,
                   declare=args.declare, queue_arguments=queue_arguments,
                   heartbeat=args.heartbeat, default_interval=args.interval,
                   grace=args.grace, silent_grace=args.silent_grace,
                   silent_limit=args.silent_after, max_devices=args.max_devices,
                   forget_after=args.forget_after, announce_first=args.announce_first,
                   state_path=args.state, standby_group=args.standby_group,
                   history_path=args.history_file, down_after=args.down_after,
                   up_after=args.up_after, max_interval=args.max_interval,
                   remind=args.remind and _duration("--remind", args.remind),
                   ignore_unexpected=args.ignore_unexpected,
                   tick=0.5 if args.once else 1.0)


def _check_watch_options(args, urls):
    """The watch options, checked by the rules Watcher applies, under the options' names."""
    for url in urls:
        AMQPParameters(url, "--url")
    for option, name in (("--queue", args.queue), ("--exchange", args.exchange),
                         ("--binding-key", args.binding_key)):
        _check_name(option, name)
    if not args.queue and not args.exchange:
        raise ValueError("--queue may be empty (a queue of the watcher's own) only with "
                         "--exchange to bind it to")
    if args.standby_group is not None and not args.exchange:
        raise ValueError("--standby-group needs --exchange: each watcher of the group "
                         "consumes a queue of its own bound to it")
    _seconds("--interval", args.interval)
    _seconds("--max-interval", args.max_interval)
    for option, value in (("--grace", args.grace), ("--silent-grace", args.silent_grace),
                          ("--silent-after", args.silent_after),
                          ("--forget-after", args.forget_after)):
        if value is not None:
            _seconds(option, value)
    for option, value in (("--max-devices", args.max_devices), ("--down-after", args.down_after),
                          ("--up-after", args.up_after)):
        _number(option, value, lambda v: v >= 1, "an integer >= 1", int)
    if args.heartbeat is not None:
        _number("--heartbeat", args.heartbeat, lambda v: 0 <= v <= 65535,
                "whole seconds from 0 (off) to 65535", int)


# `python3 pihace.py` runs this file as a script, and CPython keeps a script's syntax tree
# (about 20 MB for these 10,000 lines) until the script ends; an imported module's is freed
# once it is compiled. So a command that runs for days starts again, in the same process
# (exec: same pid, files and signals), as this file imported as the module `pihace`.
_AS_MODULE = ("import importlib.machinery as i, importlib.util as u, sys; p = sys.argv[1]; "
              "s = u.spec_from_loader('pihace', i.SourceFileLoader('pihace', p)); "
              "m = sys.modules['pihace'] = u.module_from_spec(s); "
              "s.loader.exec_module(m); sys.exit(m._main_as_module())")


def _main_as_module():
    """main() of the process _leave_the_syntax_tree started: its argv and sys.path as the
    script had them (`python3 -c _AS_MODULE path args...`)."""
    sys.argv[:2] = sys.argv[1:2]
    if sys.path[:1] == [""]:  # -c puts the current directory first, a script its own
        sys.path[0] = os.path.dirname(sys.argv[0])
    return main()


def _leave_the_syntax_tree():
    """Run as a module instead of a script (see _AS_MODULE), when this file is a script on a
    POSIX system; else, or when exec fails, nothing: the command runs on here."""
    path = globals().get("__file__")
    if __name__ != "__main__" or globals().get("__spec__") is not None or \
            os.name != "posix" or not sys.executable or not path or not os.path.isfile(path):
        return  # imported, `python3 -m pihace` (whose tree is freed), or read from a pipe
    import subprocess  # here, not at the top: slow to import (see the imports)

    try:
        flags = subprocess._args_from_interpreter_flags()  # -I, -X, -W... as they were given
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *flags, "-c", _AS_MODULE,
                                  os.path.abspath(path), *sys.argv[1:]])
    except (OSError, AttributeError, ValueError):
        return


def _give_memory_back():
    """Hand the memory that the C library keeps free back to the system (glibc's
    malloc_trim; elsewhere nothing). Compiling this 10,000-line module leaves about 18 MB of
    it, and reading a fleet's state file more: a long-lived command need not carry them."""
    try:
        import ctypes  # here, not at the top: only the long-lived commands need it

        ctypes.CDLL(None).malloc_trim(0)
    except (ImportError, OSError, AttributeError):  # no ctypes, or not glibc
        pass


def _watch(parser, args):
    """pihace watch: --once, --history, --pause/--resume, or follow the fleet until SIGTERM
    or Ctrl-C (SIGHUP reads the --roster again)."""
    if args.history is not None:
        return _print_history(parser, args)
    if args.pause or args.resume:
        return _send_pause(parser, args)
    try:
        watcher = _watcher(args)
        _give_memory_back()  # what reading the state file left
        if args.roster:
            watcher.set_roster(_read_roster(args.roster))
        states = [state.strip() for state in (args.on_change_states or "").split(",")
                  if state.strip()]
        if states and not args.on_change:
            raise ValueError("--on-change-states needs --on-change")
        hooks = _Hooks(args.on_change, args.hook_timeout, states) if args.on_change else None
        reporter = _self_reporter(watcher, args) if args.report_as and not args.once else None
    except ValueError as exc:
        parser.error(str(exc))
    if args.once:
        return _watch_once(watcher, args.wait, args.format)
    # SIGTERM and Ctrl-C stop the watcher from here on, before its loop starts too (which
    # then ends at once): a stop as soon as it says it serves ends as cleanly as a later one
    with _handling_signals(lambda *_: watcher.stop()):
        try:
            server = _serve_fleet(watcher, args.listen) if args.listen else None
        except ValueError as exc:
            parser.error(str(exc))
        return _follow(watcher, args, hooks, reporter, server)


def _follow(watcher, args, hooks, reporter, server):
    """pihace watch without --once: follow the fleet until SIGTERM or Ctrl-C (the handler
    _watch installed stops the watcher); then stop what serves and reports on it."""
    if hooks is not None:
        watcher.on_change.append(hooks)
    live = sys.stdout.isatty()
    if not live:
        watcher.on_view_change.append(_print_change)
    if args.roster:
        _reload_roster_on_sighup(watcher, args.roster)
    if reporter is not None:
        def report_once_watching():  # its first report says it reads, not "not connected yet"
            while not (watcher.connections_opened and watcher.status["connected"]) and \
                    not reported.wait(0.1):
                pass
            if not reported.is_set():
                reporter.push_forever_in_loop(args.report_interval, stop_event=reported)

        reported = threading.Event()  # set when watch ends
        threading.Thread(target=report_once_watching, daemon=True,
                         name="pihace-watch-report").start()
    try:
        return _watch_until_signalled(watcher, _live_table if live else None)
    finally:
        if reporter is not None:
            reported.set()
            reporter.stop()
            reporter.close()
        if server is not None:
            server.shutdown()
            server.server_close()
        if hooks is not None:
            hooks.close()


def _read_roster(path):
    """The roster file's entries: a list, or a mapping with a "devices" list."""
    try:
        roster = read_config(path)
    except OSError as exc:
        raise ValueError(f"--roster: {describe_error(exc)}") from None
    if isinstance(roster, dict):
        roster = roster.get("devices")
    if not isinstance(roster, list):
        raise ValueError(f"--roster {_printable(path)}: a list of devices, or a mapping with "
                         "a 'devices' list")
    return roster


def _reload_roster_on_sighup(watcher, path):
    import signal  # here, not at the top: only the command line's loops need it

    def reload(*_):
        try:
            watcher.set_roster(_read_roster(path))
        except ValueError as exc:  # the roster in force stays
            log.error("the roster was not read again: %s", _printable(str(exc)))

    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, reload)


def _print_history(parser, args):
    """watch --history [DEVICE]: the flip log, oldest first (the rotated file, then the
    current one)."""
    import json  # here, not at the top: slow to import (see the imports)

    path = args.history_file or (args.state and f"{args.state}.flips")
    if not path:
        parser.error("--history needs --history-file or --state (its flip log)")
    shown = 0
    for name in (f"{path}.1", path):
        try:
            with open(name, encoding="utf-8", errors="replace") as file:
                for line in file:
                    try:
                        flip = json.loads(line)
                        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(flip["time"]))
                        device, old, new = flip["device"], flip["old"], flip["new"]
                    except (ValueError, TypeError, KeyError, OverflowError):
                        continue
                    if args.history and device != args.history:
                        continue
                    reason = f" ({flip['reason']})" if flip.get("reason") else ""
                    print(_printable(f"{when} {device} {old or '-'} -> {new}{reason}"))
                    shown += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            parser.error(f"--history: {describe_error(exc)}")
    return 0 if shown else 1


def _send_pause(parser, args):
    """watch --pause DEVICE --for DURATION [--reason TEXT], or --resume DEVICE: one control
    message where the watchers read (the exchange, or the queue), for every running watcher."""
    import getpass  # here, not at the top: only this command needs it
    import json  # likewise

    try:
        urls = _amqp_urls(args.url, os.environ.get("PIHACE_AMQP_PASSWORD"))
        if args.pause and args.resume:
            raise ValueError("--pause and --resume: one at a time")
        if args.pause and not args.pause_for:
            raise ValueError("--pause needs --for DURATION")
        until = time.time() + _duration("--for", args.pause_for) if args.pause else 0.0
        try:
            by = getpass.getuser()
        except (KeyError, OSError):
            by = "?"
        body = json.dumps({"action": "pause" if args.pause else "resume",
                           "device": args.pause or args.resume, "until": until,
                           "reason": args.reason, "by": by})
        pusher = AMQPPusher(None, urls, args.queue or "pihace.healthcheck",
                            exchange=args.exchange, exchange_type=args.exchange_type,
                            declare=args.declare,
                            queue_arguments=dict(map(_queue_argument, args.queue_arg)))
    except ValueError as exc:
        parser.error(str(exc))
    with pusher:
        result = pusher.publish(body.encode(), kind="pihace.watch.control")
    if result is not True:
        print(f"pihace: not delivered: {_printable(result[1])}", file=sys.stderr)
        return 2
    return 0


def _self_reporter(watcher, args):
    """--report-as NAME: a pusher of the watcher's own report (a device like any other), to
    where the fleet's reports go: Available while it reads its queue, else why not."""
    _seconds("--report-interval", args.report_interval)
    hc = HealthCheck(name=args.report_as, version=__version__)

    def watching():
        status = watcher.status
        return (True, "reading its queue") if status["connected"] else (False, status["reason"])

    hc.register("watching", watching)
    urls = _amqp_urls(args.url, os.environ.get("PIHACE_AMQP_PASSWORD"))
    return AMQPPusher(hc, urls, args.queue or "pihace.healthcheck", exchange=args.exchange,
                      exchange_type=args.exchange_type, declare=args.declare,
                      queue_arguments=dict(map(_queue_argument, args.queue_arg)))


def _watch_once(watcher, wait, output):
    """--once: read what is waiting (at most `wait` seconds), print the fleet, exit 0, 1, 2,
    or 3 when nothing could be read."""
    if not watcher.run(duration=wait, idle=0.5):
        print(f"pihace: could not read the reports: {watcher.last_error or 'timed out'}",
              file=sys.stderr)
        return 3
    devices = watcher.devices
    print(format_fleet(devices, output, watcher.status),
          end="" if output == "prometheus" else "\n")
    return fleet_exit_code(devices)


def _watch_until_signalled(watcher, show=None):
    """Run the watcher in a thread until it stops (the caller's SIGTERM and Ctrl-C handler
    stops it); show(watcher) once a second. 0, or 1 (with one line on stderr) when the
    watcher stopped on an unexpected error."""
    failure = []

    def run():
        try:
            watcher.run()
        except BaseException as exc:  # a bug: the process must not end as if all was well
            failure.append(exc)
            log.exception("the watcher stopped on an unexpected error (a bug)")

    thread = threading.Thread(target=run, name="pihace-watch", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            if show is not None:
                show(watcher)
            thread.join(1.0)
    finally:
        watcher.stop()
        thread.join(10)
        if show is not None:
            sys.stdout.write("\x1b[?25h")  # the cursor back
            sys.stdout.flush()
    if failure:
        print(f"pihace: the watcher stopped on an unexpected error (a bug: please report it): "
              f"{describe_error(failure[0])}", file=sys.stderr)
        return 1
    return 0


def _serve_fleet(watcher, listen):
    """--listen HOST:PORT: /metrics (Prometheus) and /devices (JSON) in a thread."""
    host, port = _listen_address(listen)
    try:
        server = _http_classes()[0]((host, port), _FleetPages(watcher))
    except OSError as exc:
        raise ValueError(f"--listen {_printable(listen)}: {describe_error(exc)}") from None
    threading.Thread(target=server.serve_forever, daemon=True, name="pihace-listen").start()
    log.warning("serving the fleet on http://%s:%d/metrics and /devices",
                listen.rpartition(":")[0], server.server_address[1])
    return server


def _run_config(loaded):
    """pihace --config FILE: start its providers, pushers and storages (each in a thread, as
    pihace 1.0.0 did) and run until SIGTERM or Ctrl-C; then stop the loops cleanly."""
    config, stop, threads, failed = loaded["config"], threading.Event(), [], []

    def start(target, what, *args, **kwargs):
        def run():  # a provider that cannot listen, say: one line, and the run ends
            try:
                target(*args, **kwargs)
            except Exception as exc:
                log.error("%s stopped: %s", what, describe_error(exc))
                failed.append(what)
                stop.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    for entry, provider in zip(config.get("providers") or [], loaded["providers"]):
        start(getattr(provider, "serve", None) or provider.start, f"provider {entry['type']}")
    loops = [(pusher, pusher.push_forever_in_loop, f"pusher {entry['type']}",
              _loop_interval("pushers", entry))
             for entry, pusher in zip(config.get("pushers") or [], loaded["pushers"])]
    loops += [(storage, storage.run_forever_in_loop, f"storage {entry['type']}",
               _loop_interval("storages", entry))
              for entry, storage in zip(config.get("storages") or [], loaded["storages"])]
    for _, loop, what, interval in loops:
        start(loop, what, interval=interval, stop_event=stop)
    try:
        with _handling_signals(lambda *_: stop.set()):
            stop.wait()
    finally:
        for runner, _, _, _ in loops:
            runner.stop()
        for provider in loaded["providers"]:
            for name in ("shutdown", "stop", "close"):
                if callable(getattr(provider, name, None)):
                    threading.Thread(target=getattr(provider, name), daemon=True).start()
                    break
        deadline = time.monotonic() + 10  # the pushers' last chance for their outboxes
        for thread in threads:
            thread.join(_time_left(deadline))
    return 1 if failed else 0


def main(argv=None):
    """The ``pihace`` command: ``check`` (the default), ``push``, ``serve`` or ``watch``;
    returns the exit code."""
    import logging  # here, not at the top: slow to import (see the imports)

    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version") \
            and argv[0].partition("=")[0] != "--config":
        argv.insert(0, "check")
    handler, previous_level = logging.StreamHandler(), log.level
    handler.setFormatter(logging.Formatter("%(asctime)s pihace %(levelname)s: %(message)s"))
    try:
        args = parser.parse_args(argv)
        if args.config is not None:
            log.addHandler(handler)
            log.setLevel("INFO")
            try:
                loaded = load_healthcheck_from_yaml(args.config)
            except (OSError, ValueError) as exc:
                parser.error(f"--config: {describe_error(exc)}")
            return _run_config(loaded)
        looping = args.command == "push" and args.interval is not None
        if looping or args.command == "serve" or args.command == "watch" and not (
                args.once or args.history is not None or args.pause or args.resume):
            _leave_the_syntax_tree()  # a command that runs for days: as a module
            _give_memory_back()  # what compiling this module left
        log.addHandler(handler)
        log.setLevel(args.log_level or ("INFO" if looping else "WARNING"))
        if args.command == "watch":
            return _watch(parser, args)
        try:
            hc = _health_check(args)
            pusher = _pusher(args, hc) if args.command == "push" else None
        except ValueError as exc:
            parser.error(str(exc))
        if args.command == "serve":
            return _serve(args, hc)
        if pusher is None:
            return _check(args, hc)
        if looping:
            return _push_until_signalled(pusher, args.interval)
        return _push(pusher, args.maintenance and _duration("--maintenance", args.maintenance),
                     args.reason)
    except SystemExit as exc:  # from argparse: --help and --version (0), or an error (3)
        code = exc.code if isinstance(exc.code, int) else 3
        if code:
            _nagios_unknown(argv, getattr(exc, "reason", "usage error"))
        return _exit_code(argv, code)
    except KeyboardInterrupt:
        _nagios_unknown(argv, "interrupted")
        return 130
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        print(f"pihace: internal error: {describe_error(exc)}", file=sys.stderr)
        _nagios_unknown(argv, f"internal error: {describe_error(exc)}")
        return _exit_code(argv, 3)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
