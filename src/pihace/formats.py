"""report formats: the report as health+json, Prometheus text and Nagios output, and marking optional checks."""

from __future__ import annotations

from .header import __version__
from .helpers import _printable


# The report's three statuses, best first (`pihace check` exits with a status's index): the one
# table of their words.
_AVAILABLE, _PARTIALLY_AVAILABLE, _UNAVAILABLE = _STATUSES = (
    "Available", "Partially Available", "Unavailable")


# The report in the formats of other tools. Each takes the dict that check() returns
# (`checks` entries included) and nothing else, so that `pihace check`, the HTTP server
# and callers with a report from elsewhere share them.

def mark_optional(report, names):
    """A copy of `report` in which the checks called `names` are optional: marked
    ``"optional": true``, and a failing one makes the status Partially Available, never
    Unavailable. The status then follows the required checks: Available when they and
    the optional ones all passed, Unavailable when every required one failed (and there
    is one), else Partially Available. ValueError names an optional check that is not
    in the report."""
    names, checks = set(names), report.get("checks") or {}
    unknown = sorted(names - set(checks))
    if unknown:
        raise ValueError(f"no check called {_printable(', '.join(map(str, unknown)))} "
                         "to make optional")
    if not names:
        return report
    checks = {name: dict(check, optional=True) if name in names else check
              for name, check in checks.items()}
    required = [check["status"] == "pass" for name, check in checks.items() if name not in names]
    if all(check["status"] == "pass" for check in checks.values()):
        status = _AVAILABLE
    elif required and not any(required):
        status = _UNAVAILABLE
    else:
        status = _PARTIALLY_AVAILABLE
    return dict(report, status=status, checks=checks)


def required_checks_passed(report):
    """Did every check that is not optional pass? (Available, when none is optional.)"""
    return all(check["status"] == "pass" for check in (report.get("checks") or {}).values()
               if not check.get("optional"))


_HEALTH_STATUS = dict(zip(_STATUSES, ("pass", "warn", "fail")))


def _system_figures(system):
    """[(name, value in base units, Prometheus unit suffix, help)] of a report's `system`
    part, from pihace 1.0.0's strings ("16.8%", "23784.1 MB", "79.08 GB"); figures that
    were not measured (None) or cannot be read are left out."""
    scales = (("cpu_usage", "%", 0.01, "cpu_usage_ratio", "CPU busy time since the previous "
               "report, 0 to 1"),
              ("memory_usage", "%", 0.01, "memory_usage_ratio", "memory in use, 0 to 1"),
              ("memory_available", " MB", 1024 ** 2, "memory_available_bytes",
               "memory available to new processes"),
              ("disk_usage", "%", 0.01, "disk_usage_ratio", "disk space in use, 0 to 1"),
              ("disk_available", " GB", 1024 ** 3, "disk_available_bytes", "free disk space"))
    figures = []
    for key, suffix, scale, name, text in scales:
        value = (system or {}).get(key)
        if isinstance(value, str) and value.endswith(suffix):
            try:
                number = float(value[:-len(suffix)]) * scale
            except ValueError:
                continue
            figures.append((name, round(number, 6) if scale < 1 else round(number), text))
    return figures


def _epoch(timestamp):
    """Seconds since the epoch of a report's timestamp (``2026-05-01T12:34:56.789123Z``),
    or None if it is not one."""
    import calendar  # here, not at the top: only these formats need it

    try:  # not time.strptime: its first use is not safe in two threads at once
        whole, _, fraction = timestamp.rstrip("Z").partition(".")
        if len(whole) != 19 or whole[4::3] != "--T::" or not fraction.isdigit():
            return None
        seconds = calendar.timegm(tuple(int(whole[start:start + 2 + 2 * (start == 0)])
                                        for start in (0, 5, 8, 11, 14, 17)))
        return seconds + float(f"0.{fraction}")
    except (AttributeError, TypeError, ValueError):
        return None


def format_health_json(report, pretty=True):
    """The report as application/health+json (draft-inadarei-api-health-check-06):
    status pass / warn / fail, one ``"NAME:responseTime"`` entry per check, system
    figures as ``cpu:utilization`` and the like."""
    import json  # here, not at the top: slow to import (see the imports)

    component = report.get("component") or {}
    health = {"status": _HEALTH_STATUS.get(report["status"], "fail")}
    if component.get("version") is not None:
        health["version"] = str(component["version"])
    if component.get("name") is not None:
        health["serviceId"] = str(component["name"])
        health["description"] = f"health of {component['name']}"
    if report.get("failure"):
        health["output"] = "; ".join(f"{name}: {reason}" for name, reason in
                                     report["failure"].items())
    checks = {}
    for name, check in (report.get("checks") or {}).items():
        entry = {"componentId": name, "observedValue": check.get("duration_ms"),
                 "observedUnit": "ms",
                 "status": "pass" if check["status"] == "pass"
                 else "warn" if check.get("optional") else "fail",
                 "time": report["timestamp"]}
        if check["status"] != "pass" and check.get("message") is not None:
            entry["output"] = check["message"]  # the draft: only for warn and fail
        checks[f"{name}:responseTime"] = [entry]
    for key, component_id, unit in (("cpu_usage", "cpu", "percent"),
                                    ("memory_usage", "memory", "percent"),
                                    ("disk_usage", "disk", "percent")):
        value = (report.get("system") or {}).get(key)
        if isinstance(value, str) and value.endswith("%"):
            checks[f"{component_id}:utilization"] = [{
                "componentType": "system", "observedValue": float(value[:-1]),
                "observedUnit": unit, "status": "pass", "time": report["timestamp"]}]
    if checks:
        health["checks"] = checks
    return json.dumps(health, indent=4 if pretty else None)


