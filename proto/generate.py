"""Regenerate the Python modules of the kubelet APIs from the `.proto` files (a developer tool).

Run from anywhere: `python -m proto.generate [--out DIR]`. The default output is the repository
root, so the committed modules are rewritten in place; `--out` writes the same tree
(`DIR/proto/...`) elsewhere, which is how the tests check that the committed files are current.

grpcio-tools is pinned (see the `test` extra) because its bundled protoc decides the exact bytes of
the output. The `.proto` files are compiled with the repository root as the only include path, so
the generated imports read `from proto.deviceplugin.v1beta1 import api_pb2`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Relative to REPO_ROOT; this path (not the absolute one) is what ends up inside the modules.
PROTO_FILES: tuple[str, ...] = (
    "proto/deviceplugin/v1beta1/api.proto",
    "proto/dra/v1/api.proto",
    "proto/dra/v1beta1/api.proto",
    "proto/drahealth/v1alpha1/api.proto",
    "proto/pluginregistration/v1/api.proto",
    "proto/podresources/v1/api.proto",
)

# For every .proto file: the modules it produces, next to it.
GENERATED_SUFFIXES: tuple[str, ...] = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

COMMAND_HINT = "python -m proto.generate"


def generated_files() -> list[str]:
    """Every generated file, relative to the repository root, in a stable order."""
    return [
        proto[: -len(".proto")] + suffix for proto in PROTO_FILES for suffix in GENERATED_SUFFIXES
    ]


def protoc_args(out: Path) -> list[str]:
    """The exact protoc command line (argv[0] included) that produces the committed modules."""
    return [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(REPO_ROOT / proto) for proto in PROTO_FILES),
    ]


def generate(out: Path = REPO_ROOT) -> None:
    """Compile every `.proto` file into `out/proto/...`; raises RuntimeError when protoc fails."""
    # Imported here so that importing this module (to list the files) needs no grpcio-tools.
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    status = protoc.main(protoc_args(out))
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}; see its messages above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proto.generate", description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT,
        help="folder to write the proto/... tree into (default: the repository root)",
    )
    args = parser.parse_args(argv)
    try:
        generate(args.out.resolve())
    except (RuntimeError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name in generated_files():
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
