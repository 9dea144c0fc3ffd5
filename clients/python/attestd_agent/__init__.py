"""attestd_agent: attestd's agent API for Python agents.

An agent starts a task from its own process (attestd attests the caller,
so the process that calls is the one that gets the task), receives a task
token bound to the task's declared purpose, tools and resources, asks
attestd before each tool call, and ends the task when done::

    import attestd_agent

    task = attestd_agent.start_task(
        purpose="triage issue 42", tools=["github.comment"],
        resources=["repo:acme/web"], audience=["spiffe://example.org/gateway"],
        ttl=600)
    decision = attestd_agent.authorize("github.comment", "repo:acme/web", token=task.token)
    attestd_agent.end_task(task.task_id)

The socket is SPIFFE_ENDPOINT_SOCKET, else /run/attestd/api.sock, as for
attestd's command line; pass ``socket=`` (or use :class:`Client`) to choose.
"""

from attestd_agent.client import (
    DEFAULT_SOCKET,
    AttestdError,
    Client,
    Decision,
    Task,
    TaskInfo,
    authorize,
    end_task,
    list_tasks,
    socket_target,
    start_task,
)

__all__ = [
    "DEFAULT_SOCKET",
    "AttestdError",
    "Client",
    "Decision",
    "Task",
    "TaskInfo",
    "authorize",
    "end_task",
    "list_tasks",
    "socket_target",
    "start_task",
]
