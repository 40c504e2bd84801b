"""What a failed Triton call means, from gRPC / HTTP status codes and exception types (never the message text).

- ``transient``: the server (or the way to it) is down, restarting, overloaded or slow; another server, or the
  same one a little later, can answer. gRPC ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED``,
  ``ABORTED``, ``CANCELLED``; HTTP 429, 502, 503, 504; connection errors and timeouts raised by the HTTP
  client (``OSError``, ``http.client.HTTPException``, ``gevent.Timeout``).
- ``not_found``: gRPC ``NOT_FOUND`` / HTTP 404: a model or a shared-memory region the server does not know. After a
  server restart both are true for a moment (models loading, our regions forgotten); otherwise it is a wrong
  model name. The backend checks the server's state to tell which (:meth:`TritonBackend._after_not_found`).
- ``permanent``: anything else the server answered (``INVALID_ARGUMENT``, ``INTERNAL``, HTTP 400/500...): the same
  request fails again. One exception, decided by the backend from the text (the server gives it no code of its
  own): an ``INTERNAL`` error saying that an allocation failed is
  :class:`~alps_client.errors.BackendOutOfMemoryError`, retried.
- ``None``: not an error of the Triton call at all (a bug on our side): raised unchanged.
"""

from __future__ import annotations

import http.client
from typing import Literal

Kind = Literal["transient", "not_found", "permanent"]

TRANSIENT_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED"})
TRANSIENT_HTTP = frozenset({"429", "502", "503", "504"})
NOT_FOUND = frozenset({"NOT_FOUND", "404"})


def _gevent_timeout() -> tuple[type[BaseException], ...]:
    """``gevent.Timeout`` (a BaseException) where the HTTP client's gevent is installed."""
    try:
        from gevent import Timeout
    except ImportError:  # gRPC-only installs have no gevent
        return ()
    return (Timeout,)


# Network failures of the HTTP client (tritonclient.http raises them unwrapped). gRPC wraps its own.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException, *_gevent_timeout())


def status_code(err: BaseException) -> str | None:
    """The bare status of a ``tritonclient.utils.InferenceServerException``: ``"UNAVAILABLE"``, ``"400"``...

    gRPC statuses come as ``"StatusCode.UNAVAILABLE"``; HTTP ones as ``"503"``. None when ``err`` carries none.
    """
    status = getattr(err, "status", None)
    if not callable(status):
        return None
    value = status()
    return None if value is None else str(value).rsplit(".", 1)[-1]


def timed_out(err: BaseException) -> bool:
    """Whether a failed Triton call ran out of time (the client's timeout), rather than finding no server.

    Examples:
        >>> from tritonclient.utils import InferenceServerException
        >>> timed_out(InferenceServerException("slow", status="StatusCode.DEADLINE_EXCEEDED"))
        True
        >>> timed_out(TimeoutError("timed out")), timed_out(ConnectionRefusedError(111, "Connection refused"))
        (True, False)
    """
    return status_code(err) == "DEADLINE_EXCEEDED" or isinstance(err, (TimeoutError, *_gevent_timeout()))


def classify(err: BaseException) -> Kind | None:
    """``transient``, ``not_found`` or ``permanent`` for a failed Triton call; None if ``err`` is not one.

    Examples:
        >>> from tritonclient.utils import InferenceServerException
        >>> classify(InferenceServerException("down", status="StatusCode.UNAVAILABLE"))
        'transient'
        >>> classify(InferenceServerException("bad shape", status="400"))
        'permanent'
        >>> classify(ConnectionRefusedError(111, "Connection refused"))
        'transient'
    """
    if isinstance(err, NETWORK_ERRORS):
        return "transient"
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:  # without tritonclient nothing can be a Triton error
        return None
    if not isinstance(err, InferenceServerException):
        return None
    code = status_code(err)
    if code in TRANSIENT_GRPC or code in TRANSIENT_HTTP:
        return "transient"
    if code in NOT_FOUND:
        return "not_found"
    return "permanent"


def is_grpc(client: object) -> bool:
    """Whether ``client`` is tritonclient's gRPC client (else the HTTP one)."""
    return client.__class__.__module__.startswith("tritonclient.grpc")


def deadline(client: object, seconds: float) -> dict[str, float]:
    """Keyword arguments that give one call of ``client`` a deadline of ``seconds``.

    gRPC calls take ``client_timeout`` each (without it a call to a hung server waits forever); the HTTP client
    has its deadline from its construction (``network_timeout``), so it takes none.
    """
    return {"client_timeout": seconds} if is_grpc(client) else {}


def server_errors() -> tuple[type[BaseException], ...]:
    """What a Triton call can raise because of the server or the network (anything else is a bug of ours)."""
    from tritonclient.utils import InferenceServerException

    return (InferenceServerException, *NETWORK_ERRORS)


def reason(err: BaseException) -> str:
    """One line for logs and error messages: exception type, status code and the first line of the text."""
    code = status_code(err)
    text = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}{f' {code}' if code else ''}: {text}" if text else type(err).__name__
