"""Generate the Python gRPC stubs from ``proto/edgecloud/v1/*.proto``.

Run as ``python -m edgecloud.proto.build`` (``make`` does it before tests and the
demo). The stubs are written next to the ``.proto`` files and are not committed:
they are build output. This folder installs as the package ``edgecloud.proto``,
so protoc runs from a staging root in which ``edgecloud/proto`` is this folder:
imports inside the stubs come out as ``from edgecloud.proto.edgecloud.v1 import
reasoner_pb2``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

__all__ = ["ensure_generated", "generate", "main"]

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE_PATH = Path("edgecloud", "proto")
"""Where this folder sits in the import namespace."""


def _sources() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def _stale(source: Path) -> bool:
    outputs = [source.with_name(source.stem + suffix) for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")]
    return any(not o.exists() or o.stat().st_mtime < source.stat().st_mtime for o in outputs)


def generate(*, force: bool = False) -> list[Path]:
    """Run protoc on every stale ``.proto``; returns the sources compiled."""
    from grpc_tools import protoc  # build-time dependency (grpcio-tools)

    compiled = []
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="edgecloud-protoc-") as stage:
        (Path(stage) / PACKAGE_PATH).parent.mkdir(parents=True)
        (Path(stage) / PACKAGE_PATH).symlink_to(PROTO_DIR, target_is_directory=True)
        for source in _sources():
            if not force and not _stale(source):
                continue
            relative = (PACKAGE_PATH / source.relative_to(PROTO_DIR)).as_posix()
            status = protoc.main(
                [
                    "grpc_tools.protoc",
                    f"-I{stage}",
                    f"-I{include}",
                    f"--python_out={stage}",
                    f"--pyi_out={stage}",
                    f"--grpc_python_out={stage}",
                    relative,
                ]
            )
            if status != 0:
                raise SystemExit(f"protoc failed on {relative} (exit {status})")
            compiled.append(source)
    return compiled


def ensure_generated() -> None:
    """Generate missing or stale stubs (importing the stubs' package calls this)."""
    if not any(_stale(source) for source in _sources()):
        return
    try:
        generate()
    except ImportError as exc:
        raise ImportError(
            "the gRPC stubs in proto/ are missing or stale and grpcio-tools is not installed; "
            "install it or run `python -m edgecloud.proto.build` where it is"
        ) from exc


def main() -> int:
    compiled = generate(force="--force" in sys.argv[1:])
    for source in compiled:
        print(f"generated stubs for {source.relative_to(PROTO_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