def _prometheus_label_value(value):
    """`value` as a label value of Prometheus' text format: backslash, double quote and line
    feed escaped (the format's only escapes; it carries every other character as it is), and
    a lone surrogate (a byte that argv could not decode), which UTF-8 cannot carry, as U+FFFD."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return text


def format_prometheus(report):
    """The report in Prometheus' text format 0.0.4, without timestamps (as the textfile
    collector of node_exporter wants): gauges named after their base unit."""
    lines = []

    def metric(name, text, samples):
        lines.append(f"# HELP pihace_{name} {text}")
        lines.append(f"# TYPE pihace_{name} gauge")
        for labels, value in samples:
            shown = ",".join(f'{key}="{_prometheus_label_value(label)}"'
                             for key, label in labels)
            lines.append(f"pihace_{name}{{{shown}}} {value!r}" if labels
                         else f"pihace_{name} {value!r}")

    component = report.get("component") or {}
    checks = report.get("checks") or {}
    metric("up", "1 when every required check passed (optional ones may have failed), "
           "as /readyz answers 200; else 0", [((), int(required_checks_passed(report)))])
    metric("status", "1 for the report's status, 0 for the others",
           [((("status", status),), int(report["status"] == status))
            for status in _STATUSES])
    metric("info", "who reports: the component's name and version, pihace's version",
           [((("name", component.get("name") or ""), ("version", component.get("version") or ""),
              ("pihace_version", __version__)), 1)])
    metric("checks", "checks in the report", [((), len(checks))])
    metric("checks_passed", "checks that passed", [((), sum(
        check["status"] == "pass" for check in checks.values()))])
    if report.get("duration") is not None:
        metric("report_duration_seconds", "time taken by the whole report",
               [((), round(float(report["duration"]), 6))])
    epoch = _epoch(report.get("timestamp"))
    if epoch is not None:
        metric("check_last_run_timestamp_seconds", "when the checks last ran, seconds since "
               "the epoch", [((), round(epoch, 3))])
    if checks:
        metric("check_up", "1 when the check passed, else 0",
               [((("check", name),), int(check["status"] == "pass"))
                for name, check in checks.items()])
        metric("check_duration_seconds", "time the check took, retries included",
               [((("check", name),), round(check.get("duration_ms", 0) / 1000, 6))
                for name, check in checks.items()])
        metric("check_attempts", "attempts the check took", [
            ((("check", name),), check.get("attempts", 1)) for name, check in checks.items()
            if check.get("attempts", 1) is not None])  # None: a subclass ran it, count unknown
        metric("check_optional", "1 when a failure of the check cannot make the status "
               "Unavailable", [((("check", name),), int(bool(check.get("optional"))))
                               for name, check in checks.items()])
    for name, value, text in _system_figures(report.get("system")):
        metric(f"system_{name}", text, [((), value)])
    return "\n".join(lines) + "\n"


_NAGIOS_STATES = dict(zip(_STATUSES, ("OK", "WARNING", "CRITICAL")))


def _nagios_text(text):
    """Free text for a Nagios line: control characters escaped, no | (it starts perfdata)."""
    return _printable(text).replace("|", "/")


def _perf_label(name):
    """A perfdata label: quoted, without = or quotes (the guidelines allow neither)."""
    return "'" + _nagios_text(name).replace("'", "").replace("=", "_") + "'"


def format_nagios(report):
    """The report as a Monitoring Plugins status line with performance data:
    ``PIHACE OK - 2/2 checks passed | 'db'=1;;1:;0;1 'db_seconds'=0.0019s;;;0``.
    A failing required check is critical (crit 1:), an optional one a warning (warn 1:)."""
    state = _NAGIOS_STATES.get(report["status"], "UNKNOWN")
    checks = report.get("checks") or {}
    passed = sum(check["status"] == "pass" for check in checks.values())
    line = f"PIHACE {state} - {passed}/{len(checks)} checks passed"
    failures = report.get("failure") or {}
    if failures:
        line += "; " + ", ".join(f"{_nagios_text(name)}: {_nagios_text(reason)}"
                                 for name, reason in failures.items())
    perfdata = []
    for name, check in checks.items():
        thresholds = "1:;" if check.get("optional") else ";1:"
        perfdata.append(f"{_perf_label(name)}={int(check['status'] == 'pass')};{thresholds};0;1")
        seconds = check.get("duration_ms", 0) / 1000
        perfdata.append(f"{_perf_label(str(name) + '_seconds')}={seconds:.6f}s;;;0")
    return line + (" | " + " ".join(perfdata) if perfdata else "")
