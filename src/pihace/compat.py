"""compatibility: pihace 1.0.0's module names point at this one file, with their thin adapters
(providers, pushers, storage, the YAML loader)."""

from __future__ import annotations

import os
import sys
import threading
import time

from .header import __version__, log
from .helpers import _number, _printable, _seconds, _shown, _text, _time_left
from .system import get_system_info
from .checks import HealthCheck
from .checkers import _http_errors, _http_exchange, _http_failure
from .databases import _http_url
from .server import HealthServer


class _Loop:
    """A report every `interval` seconds until stop() (from any thread), a stop_event
    or Ctrl-C, for the adapters below; a failed round is logged, never raised."""

    def _loop(self, step, interval, stop_event, what):
        interval = _seconds("interval", interval)
        stop = self._stop = stop_event or threading.Event()
        log.info("%s every %gs", what, interval)
        next_round = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    step()
                except Exception:  # a bug in one round: logged, and the loop goes on
                    log.exception("%s failed", what)
                next_round += interval * (1 + (time.monotonic() - next_round) // interval)
                stop.wait(_time_left(next_round))
        except KeyboardInterrupt:
            log.info("interrupted: stopping")

    def stop(self):
        """End push_forever_in_loop() / run_forever_in_loop() at once."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


class ElasticSearchPusher(_Loop):
    """pihace 1.0.0's ElasticSearchPusher, over HTTP with the standard library: each
    report is indexed as a document of `index` (POST /index/_doc). A user name and
    password in `es_url` go as HTTP basic authentication and are never shown.
    push() returns True or False, as in 1.0.0; `last_error` says why it failed
    (it is logged too, where 1.0.0 printed a traceback)."""

    def __init__(self, healthcheck, es_url, index="pihace-health", timeout=10):
        if not callable(getattr(healthcheck, "check", None)):
            raise TypeError("healthcheck must be a HealthCheck (or have a check() method), got "
                            f"{type(healthcheck).__name__}")
        if not isinstance(index, str) or not index or index != index.lower() \
                or any(c in index for c in '\\/*?"<>| ,#:'):
            raise ValueError(f"index must be a lowercase Elasticsearch index name, got {index!r}")
        self.safe_url = _http_url(es_url, "es_url")
        self.healthcheck, self.es_url, self.index = healthcheck, es_url, index
        self.timeout, self.last_error = _seconds("timeout", timeout), None

    def __repr__(self):
        return f"<ElasticSearchPusher {self.safe_url} index={self.index!r}>"

    def push(self):
        """Take a report and index it: True when Elasticsearch stored it, else False."""
        import json  # here, not at the top: slow to import (see the imports)
        from urllib.parse import quote

        report = self.healthcheck.check(output="dict")
        body = json.dumps(report, default=str).encode("utf-8")  # a name that is a Path, say
        try:
            status, phrase, _, _ = _http_exchange(
                self.es_url, f"/{quote(self.index, safe='')}/_doc", method="POST",
                headers={"Content-Type": "application/json"}, body=body, timeout=self.timeout,
                limit=65536)
            self.last_error = None if 200 <= status < 300 else \
                f"Elasticsearch answered HTTP {status} {phrase}".rstrip() + f" ({self.safe_url})"
        except _http_errors() as exc:
            self.last_error = f"{_http_failure(exc)} ({self.safe_url})"
        if self.last_error is None:
            return True
        log.warning("cannot index the report: %s", self.last_error)
        return False

    def push_forever_in_loop(self, interval=60, stop_event=None):
        """push() every `interval` seconds until stop(), stop_event or Ctrl-C."""
        self._loop(self.push, interval, stop_event,
                   f"indexing a report in {self.safe_url}/{self.index}")


class MongoStorage(_Loop):
    """pihace 1.0.0's MongoStorage: each report, with a `logged_at` date, is inserted in
    `collection` of `database`. It needs pymongo (pip install pymongo): inserting
    documents is more of MongoDB's protocol than pihace speaks. A server that accepts
    but does not answer fails a save after `timeout` seconds (pymongo's connectTimeoutMS
    and socketTimeoutMS, unless the dsn sets them; pymongo's own default waits forever)."""

    def __init__(self, healthcheck, dsn, database="pihace", collection="health_logs",
                 timeout=10):
        try:
            import pymongo  # noqa: the driver pihace 1.0.0 used; only this storage needs it
        except ImportError:
            raise ModuleNotFoundError("MongoStorage needs pymongo, which is not installed: "
                                      "pip install pymongo", name="pymongo") from None
        from urllib.parse import parse_qs, urlsplit  # here, not at the top: slow to import

        milliseconds = int(_seconds("timeout", timeout) * 1000)
        self.healthcheck, self.dsn = healthcheck, dsn
        self.database, self.collection = database, collection
        self._driver_error = pymongo.errors.PyMongoError  # what save() turns into False
        try:
            given = {key.lower() for key in parse_qs(urlsplit(dsn).query)}
        except (TypeError, ValueError, AttributeError):
            given = set()  # pymongo says what is wrong with the dsn
        options = {name: milliseconds for name in ("connectTimeoutMS", "socketTimeoutMS")
                   if name.lower() not in given}
        try:
            self.client = pymongo.MongoClient(dsn, serverSelectionTimeoutMS=2000, **options)
            self.db = self.client[database]
            self.col = self.db[collection]
        except pymongo.errors.PyMongoError as exc:
            raise RuntimeError(f"Failed to connect to MongoDB: {_text(exc)}") from None

    def save(self):
        """Take a report and insert it: True when MongoDB stored it, else False (logged)."""
        import datetime  # here, not at the top: only this storage needs it

        report = self.healthcheck.check(output="dict")
        report["logged_at"] = datetime.datetime.now(datetime.timezone.utc)
        try:
            self.col.insert_one(report)
            return True
        except self._driver_error as exc:
            log.warning("cannot store the report in MongoDB: %s", _printable(_text(exc)))
            return False

    def run_forever_in_loop(self, interval=60, stop_event=None):
        """save() every `interval` seconds until stop(), stop_event or Ctrl-C."""
        self._loop(self.save, interval, stop_event,
                   f"storing a report in MongoDB {self.database}.{self.collection}")


def _system_checker():
    """The "system" plugin of a config file: passes when this machine's figures can be read."""
    figures = get_system_info()
    read = {key: value for key, value in figures.items() if value is not None}
    return bool(read), ", ".join(f"{key} {value}" for key, value in read.items()
                                 if key in ("cpu_usage", "memory_usage", "disk_usage"))


_CONFIG_TYPES = {  # section: {type: the name of what makes it, looked up when a config is read}
    "plugins": {"http": "HTTP", "influxdb": "InfluxDB", "mongodb": "MongoDB", "mysql": "MySQL",
                "elasticsearch": "ElasticSearch", "system": "_system_checker"},
    "providers": {"web_provider": "WebProvider", "prometheus_provider": "PrometheusProvider"},
    "pushers": {"elasticsearch_pusher": "ElasticSearchPusher", "amqp_pusher": "AMQPPusher"},
    "storages": {"mongodb_storage": "MongoStorage"},
}


# what a config file may hold: bytes, values (a YAML alias counted each time it is used:
# an alias bomb expands to billions), and depth
_CONFIG_LIMITS = {"bytes": 1 << 20, "values": 100_000, "depth": 64}


def read_config(path):
    """A config file as a dict: YAML (.yml, .yaml) with PyYAML when it is installed, JSON,
    or TOML (.toml, Python 3.11+). A YAML file without PyYAML is read as JSON when it is
    JSON (JSON is YAML too); otherwise the error says what to do. A file larger than
    _CONFIG_LIMITS allow is a ValueError, before it can hang or exhaust memory."""
    config = _parse_config(path)
    problem = _config_too_large(config)
    if problem:
        raise ValueError(f"{os.fspath(path)}: {problem}")
    return config


def _config_too_large(config):
    """What makes `config` larger than _CONFIG_LIMITS allow, or None. Walks it without
    recursion, counting a value shared by YAML aliases each time it is reached, and
    stops at the limit: a self-referencing or exponential alias structure costs no more."""
    values, limit, depth_limit = 0, _CONFIG_LIMITS["values"], _CONFIG_LIMITS["depth"]
    stack = [(config, 1)]
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > limit:
            return (f"too large: more than {limit} values (a YAML alias counts each time it "
                    "is used)")
        if isinstance(value, dict):
            children = [part for item in value.items() for part in item]
        elif isinstance(value, (list, tuple, set)):
            children = value
        else:
            continue
        if depth >= depth_limit and children:
            return "nested too deep"
        stack.extend((child, depth + 1) for child in children)
    return None


def _parse_config(path):
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    with open(path, "rb") as file:
        data = file.read(_CONFIG_LIMITS["bytes"] + 1)
    if len(data) > _CONFIG_LIMITS["bytes"]:
        raise ValueError(f"{path}: too large: more than {_CONFIG_LIMITS['bytes']} bytes")
    if suffix == ".toml":
        try:
            import tomllib  # novermin: Python 3.11+; older ones get the error below
        except ImportError:
            raise ValueError(f"{path}: TOML needs Python 3.11 or newer (tomllib); "
                             "write the same structure as JSON") from None
        try:
            return tomllib.loads(data.decode("utf-8"))
        except ValueError as exc:  # tomllib.TOMLDecodeError, UnicodeDecodeError
            problem = f"not valid TOML: {_text(exc)}"
        except RecursionError:
            problem = "nested too deep"
        raise ValueError(f"{path}: {problem}")  # here: no __context__ to quote the file
    import json  # here, not at the top: slow to import (see the imports)

    if suffix in (".yml", ".yaml"):
        try:
            import yaml  # PyYAML, optional: used when it is installed
        except ImportError:
            try:
                return json.loads(data)
            except (ValueError, RecursionError):
                raise ValueError(f"{path}: reading YAML needs PyYAML, which is not installed "
                                 "(pip install pyyaml); or write the same structure as JSON "
                                 "(.json), or TOML (.toml, Python 3.11+)") from None
        try:
            return yaml.safe_load(data)
        except yaml.YAMLError as exc:  # its text spans lines and quotes the file: one line
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [""])[0] \
                or type(exc).__name__  # a ReaderError has no problem, and a first line
            problem = f"not valid YAML: {_text(problem)}{where}"
        except RecursionError:
            problem = "nested too deep"
        raise ValueError(f"{path}: {problem}")  # here: no __context__ to quote the file
    try:
        return json.loads(data)
    except ValueError as exc:
        problem = f"not valid JSON: {exc}"
    except RecursionError:
        problem = "nested too deep"
    raise ValueError(f"{path}: {problem}")


def _secrets(options):
    """The passwords an entry's options may hold (in URLs, or as such), longest first, to be
    kept out of an error raised by what the options were given to."""
    from urllib.parse import unquote, urlsplit  # here, not at the top: slow to import

    found = set()
    for key, value in options.items():
        if isinstance(value, str) and "://" in value and "@" in value:
            userinfo = value.partition("://")[2].rpartition("@")[0]
            found.update((userinfo, userinfo.partition(":")[2]))
            try:
                found.add(unquote(urlsplit(value).password or ""))
            except ValueError:
                pass
        elif isinstance(value, (list, tuple)) and key == "basic_auth" and len(value) == 2:
            found.add(str(value[1]))
        elif "password" in str(key).lower() or "token" in str(key).lower():
            found.add(str(value))
    return sorted((secret for secret in found if secret), key=len, reverse=True)


def _make(section, entry, *args):
    """The checker, provider, pusher or storage that one entry of a config describes."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        got = (f"a {type(entry).__name__}" if not isinstance(entry, dict)
               else "no type" if "type" not in entry
               else f"a type that is a {type(entry['type']).__name__}")
        raise ValueError(f"each entry of {section} needs a type (a name such as "
                         f"{next(iter(_CONFIG_TYPES[section]))}), got {got}")
    kind, options = entry["type"], entry.get("config") or {}
    name = _CONFIG_TYPES[section].get(kind)
    if name is None:
        what = {"plugins": "checker"}.get(section, section[:-1])
        raise ValueError(f"Unknown {what} type: {_shown(kind)} (known: "
                         f"{', '.join(_CONFIG_TYPES[section])})")
    if not isinstance(options, dict):
        raise ValueError(f"{section[:-1]} {kind!r}: its config must be a mapping, got "
                         f"{type(options).__name__}")
    maker = globals().get(name)  # looked up now: a provider may come with a newer pihace.py
    if maker is None:
        raise ValueError(f"{section[:-1]} type {kind!r} needs {name}, which this pihace.py "
                         f"({__version__}) does not have")
    if name == "_system_checker":
        return maker
    try:
        return maker(*args, **options)
    except (TypeError, ValueError, ImportError, RuntimeError) as exc:  # MongoStorage: the last two
        message = _text(exc)
    for secret in _secrets(options):
        message = message.replace(secret, "***")
    raise ValueError(f"{section[:-1]} {kind!r}: {_printable(message)}")  # no __context__ either


_LOOP_OPTIONS = {"pushers": "push_config", "storages": "store_config"}


def _loop_interval(section, entry):
    """The interval of a pusher's or storage's loop in a config: 60 when none is given, else
    a positive number of seconds (below a million); ValueError naming the entry otherwise."""
    key = _LOOP_OPTIONS[section]
    options = entry.get(key) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{section[:-1]} {entry['type']!r}: {key} must be a mapping, got "
                         f"{type(options).__name__}")
    return _seconds(f"{section[:-1]} {entry['type']!r}: {key} interval",
                    options.get("interval", 60))


def _config_part(config, key, kind):
    """config[key], or an empty `kind` when it is missing or null; ValueError otherwise."""
    value = config.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{key} must be a {'mapping' if kind is dict else 'list'}, got "
                         f"{type(value).__name__}")
    return value


def load_healthcheck_from_yaml(path):
    """pihace 1.0.0's loader: the HealthCheck, providers, pushers and storages that a config
    file describes, as {"healthcheck", "providers", "pushers", "storages", "config"}.

    The file is YAML (with PyYAML), JSON or TOML (see read_config). Nothing is
    started: ``pihace --config FILE`` starts the providers and runs the loops. What the
    file gets wrong is a ValueError that names it, and shows no password.
    """
    config = read_config(path)
    if not isinstance(config, dict):
        raise ValueError(f"{os.fspath(path)}: expected a mapping at the top, got "
                         f"{type(config).__name__}")
    try:
        instance = _config_part(config, "instance", dict)
        sections = {section: _config_part(config, section, list) for section in _CONFIG_TYPES}
        for key, kinds in (("with_system", bool), ("name", (str, int, float)),
                           ("version", (str, int, float))):
            if key in instance and not isinstance(instance[key], kinds) \
                    or key != "with_system" and isinstance(instance.get(key), bool):
                raise ValueError(f"instance {key} must be "
                                 f"{'true or false' if kinds is bool else 'a string'}, got "
                                 f"{type(instance[key]).__name__}")
        for section, key in _LOOP_OPTIONS.items():
            for entry in sections[section]:
                if isinstance(entry, dict) and isinstance(entry.get("type"), str):
                    _loop_interval(section, entry)
        hc = HealthCheck(with_system=instance.get("with_system", False),
                         name=instance.get("name", "unknown"),
                         version=instance.get("version", "0.0.1"))
        for entry in sections["plugins"]:
            checker = _make("plugins", entry)
            hc.register(str(entry.get("name", entry["type"])).replace(" ", "_"), checker)
        return {"healthcheck": hc,
                "providers": [_make("providers", entry, hc) for entry in sections["providers"]],
                "pushers": [_make("pushers", entry, hc) for entry in sections["pushers"]],
                "storages": [_make("storages", entry, hc) for entry in sections["storages"]],
                "config": config}
    except ValueError as exc:
        problem = str(exc)
    raise ValueError(f"{os.fspath(path)}: {problem}")  # here: no __context__ to quote the file


class _NotUsedHere:
    """Stands where pihace 1.0.0's module had a driver (``pihace.plugins.http.requests``,
    ``pihace.pusher.messaging.pika`` ...), so that ``mock.patch`` of it resolves. pihace.py
    does not use the drivers: patching one changes nothing. Calling it says what to patch
    instead (docs/differences.md, "Patch points")."""

    def __init__(self, name, instead, **parts):
        self._name, self._instead = name, instead
        for part, value in parts.items():
            setattr(self, part, value if value is not None else
                    _NotUsedHere(f"{name}.{part}", instead))

    def __call__(self, *args, **kwargs):
        raise ModuleNotFoundError(f"{self._name} is pihace 1.0.0's driver, which pihace.py does "
                                  f"not use; {self._instead}", name=self._name.partition(".")[0])

    def __repr__(self):
        return f"<{self._name}: not used by pihace.py>"


_PATCH_INSTEAD = ("in tests, patch the checker's __call__ (mock.patch.object(pihace.{0}, "
                  "'__call__', return_value=(False, 'down'))) or register a stand-in function")
# pihace 1.0.0's driver names in its modules, and what a test should patch instead
requests = _NotUsedHere("requests", _PATCH_INSTEAD.format("HTTP"), get=None, head=None,
                        post=None, RequestException=None)
# pihace.plugins.mysql.mysql is this module (as pihace.plugins.mysql is): its .connector
connector = _NotUsedHere("mysql.connector", _PATCH_INSTEAD.format("MySQL"), connect=None,
                         Error=None)
MongoClient = _NotUsedHere("pymongo.MongoClient", _PATCH_INSTEAD.format("MongoDB"))
InfluxDBClient = _NotUsedHere("influxdb_client.InfluxDBClient", _PATCH_INSTEAD.format("InfluxDB"))
Elasticsearch = _NotUsedHere("elasticsearch.Elasticsearch", _PATCH_INSTEAD.format("ElasticSearch"))
pika = _NotUsedHere("pika", "in tests, patch pihace.AMQPPusher.push (or give the pusher a "
                    "socket_factory); see docs/differences.md", BlockingConnection=None,
                    URLParameters=None, BasicProperties=None)


_ALIASES_1_0_0 = ("plugins.mysql", "plugins.mongodb", "plugins.influxdb", "plugins.elasticsearch",
                  "pusher.elasticsearch", "storage", "storage.mongodb", "types", "loader")
# pihace.types: 1.0.0's Literal names, made on first use (typing is slow to import)
_TYPES_1_0_0 = {
    "PluginType": ("http", "influxdb", "mongodb", "mysql", "elasticsearch", "system"),
    "PusherType": ("elasticsearch_pusher", "amqp_pusher"),
    "StorageType": ("mongodb_storage",),
    "ProviderType": ("web_provider", "prometheus_provider"),
}


def __getattr__(name):  # PEP 562: only for names the module does not define
    if name in _TYPES_1_0_0:
        import typing  # here, not at the top: slow to import, and only pihace.types needs it

        value = typing.Literal[_TYPES_1_0_0[name]]
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_aliases():
    module = sys.modules[__name__]
    sys.modules.setdefault("pihace", module)
    for alias in ("healthcheck", "pusher", "pusher.messaging", "system_info", "utils",
                  "plugins", "plugins.http") + _ALIASES_1_0_0:
        sys.modules.setdefault(f"pihace.{alias}", module)
    # ``import pihace.pusher.messaging`` then reaches attributes of the parent
    for attribute in ("healthcheck", "pusher", "messaging", "system_info", "utils", "plugins",
                      "http") + tuple({alias.rpartition(".")[2] for alias in _ALIASES_1_0_0}):
        setattr(module, attribute, module)


_register_aliases()


class _WebProviderServer(HealthServer):
    """HealthServer with pihace 1.0.0's WebProvider root: ``/`` says the server runs."""

    def respond(self, path, query, accept):
        if path == "/":
            return (200, "application/json",
                    b'{"status":"ok","message":"pihace web server is running"}', [])
        return super().respond(path, query, accept)


