"""Generate the mfa.v1 Python stubs (grpcio-tools + mypy-protobuf) from protos/.

Usage: python tools/gen_proto.py [OUT_DIR]   (default: clients/python)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("mfa/v1")


def generate(out_dir: Path) -> None:
    target = out_dir / PACKAGE
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    plugin = Path(sys.executable).with_name("protoc-gen-mypy")
    grpc_plugin = Path(sys.executable).with_name("protoc-gen-mypy_grpc")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in (out_dir / "mfa", target):
        (package / "__init__.py").touch()
    (out_dir / "mfa" / "py.typed").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "clients" / "python")
