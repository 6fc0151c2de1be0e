"""The only code that speaks HTTP to Restate: admin queries, invocation
operations, deployment registration, and ingress calls/sends/attach.

SQL text is built by callers with `invocations.restate.sql` (the one quoting
function); this module only carries it.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from invocations.restate.errors import QueryError, QuerySyntaxError, RestateError, RestateTimeout, RestateUnavailable
from invocations.restate.ids import validate_invocation_id

# ---------------------------------------------------------------- results


class Outcome(StrEnum):
    DONE = "done"  # 200/202: Restate accepted the operation
    NOT_FOUND = "not_found"  # 404
    INVALID = "invalid"  # 400: Restate rejected the id or request
    CONFLICT = "conflict"  # 409: e.g. already completed, not running
    NOT_READY = "not_ready"  # 425: scheduled or inboxed, not started yet
    UNSUPPORTED = "unsupported"  # 422: e.g. restart-as-new on a workflow


_OUTCOME_BY_STATUS = {
    404: Outcome.NOT_FOUND,
    400: Outcome.INVALID,
    409: Outcome.CONFLICT,
    425: Outcome.NOT_READY,
    422: Outcome.UNSUPPORTED,
}


@dataclass(frozen=True)
class OperationResult:
    operation: str
    invocation_id: str
    outcome: Outcome
    http_status: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DONE


class ResultState(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # completed with a failure (including cancelled)
    NOT_READY = "not_ready"  # 470 from /output: still running
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"  # no result to fetch (e.g. no idempotency key)


@dataclass(frozen=True)
class InvocationResult:
    state: ResultState
    http_status: int
    body: str
    content_type: str = ""
    truncated: bool = False  # the body was cut at the caller's bound

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


OPERATIONS = ("cancel", "kill", "pause", "resume", "restart-as-new", "purge", "purge-journal")


# ---------------------------------------------------------------- client


@dataclass
class RestateClient:
    admin_url: str
    ingress_url: str
    timeout: float = 30.0
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.admin_url = self.admin_url.rstrip("/")
        self.ingress_url = self.ingress_url.rstrip("/")
        self._http = httpx.Client(timeout=httpx.Timeout(self.timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport

    def _request(self, method: str, url: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            if timeout is not None:
                kwargs["timeout"] = httpx.Timeout(timeout)
            return self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise RestateTimeout(f"Restate did not answer {method} {url} within the timeout") from exc
        except httpx.TransportError as exc:
            raise RestateUnavailable(f"cannot reach Restate at {url}: {exc}") from exc

    @staticmethod
    def _raise_for_query(response: httpx.Response) -> None:
        if response.status_code < 300:
            return
        detail = _error_message(response)
        if response.status_code == 400:
            raise QuerySyntaxError(detail)
        if response.status_code == 503:
            raise RestateUnavailable(f"Restate's query service is unavailable: {detail}")
        if response.status_code >= 500:
            raise QueryError(detail)
        raise RestateError(f"/query answered {response.status_code}: {detail}")

    # -- admin: introspection

    def version(self) -> dict[str, Any]:
        response = self._request("GET", f"{self.admin_url}/version")
        if response.status_code != 200:
            raise RestateUnavailable(f"/version answered {response.status_code}")
        return response.json()

    def health(self) -> bool:
        try:
            self.version()
        except RestateError:
            return False
        return True

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows as JSON objects. Null columns are absent from a row: use .get()."""
        response = self._request(
            "POST", f"{self.admin_url}/query", json={"query": sql}, headers={"Accept": "application/json"}
        )
        self._raise_for_query(response)
        return response.json()["rows"]

    def query_batches(self, sql: str) -> Iterator[list[dict[str, Any]]]:
        """Stream a large result as Arrow record batches, decoded to row dicts.

        Arrow decodes ~10x faster than JSON for big scans and, streamed, keeps
        memory bounded by one batch however many rows the query returns.
        Timestamps arrive as aware datetimes here (strings in `query`).
        """
        import pyarrow.ipc

        try:
            with self._http.stream(
                "POST",
                f"{self.admin_url}/query",
                json={"query": sql},
                headers={"Accept": "application/vnd.apache.arrow.stream"},
            ) as response:
                if response.status_code >= 300:
                    response.read()
                    self._raise_for_query(response)
                reader = pyarrow.ipc.open_stream(io.BufferedReader(_ChunkReader(response.iter_bytes()), 1 << 16))
                for batch in reader:
                    yield _batch_rows(batch)
        except httpx.TimeoutException as exc:
            raise RestateTimeout("Restate did not answer the query within the timeout") from exc
        except httpx.TransportError as exc:
            raise RestateUnavailable(f"lost the connection to Restate during a query: {exc}") from exc

    # -- admin: deployments

    def register_deployment(self, uri: str, *, force: bool = True) -> dict[str, Any]:
        response = self._request("POST", f"{self.admin_url}/deployments", json={"uri": uri, "force": force})
        if response.status_code >= 300:
            raise RestateError(f"registering {uri} failed ({response.status_code}): {_error_message(response)}")
        return response.json()

    # -- admin: invocation operations

    def _operation_url(self, operation: str, invocation_id: str) -> str:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
        validate_invocation_id(invocation_id)
        return f"{self.admin_url}/invocations/{quote(invocation_id, safe='')}/{operation}"

    def operate(self, operation: str, invocation_id: str) -> OperationResult:
        response = self._request("PATCH", self._operation_url(operation, invocation_id))
        return _operation_result(operation, invocation_id, response)

    def operate_many(
        self, operation: str, invocation_ids: list[str], *, concurrency: int = 16
    ) -> dict[str, OperationResult | RestateError]:
        """`operate` for each id, at most `concurrency` PATCHes in flight at once.

        Restate 1.7's admin API has no batch endpoint (one PATCH per invocation), so a
        bulk job's batch is sent as concurrent single calls. Each thread keeps one
        keep-alive connection of the standard library's http.client: measured here
        against restate-server, httpx managed ~500 PATCHes/s (threads) or ~200/s
        (asyncio), http.client ~2,200/s, what Restate's own CLI reaches. A failure to
        reach Restate is returned for that id (not raised), so one lost answer does
        not hide the others.
        """
        paths = {invocation_id: self._operation_url(operation, invocation_id) for invocation_id in invocation_ids}
        if not paths:
            return {}
        target = urlsplit(self.admin_url)
        local = threading.local()
        opened: list[http.client.HTTPConnection] = []
        lock = threading.Lock()

        def connection() -> http.client.HTTPConnection:
            conn = getattr(local, "conn", None)
            if conn is None:
                kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
                conn = local.conn = kind(target.hostname or "localhost", target.port, timeout=self.timeout)
                with lock:
                    opened.append(conn)
            return conn

        def one(invocation_id: str) -> OperationResult | RestateError:
            path = urlsplit(paths[invocation_id]).path
            for attempt in (1, 2):
                conn = connection()
                try:
                    conn.request("PATCH", path, headers={"content-length": "0"})
                    answer = conn.getresponse()
                    body = answer.read()
                except TimeoutError:
                    conn.close()
                    return RestateTimeout(f"Restate did not answer {operation} {invocation_id} in time")
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    local.conn = None
                    # A keep-alive connection the server closed meanwhile: once more on a new one.
                    if attempt == 2 or not isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
                        return RestateUnavailable(f"cannot reach Restate for {operation} {invocation_id}: {exc}")
                    continue
                response = httpx.Response(answer.status, content=body, headers=answer.getheaders())
                try:
                    return _operation_result(operation, invocation_id, response)
                except RestateError as exc:
                    return exc
            raise AssertionError("unreachable")

        try:
            with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(paths)))) as pool:
                return dict(zip(paths, pool.map(one, paths), strict=True))
        finally:
            for conn in opened:
                conn.close()

    def cancel(self, invocation_id: str) -> OperationResult:
        return self.operate("cancel", invocation_id)

    def kill(self, invocation_id: str) -> OperationResult:
        return self.operate("kill", invocation_id)

    def pause(self, invocation_id: str) -> OperationResult:
        return self.operate("pause", invocation_id)

    def resume(self, invocation_id: str) -> OperationResult:
        return self.operate("resume", invocation_id)

    def restart_as_new(self, invocation_id: str) -> OperationResult:
        return self.operate("restart-as-new", invocation_id)

    def purge(self, invocation_id: str) -> OperationResult:
        return self.operate("purge", invocation_id)

    def purge_journal(self, invocation_id: str) -> OperationResult:
        return self.operate("purge-journal", invocation_id)

    # -- ingress

    def _target_path(self, service: str, handler: str, key: str | None) -> str:
        parts = [service] if key is None else [service, key]
        return "/".join(quote(p, safe="") for p in [*parts, handler])

    def call(
        self,
        service: str,
        handler: str,
        *,
        key: str | None = None,
        payload: Any = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Request-response through the ingress; returns the decoded JSON result."""
        response = self._request(
            "POST",
            f"{self.ingress_url}/{self._target_path(service, handler, key)}",
            json=payload,
            headers=_idempotency_header(idempotency_key),
            timeout=timeout,
        )
        if response.status_code >= 300:
            raise RestateError(f"{service}/{handler} failed ({response.status_code}): {_error_message(response)}")
        return response.json() if response.content else None

    def send(
        self,
        service: str,
        handler: str,
        *,
        key: str | None = None,
        payload: Any = None,
        delay: timedelta | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """One-way (optionally delayed) send through the ingress; returns the invocation id."""
        params = {"delay": f"{int(delay.total_seconds() * 1000)}ms"} if delay else None
        response = self._request(
            "POST",
            f"{self.ingress_url}/{self._target_path(service, handler, key)}/send",
            json=payload,
            params=params,
            headers=_idempotency_header(idempotency_key),
        )
        if response.status_code >= 300:
            raise RestateError(f"send {service}/{handler} failed ({response.status_code}): {_error_message(response)}")
        return response.json()["invocationId"]

    def output(self, invocation_id: str) -> InvocationResult:
        """The result if it is there now; never blocks (470 = not completed yet)."""
        validate_invocation_id(invocation_id)
        return self._result(f"{self.ingress_url}/restate/invocation/{quote(invocation_id, safe='')}/output", None)

    def attach(self, invocation_id: str, *, timeout: float | None = None) -> InvocationResult:
        """Block until the invocation completes (or `timeout`, raising RestateTimeout)."""
        validate_invocation_id(invocation_id)
        return self._result(f"{self.ingress_url}/restate/invocation/{quote(invocation_id, safe='')}/attach", timeout)

    def _result(self, url: str, timeout: float | None) -> InvocationResult:
        response = self._request("GET", url, timeout=timeout)
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        return InvocationResult(_result_state(status, response.content, url), status, response.text, content_type)

    def result_now(self, target: ResultTarget) -> InvocationResult:
        """`output` for a target (an invocation, or a workflow by its id): never blocks."""
        return self._result(f"{self.ingress_url}{target.path('output')}", None)


# ---------------------------------------------------------------- results by target (attach)

# The workflow's main handler as the SDKs name it by default. Restate also attaches a
# workflow's run by invocation id, so a main handler named otherwise still works.
WORKFLOW_MAIN_HANDLER = "run"


@dataclass(frozen=True)
class ResultTarget:
    """Whose result to wait for or fetch: an invocation by id, or a workflow run by
    its workflow id (`/restate/workflow/{name}/{id}/...`)."""

    invocation_id: str
    workflow: str | None = None
    workflow_id: str | None = None

    def __post_init__(self) -> None:
        validate_invocation_id(self.invocation_id)

    @property
    def by_workflow(self) -> bool:
        return self.workflow is not None and self.workflow_id is not None

    def path(self, what: str) -> str:
        if what not in ("attach", "output"):
            raise ValueError(f"unknown result endpoint {what!r}")
        if self.workflow is not None and self.workflow_id is not None:
            return f"/restate/workflow/{quote(self.workflow, safe='')}/{quote(self.workflow_id, safe='')}/{what}"
        return f"/restate/invocation/{quote(self.invocation_id, safe='')}/{what}"


def _result_state(status: int, body: bytes, url: str) -> ResultState:
    if status == 200:
        return ResultState.SUCCEEDED
    if status == 470:
        return ResultState.NOT_READY
    # A handler's terminal failure carries its own code (any, 503 included) and says
    # "source": "invocation"; the ingress's own errors say "source": "ingress".
    from_invocation = b'"source":"invocation"' in body.replace(b" ", b"")
    if status == 404:
        return ResultState.NOT_FOUND
    if status >= 500 and status != 500 and not from_invocation:
        raise RestateUnavailable(f"ingress answered {status} for {url}")
    if status in (400, 405) and b"idempotency" in body.lower():
        return ResultState.UNAVAILABLE
    return ResultState.FAILED


async def result_async(
    ingress_url: str, target: ResultTarget, *, what: str, max_body: int, connect_timeout: float = 10.0
) -> InvocationResult:
    """GET a target's attach (blocks, with no read timeout: an invocation may run for
    days) or output, asynchronously: an attach wait is one coroutine, not a thread.
    The body is read up to `max_body` bytes; the rest is dropped, never held."""
    url = f"{ingress_url.rstrip('/')}{target.path(what)}"
    timeout = httpx.Timeout(connect_timeout, read=None if what == "attach" else connect_timeout)
    try:
        async with httpx.AsyncClient(timeout=timeout) as http, http.stream("GET", url) as response:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > max_body:
                    truncated = True
                    break
            body = b"".join(chunks)[:max_body]
            status = response.status_code
            content_type = response.headers.get("content-type", "")
    except httpx.TimeoutException as exc:
        raise RestateTimeout(f"Restate did not answer GET {url} within the timeout") from exc
    except httpx.TransportError as exc:
        raise RestateUnavailable(f"cannot reach Restate at {url}: {exc}") from exc
    state = _result_state(status, body, url)
    return InvocationResult(state, status, body.decode("utf-8", errors="replace"), content_type, truncated)


def _operation_result(operation: str, invocation_id: str, response: httpx.Response) -> OperationResult:
    status = response.status_code
    if status >= 500:
        raise RestateUnavailable(f"{operation} {invocation_id}: Restate answered {status}: {_error_message(response)}")
    data: dict[str, Any] = {}
    if status < 300 and response.content:
        try:
            data = response.json()
        except ValueError:
            data = {}
    outcome = Outcome.DONE if status < 300 else _OUTCOME_BY_STATUS.get(status, Outcome.INVALID)
    message = _OPERATION_MESSAGES.get((operation, outcome)) or _error_message(response) or outcome.value
    if operation == "cancel" and status == 200:
        # 1.7.12 answers 202 for a cancel it has to carry out, and 200 when it was done at
        # once: the invocation had not started (a delayed message, a queued call), and
        # Restate dropped it without a trace (no row in sys_invocation, /output 404).
        message = _CANCELLED_AT_ONCE
    return OperationResult(operation, invocation_id, outcome, status, message, data)


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks, for pyarrow's stream reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _batch_rows(batch: Any) -> list[dict[str, Any]]:
    """Row dicts from a record batch, dropping nulls as the JSON format does.

    Restate's timestamps are nanosecond-typed but millisecond-valued; Python
    datetimes hold microseconds, so the cast loses nothing.
    """
    import pyarrow as pa

    columns = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            column = column.cast(pa.timestamp("us", tz=column.type.tz or "UTC"), safe=False)
        columns.append((name, column.to_pylist()))
    return [{name: values[i] for name, values in columns if values[i] is not None} for i in range(batch.num_rows)]


_CANCELLED_AT_ONCE = (
    "Cancelled at once: it had not started yet (a delayed message before its fire time, or a call "
    "queued on an object), so Restate dropped it and keeps no record of it."
)
_OPERATION_MESSAGES = {
    (
        "cancel",
        Outcome.DONE,
    ): "Cancellation requested: Restate cancels the invocation and its call tree, running compensations.",
    ("cancel", Outcome.CONFLICT): "Already completed: there is nothing to cancel.",
    ("kill", Outcome.DONE): "Killed: the invocation and its children stop now, without compensations.",
    ("kill", Outcome.CONFLICT): "Already completed: there is nothing to kill.",
    ("pause", Outcome.DONE): "Paused.",
    ("pause", Outcome.CONFLICT): "Only a running invocation can be paused.",
    ("resume", Outcome.DONE): "Resumed (a backing-off invocation retries now).",
    ("resume", Outcome.NOT_READY): "Not started yet (scheduled or queued): nothing to resume.",
    ("resume", Outcome.CONFLICT): "Not paused or backing off: nothing to resume.",
    ("restart-as-new", Outcome.DONE): "Restarted as a new invocation.",
    ("restart-as-new", Outcome.CONFLICT): "Only a completed invocation can be restarted.",
    ("restart-as-new", Outcome.UNSUPPORTED): "Workflows cannot be restarted as new.",
    ("purge", Outcome.DONE): "Purged from Restate.",
    ("purge", Outcome.CONFLICT): "Only a completed invocation can be purged.",
    ("purge-journal", Outcome.DONE): "Journal purged.",
    ("purge-journal", Outcome.CONFLICT): "Only a completed invocation's journal can be purged.",
}
for _op in OPERATIONS:
    _OPERATION_MESSAGES.setdefault(
        (_op, Outcome.NOT_FOUND), "Restate does not know this invocation (purged, expired or never existed)."
    )


def _idempotency_header(key: str | None) -> dict[str, str]:
    return {"idempotency-key": key} if key else {}


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:500]
    return str(body)[:500]


def client_from_settings() -> RestateClient:
    from django.conf import settings

    return RestateClient(
        admin_url=settings.RESTATE_ADMIN_URL,
        ingress_url=settings.RESTATE_INGRESS_URL,
        timeout=settings.RESTATE_TIMEOUT_S,
    )
