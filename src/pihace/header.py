"""pihace: health checks for Python services, in one file, with the standard library only.

Register checkers, take a report, and push it to RabbitMQ (or any AMQP 0-9-1
broker) over a plain socket. A drop-in for the API of the PyPI package pihace
1.0.0, without its dependencies; psutil is used when it is installed.

    from pihace.healthcheck import HealthCheck
    from pihace.pusher.messaging import AMQPPusher

    hc = HealthCheck(with_system=True, name="MyApp", version="1.0.0")
    hc.register("example", lambda: True)
    publisher = AMQPPusher(amqp_url="amqp://guest:guest@localhost:5672/", healthcheck=hc)
    publisher.push()                            # True once the broker confirmed it

Run ``python3 pihace.py`` to print this machine's health report as JSON.

Copyright (c) 2026 the pihace developers. MIT licence: see LICENSE, or
https://opensource.org/licenses/MIT. Keep this notice in copies of this file.
"""

from __future__ import annotations

# Imported where they are used, because of what they cost: logging (about 6 ms),
# socket (4 ms), json (2 ms) and, on an interpreter that has not loaded re at start
# (Debian's python3), urllib.parse and shutil (5 ms each) and random (3 ms) would take
# most of the 15 ms import budget (bench/bench_check.py); asyncio, ssl, argparse,
# http.client and platform serve few callers.

__version__ = "1.1.0"
__all__ = [
    "AMQP",
    "AMQPError",
    "AMQPPusher",
    "ChannelClosed",
    "ConnectionClosed",
    "ConsumerCancelled",
    "DEVICE_STATES",
    "Disk",
    "ElasticSearch",
    "ElasticSearchPusher",
    "HTTP",
    "HealthCheck",
    "HealthServer",
    "InfluxDB",
    "Interrupted",
    "LocalProtocolError",
    "MongoDB",
    "MongoStorage",
    "MySQL",
    "PihaceError",
    "ProtocolError",
    "PublishError",
    "RemoteProtocolError",
    "SystemInfo",
    "TCP",
    "Watcher",
    "calculate_status",
    "fleet_exit_code",
    "fleet_table",
    "format_fleet",
    "format_health_json",
    "format_nagios",
    "format_prometheus",
    "format_rate",
    "format_report",
    "get_system_info",
    "get_utc_timestamp",
    "load_healthcheck_from_yaml",
    "main",
    "mark_optional",
    "required_checks_passed",
]


class _Logger:
    """logging.getLogger("pihace") with a NullHandler, made on first use (logging is slow
    to import). The NullHandler keeps Python from printing pihace's warnings to stderr
    when the application configured no logging. A method asked for once (log.debug) is
    kept as the logger's own, so that later calls go straight to it."""

    @staticmethod
    def _logger():
        import logging  # here, not at the top: slow to import (see the imports)

        logger = logging.getLogger("pihace")
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())
        return logger

    def __getattr__(self, name):  # only for what is not kept yet
        value = getattr(self._logger(), name)
        if callable(value):  # a bound method: kept; a value (level, propagate) is read each time
            self.__dict__[name] = value
        return value

    def __setattr__(self, name, value):  # pihace.log.propagate = False reaches the logger
        self.__dict__.pop(name, None)  # log.warning = a replacement: asked for anew
        setattr(self._logger(), name, value)


log = _Logger()
