"""Build hook: generates the gRPC stubs from the repository's proto/ at build time.

The stubs (``stepcache/v1/*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``) are never
committed: ``build_py`` runs ``grpc_tools.protoc`` into the build directory, so
every wheel carries stubs made from exactly the proto it was built with. An sdist
carries a copy of the proto so that a wheel can be built from it elsewhere.

An editable install (``pip install -e clients/python``) imports the package
from this source tree, so there ``build_py`` writes the stubs into
``stepcache/v1/`` beside the sources (git-ignored); run the same install again
after the proto changes.

The runtime requirements on ``grpcio`` and ``protobuf`` follow the grpcio-tools
that generated the stubs: generated code refuses older runtimes.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
# In the repository the proto lives two levels up; in an sdist, beside this file.
PROTO_ROOTS = (HERE.parent.parent / "proto", HERE / "proto")


def proto_root() -> Path:
    """The first directory that holds ``stepcache/v1/*.proto``."""
    for root in PROTO_ROOTS:
        if any((root / "stepcache" / "v1").glob("*.proto")):
            return root
    raise FileNotFoundError("no stepcache/v1/*.proto under " + " or ".join(str(r) for r in PROTO_ROOTS))


def generate(out_dir: Path) -> None:
    """Runs protoc from grpcio-tools: messages, type stubs and gRPC services."""
    from grpc_tools import protoc  # a build requirement, see pyproject.toml

    root = proto_root()
    protos = sorted(str(p) for p in (root / "stepcache" / "v1").glob("*.proto"))
    # The well-known types (google/protobuf/*.proto) ship with grpcio-tools.
    well_known = Path(protoc.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    # protoc names modules after the proto path (stepcache/v1/x.proto ->
    # stepcache.v1.x_pb2); `stepcache/v1` needs to be a package.
    init = out_dir / "stepcache" / "v1" / "__init__.py"
    init.write_text('"""Generated at build time from proto/stepcache/v1: do not edit."""\n')


class BuildPyWithStubs(build_py):
    """``build_py`` that also writes the generated stubs into the build tree."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            # setuptools sets editable_mode for `pip install -e`: the source tree is what imports.
            generate(HERE if getattr(self, "editable_mode", False) else Path(self.build_lib))


class SdistWithProto(sdist):
    """``sdist`` that carries the proto so that the sdist builds on its own."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        shutil.copytree(
            proto_root() / "stepcache",
            Path(base_dir) / "proto" / "stepcache",
            dirs_exist_ok=True,
        )


def runtime_requirements() -> list[str]:
    """grpcio and protobuf at least as new as the code generator in this build."""
    tools_version = importlib.metadata.version("grpcio-tools")
    protobuf = [
        r for r in importlib.metadata.requires("grpcio-tools") or [] if r.replace(" ", "").startswith("protobuf")
    ]
    return [f"grpcio>={tools_version}", *protobuf, "blake3>=0.4"]


setup(
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto},
    install_requires=runtime_requirements(),
)
