"""A Python agent of attestd's tests, using clients/python (attestd_agent).

Usage: task_agent.py SOCKET_URI MODE [options]

MODE start: starts a task and prints it as JSON.
MODE lifecycle: starts a task, lists the caller's tasks, ends the task, and
prints {"started": {...}, "listed": [task ids], "ended": [task ids]}.
MODE call: starts a task, then calls a tool of the tool gateway example
(--gateway URL --call TOOL --on RESOURCE --text TEXT) with its token, and
prints {"task": {...}, "status": HTTP status, "answer": {...}}.

A refusal exits 3 and prints {"code": ..., "message": ...} on stdout.
"""

import argparse
import dataclasses
import json
import sys
import urllib.error
import urllib.request

import attestd_agent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("mode", choices=["start", "lifecycle", "call"])
    parser.add_argument("--purpose", required=True)
    parser.add_argument("--tool", action="append", default=[])
    parser.add_argument("--resource", action="append", default=[])
    parser.add_argument("--audience", action="append", default=[])
    parser.add_argument("--ttl", type=int, default=0)
    parser.add_argument("--parent-token")
    parser.add_argument("--gateway")
    parser.add_argument("--call")
    parser.add_argument("--on")
    parser.add_argument("--text", default="")
    args = parser.parse_args()
    try:
        with attestd_agent.Client(args.socket) as client:
            task = client.start_task(
                args.purpose, args.tool, resources=args.resource, audience=args.audience,
                ttl=args.ttl, parent_token=args.parent_token)
            if args.mode == "start":
                print(json.dumps(dataclasses.asdict(task)))
                return 0
            if args.mode == "call":
                status, answer = call_tool(args, task.token)
                print(json.dumps({"task": dataclasses.asdict(task), "status": status, "answer": answer}))
                return 0
            listed = [t.task_id for t in client.list_tasks()]
            ended = client.end_task(task.task_id)
    except attestd_agent.AttestdError as error:
        print(json.dumps({"code": error.code.name, "message": error.message}))
        return 3
    print(json.dumps({"started": dataclasses.asdict(task), "listed": listed, "ended": ended}))
    return 0


def call_tool(args, token):
    """POSTs one tool call to the gateway with the task token."""
    body = json.dumps({"resource": args.on, "args": {"text": args.text}}).encode()
    request = urllib.request.Request(
        f"{args.gateway}/tools/{args.call}", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


if __name__ == "__main__":
    sys.exit(main())
