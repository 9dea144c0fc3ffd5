"""The client: gRPC over attestd's Unix socket, with the security header
every request must carry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import grpc
from google.protobuf import struct_pb2

from attestd_agent.v1 import agent_pb2, agent_pb2_grpc

#: The socket attestd listens on by default.
DEFAULT_SOCKET = "/run/attestd/api.sock"
#: The environment variable SPIFFE clients read the socket address from.
ENDPOINT_ENV = "SPIFFE_ENDPOINT_SOCKET"
#: The metadata every request carries, as for the SPIFFE Workload API.
SECURITY_HEADER = (("workload.spiffe.io", "true"),)


class AttestdError(Exception):
    """attestd refused or failed a call: ``code`` is the gRPC status code
    (``grpc.StatusCode``), ``message`` attestd's reason."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Task:
    """A started task and its token."""

    task_id: str
    token: str
    spiffe_id: str
    #: Unix seconds.
    expires_at: int


@dataclass(frozen=True)
class TaskInfo:
    """A task as ``list_tasks`` shows it."""

    task_id: str
    parent_task_id: Optional[str]
    spiffe_id: str
    owner: str
    purpose: str
    tools: list = field(default_factory=list)
    resources: list = field(default_factory=list)
    audience: list = field(default_factory=list)
    #: Unix seconds.
    started_at: int = 0
    expires_at: int = 0
    #: Unix seconds; None while the task is live.
    ended_at: Optional[int] = None


@dataclass(frozen=True)
class Decision:
    """A policy decision: ``allowed`` is the answer; ``refusal`` says why
    a request was refused before any policy applied."""

    allowed: bool
    decision_id: str
    reasons: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    refusal: str = ""


def socket_target(socket: Optional[str] = None) -> str:
    """The gRPC target of attestd's socket: ``socket``, else
    $SPIFFE_ENDPOINT_SOCKET, else the default path. Accepts
    ``unix:///path``, ``unix:/path`` and ``/path``."""
    address = socket or os.environ.get(ENDPOINT_ENV) or DEFAULT_SOCKET
    path = address
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            path = address[len(prefix):]
            break
    if not path.startswith("/"):
        raise ValueError(f"invalid socket address {address!r}: expected unix:///absolute/path")
    return f"unix:{path}"


class Client:
    """A connection to attestd. Use as a context manager, or call
    :meth:`close`."""

    def __init__(self, socket: Optional[str] = None, timeout: float = 10.0):
        self._channel = grpc.insecure_channel(socket_target(socket))
        self._tasks = agent_pb2_grpc.TasksStub(self._channel)
        self._authz = agent_pb2_grpc.AuthorizationStub(self._channel)
        self._timeout = timeout

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=SECURITY_HEADER, timeout=self._timeout)
        except grpc.RpcError as error:
            raise AttestdError(error.code(), error.details() or "") from None

    def start_task(
        self,
        purpose: str,
        tools: Sequence[str],
        resources: Iterable[str] = (),
        audience: Iterable[str] = (),
        ttl: int = 0,
        parent_token: Optional[str] = None,
        spiffe_id: Optional[str] = None,
    ) -> Task:
        """Starts a task for this process's identity. ``ttl`` in seconds
        (0: the entry's ``tasks.max_ttl``); ``audience`` empty: the token
        is addressed to this agent itself; ``parent_token``: a sub-task,
        which may only narrow its parent."""
        request = agent_pb2.StartTaskRequest(
            purpose=purpose,
            tools=list(tools),
            resources=list(resources),
            audience=list(audience),
            ttl_seconds=int(ttl),
            parent_token=parent_token or "",
            spiffe_id=spiffe_id or "",
        )
        response = self._call(self._tasks.StartTask, request)
        return Task(response.task_id, response.token, response.spiffe_id, response.expires_at)

    def end_task(self, task_id: str) -> list:
        """Ends a task and every task below it; returns their ids."""
        response = self._call(self._tasks.EndTask, agent_pb2.EndTaskRequest(task_id=task_id))
        return list(response.ended)

    def list_tasks(self) -> list:
        """This agent's tasks and those it delegated (root: all)."""
        response = self._call(self._tasks.ListTasks, agent_pb2.ListTasksRequest())
        return [
            TaskInfo(
                task_id=t.task_id,
                parent_task_id=t.parent_task_id or None,
                spiffe_id=t.spiffe_id,
                owner=t.owner,
                purpose=t.purpose,
                tools=list(t.tools),
                resources=list(t.resources),
                audience=list(t.audience),
                started_at=t.started_at,
                expires_at=t.expires_at,
                ended_at=t.ended_at or None,
            )
            for t in response.tasks
        ]

    def authorize(
        self,
        action: str,
        resource: str,
        context: Optional[Mapping] = None,
        token: str = "",
    ) -> Decision:
        """Asks attestd's policy decision point whether the task whose
        ``token`` is given may use tool ``action`` on ``resource``
        (``type:id``). ``context`` becomes the (untrusted) ``args`` of the
        decision."""
        args = struct_pb2.Struct()
        if context:
            args.update(dict(context))
        request = agent_pb2.AuthorizeRequest(action=action, resource=resource, context=args, token=token)
        response = self._call(self._authz.Authorize, request)
        return Decision(
            allowed=response.decision == agent_pb2.ALLOW,
            decision_id=response.decision_id,
            reasons=list(response.reasons),
            errors=list(response.errors),
            refusal=response.refusal,
        )


def start_task(purpose: str, tools: Sequence[str], *, socket: Optional[str] = None, **kwargs) -> Task:
    """:meth:`Client.start_task` on a connection of its own."""
    with Client(socket) as client:
        return client.start_task(purpose, tools, **kwargs)


def end_task(task_id: str, *, socket: Optional[str] = None) -> list:
    """:meth:`Client.end_task` on a connection of its own."""
    with Client(socket) as client:
        return client.end_task(task_id)


def list_tasks(*, socket: Optional[str] = None) -> list:
    """:meth:`Client.list_tasks` on a connection of its own."""
    with Client(socket) as client:
        return client.list_tasks()


def authorize(
    action: str,
    resource: str,
    context: Optional[Mapping] = None,
    *,
    token: str,
    socket: Optional[str] = None,
) -> Decision:
    """:meth:`Client.authorize` on a connection of its own."""
    with Client(socket) as client:
        return client.authorize(action, resource, context, token=token)
