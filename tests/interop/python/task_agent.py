"""A Python agent of attestd's tests, using clients/python (attestd_agent).

Usage: task_agent.py SOCKET_URI MODE [options]

MODE start: starts a task and prints it as JSON.
MODE lifecycle: starts a task, lists the caller's tasks, ends the task, and
prints {"started": {...}, "listed": [task ids], "ended": [task ids]}.

A refusal exits 3 and prints {"code": ..., "message": ...} on stdout.
"""

import argparse
import dataclasses
import json
import sys

import attestd_agent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("mode", choices=["start", "lifecycle"])
    parser.add_argument("--purpose", required=True)
    parser.add_argument("--tool", action="append", default=[])
    parser.add_argument("--resource", action="append", default=[])
    parser.add_argument("--audience", action="append", default=[])
    parser.add_argument("--ttl", type=int, default=0)
    parser.add_argument("--parent-token")
    args = parser.parse_args()
    try:
        with attestd_agent.Client(args.socket) as client:
            task = client.start_task(
                args.purpose, args.tool, resources=args.resource, audience=args.audience,
                ttl=args.ttl, parent_token=args.parent_token)
            if args.mode == "start":
                print(json.dumps(dataclasses.asdict(task)))
                return 0
            listed = [t.task_id for t in client.list_tasks()]
            ended = client.end_task(task.task_id)
    except attestd_agent.AttestdError as error:
        print(json.dumps({"code": error.code.name, "message": error.message}))
        return 3
    print(json.dumps({"started": dataclasses.asdict(task), "listed": listed, "ended": ended}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
