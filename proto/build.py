"""Generate the Python gRPC stubs from ``proto/edgecloud/v1/*.proto``.

Run as ``python -m proto.build`` (``make`` does it before tests and the demo).
The stubs are written next to the ``.proto`` files and are not committed:
they are build output. Imports inside them are rooted at the repository, e.g.
``from proto.edgecloud.v1 import reasoner_pb2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["ensure_generated", "generate", "main"]

ROOT = Path(__file__).resolve().parent.parent


def _sources() -> list[Path]:
    return sorted((ROOT / "proto").rglob("*.proto"))


def _stale(source: Path) -> bool:
    outputs = [source.with_name(source.stem + suffix) for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")]
    return any(not o.exists() or o.stat().st_mtime < source.stat().st_mtime for o in outputs)


def generate(*, force: bool = False) -> list[Path]:
    """Run protoc on every stale ``.proto``; returns the sources compiled."""
    from grpc_tools import protoc  # build-time dependency (grpcio-tools)

    compiled = []
    for source in _sources():
        if not force and not _stale(source):
            continue
        include = Path(protoc.__file__).parent / "_proto"
        relative = source.relative_to(ROOT).as_posix()
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"-I{include}",
                f"--python_out={ROOT}",
                f"--pyi_out={ROOT}",
                f"--grpc_python_out={ROOT}",
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
            "install it or run `python -m proto.build` where it is"
        ) from exc


def main() -> int:
    compiled = generate(force="--force" in sys.argv[1:])
    for source in compiled:
        print(f"generated stubs for {source.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