class WebProvider:
    """pihace 1.0.0's ``pihace.providers.web.WebProvider``: its constructor and serve(),
    on HealthServer (/healthcheck, /, and HealthServer's endpoints). There is no
    ``.app``: pihace 1.0.0's FastAPI application does not exist here."""

    _server_class = _WebProviderServer

    def __init__(self, healthcheck, host="0.0.0.0", port=8000):
        if not isinstance(host, str):  # checked now, not when serve() runs in a thread
            raise ValueError(f"host must be a host name or an IP address, got "
                             f"{type(host).__name__}")
        _number("port", port, lambda v: 0 <= v < 65536, "an integer from 0 to 65535", int)
        self.healthcheck, self.host, self.port = healthcheck, host, port

    def serve(self):
        """Serve until interrupted (Ctrl-C), as uvicorn.run() did: the checks run per
        request and every reason is shown, as pihace 1.0.0 did (HealthServer itself runs
        them in the background and shows reasons to loopback clients only)."""
        server = self._server_class(self.healthcheck, self.host, self.port, background=False,
                                    show_details="always")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


class PrometheusProvider(WebProvider):
    """pihace 1.0.0's ``pihace.providers.prometheus.PrometheusProvider``: /metrics (with
    HealthServer's metric names, not prometheus_client's) and the other endpoints."""

    _server_class = HealthServer

    def __init__(self, healthcheck, host="0.0.0.0", port=9090):
        super().__init__(healthcheck, host, port)


def _register_provider_aliases():
    module = sys.modules[__name__]
    for alias in ("providers", "providers.web", "providers.prometheus"):
        sys.modules.setdefault(f"pihace.{alias}", module)
    for attribute in ("providers", "web", "prometheus"):
        setattr(module, attribute, module)


_register_provider_aliases()
