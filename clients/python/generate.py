"""Generates the gRPC stubs of attestd's agent API for attestd_agent.

The stubs are generated from ../../proto/attestd/agent/v1/agent.proto with
the pinned grpcio-tools (requirements-dev.txt) and committed, so agents
install the client with nothing but grpcio and protobuf. The proto is
compiled under the name attestd_agent/v1/agent.proto, so the generated
modules import each other as attestd_agent.v1.*; the package
(attestd.agent.v1), and so every gRPC method path, is the proto's own.

Usage: generate.py          write attestd_agent/v1/agent_pb2{,_grpc}.py
       generate.py --check  exit 1 if the committed stubs are not what the
                            proto and the pinned tools generate
"""

import filecmp
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto" / "attestd" / "agent" / "v1" / "agent.proto"
NAME = Path("attestd_agent") / "v1" / "agent.proto"
GENERATED = ["agent_pb2.py", "agent_pb2_grpc.py"]


def generate(out: Path) -> None:
    """Writes the stubs into out/attestd_agent/v1/."""
    with tempfile.TemporaryDirectory() as protos:
        source = Path(protos) / NAME
        source.parent.mkdir(parents=True)
        shutil.copyfile(PROTO, source)
        well_known = importlib.resources.files("grpc_tools") / "_proto"
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{protos}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(NAME),
        ])
    if status != 0:
        sys.exit(f"protoc failed ({status})")


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    target = HERE / "attestd_agent" / "v1"
    with tempfile.TemporaryDirectory() as out:
        generate(Path(out))
        fresh = Path(out) / "attestd_agent" / "v1"
        if check:
            stale = [name for name in GENERATED
                     if not (target / name).exists() or not filecmp.cmp(fresh / name, target / name, shallow=False)]
            if stale:
                print(f"stale generated stubs: {', '.join(stale)}; run clients/python/generate.py", file=sys.stderr)
                return 1
            print("generated stubs are current")
            return 0
        for name in GENERATED:
            shutil.copyfile(fresh / name, target / name)
            print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
