"""URL hygiene: what may be recorded about where a byte came from."""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit


def strip_secrets(url: str) -> str:
    """Drop user info and the whole query string (SAS tokens, presigned-URL signatures, keys).

    Provenance never needs the query of a blob URL, and dropping all of it is safer than a list of
    known secret parameter names that a new signer could extend.
    """
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# A URL inside free text (an error message, GDAL's stderr, a log line), with or without a
# ``/vsicurl/`` prefix; its query (and any ``user:pass@``) is what must not be shown.
_URL_IN_TEXT = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^\s/@'\"]*@)?"
                          r"(?P<rest>[^\s?'\"<>]*)\?[^\s'\"<>]+")
# Secret-bearing parameters that appear outside a URL (boto's and GDAL's messages quote them).
_SECRET_PARAM = re.compile(
    r"(?i)\b(sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"awsaccesskeyid|token|se|st|sp|sv|sr|skoid|sktid|skt|ske|sks|skv)=[^\s&'\"]+")
# A path with a query but no host: curl's and urllib3's request lines (``GET /p?q HTTP/1.1``),
# requests' connection errors (``... with url: /p?q (Caused by ...)``). Any query parameter may
# be a key (``code=``, ``key=``), so the whole query goes.
_BARE_PATH = re.compile(r"(?<![\w.:/@-])(?P<path>/[^\s?'\"<>]*)\?[^\s'\"<>]+")
# Credentials in headers, as ``Name: value`` (curl, HTTP dumps) or a dict's repr (botocore's
# ``'Authorization': b'AWS4-HMAC-SHA256 ..., Signature=...'``).
_SECRET_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?(?:authorization|x-amz-security-token|x-amz-signature|"
    r"ocp-apim-subscription-key|x-api-key|api-key|cookie|set-cookie)['\"]?\s*:\s*b?)"
    r"(?P<quote>['\"]?)[^'\"\r\n]+")
# botocore's signer logs ``Signature:`` and the signature itself on the next line.
_SIGNATURE_LINE = re.compile(r"(?i)\b(signature:\s*)[0-9A-Za-z+/=%_-]{8,}")


def redact(text: str) -> str:
    """``text`` with the query of every URL in it dropped and stray secrets masked.

    The one place that makes a message safe to show: error constructors call it, and the
    logging filter (:class:`RedactingFilter`) applies it to every record. Covers URLs (with or
    without GDAL's ``/vsicurl/``), host-less paths with a query, ``sig=``-style parameters,
    credential headers and botocore's signature dump.
    """
    text = _URL_IN_TEXT.sub(lambda m: f"{m['scheme']}{m['rest']}?<redacted>", str(text))
    text = _BARE_PATH.sub(lambda m: f"{m['path']}?<redacted>", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=<redacted>", text)
    text = _SIGNATURE_LINE.sub(lambda m: f"{m.group(1)}<redacted>", text)
    return _SECRET_HEADER.sub(lambda m: f"{m['name']}{m['quote']}<redacted>", text)


class RedactingFilter(logging.Filter):
    """Redact every log record (message and arguments, once formatted) before any handler."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def _print_redacted(kind: type[BaseException], value: BaseException,
                    tb: TracebackType | None) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def _print_redacted_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "?"
    sys.stderr.write(f"Exception in thread {name}:\n")
    _print_redacted(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)


def install_redaction() -> None:
    """Make everything this process shows pass through :func:`redact`; call once logging is set.

    The filter goes on *handlers*, not loggers: a handler's filter sees the records of every
    logger that propagates to it (rasterio's relay of GDAL's messages, botocore's and urllib3's
    debug lines with presigned URLs), while a logger's filter would miss its children. Handlers
    of non-propagating loggers and ``logging.lastResort`` get it too; ``warnings`` are routed
    through logging, and uncaught tracebacks (main thread and others) are printed redacted.
    GDAL's own debug output reaches Python only through rasterio's error handler, hence this
    filter (GeoPile never sets ``CPL_CURL_VERBOSE``; :mod:`geopile.cog` pins it off).
    Idempotent.
    """
    logging.captureWarnings(True)
    handlers = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    sys.excepthook = _print_redacted
    threading.excepthook = _print_redacted_thread
