"""Log output: one JSON object a line (``MFA_LOG_FORMAT=json``), or readable text.

A JSON line has ``time`` (UTC, RFC 3339), ``level``, ``logger`` and ``message``, the
fields a call passed as ``extra`` (the per-call line: ``request_id``, ``caller``,
``method``, ``status``, ``duration_ms``), and ``exception`` for a traceback. A line
written inside a span (tracing on: a call, a background job's run) also has
``trace_id``, ``span_id`` and ``trace_flags``, in hex as the W3C trace context writes
them (the field names OpenTelemetry gives trace context in non-OTLP log formats), so
a log pipeline can join it to the trace; a text line ends with them. Nothing else
here adds a value of its own: a secret never reaches a log message or field.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

# The attributes every LogRecord has; any other attribute came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class TraceContextFilter(logging.Filter):
    """Adds the current span's ``trace_id``, ``span_id`` and ``trace_flags`` to a record
    (none outside a span). On the handler: every record it writes passes through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
            record.trace_flags = format(context.trace_flags, "02x")
        return True


class TextFormatter(logging.Formatter):
    """``time level logger message``, and the trace context of a line written in a span."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # before a traceback
        line = super().formatMessage(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return line
        return f"{line} trace_id={trace_id} span_id={getattr(record, 'span_id', '')}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level``, as ``json`` or ``text``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    # pgserver narrates every pg_ctl call at INFO; its warnings and errors still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
