#!/usr/bin/env python3
"""Static checks of deploy/: every YAML parses, and the manifests hang together.

There is no cluster or Docker engine in CI, so this is what "validated" means
for deploy/: YAML syntax (PyYAML) plus the fields that make the deployment
work: the kinds are present, the StatefulSet mounts its PVC at the data dir,
the gRPC probes and Services point at the container's port, the pods run as
non-root with resources and a termination grace period, and the Dockerfile's
runtime stage drops root.

    python scripts/validate-deploy.py [deploy-dir]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import tomllib
import yaml

REQUIRED_KINDS = {"StatefulSet", "Deployment", "Service"}
# The env var that carries --store (a PostgreSQL URL) into a replica.
STORE_ENV = "STEPCACHE_STORE"
DATA_DIR = "/data"


class Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def check(self, ok: bool, where: str, what: str) -> None:
        if not ok:
            self.errors.append(f"{where}: {what}")


Doc = tuple[Path, str, dict[str, Any]]


def load(deploy: Path, c: Checker) -> list[Doc]:
    """(file, a readable name, document) for every YAML document under deploy/."""
    docs: list[Doc] = []
    files = sorted(p for p in deploy.rglob("*") if p.suffix in (".yaml", ".yml"))
    c.check(bool(files), str(deploy), "no YAML files")
    for path in files:
        try:
            loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            c.check(False, str(path), f"does not parse: {e}")
            continue
        for i, doc in enumerate(loaded):
            where = f"{path}#{i}"
            if not isinstance(doc, dict):
                c.check(False, where, "is not a mapping")
                continue
            for key in ("apiVersion", "kind"):
                c.check(bool(doc.get(key)), where, f"{key} is missing")
            if doc.get("kind") != "Kustomization":
                c.check(bool(doc.get("metadata", {}).get("name")), where, "metadata.name is missing")
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name', '')}"
            docs.append((path, f"{path.relative_to(deploy.parent)} {name}", doc))
    return docs


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    """Port name (and the number itself, as a string) -> containerPort."""
    ports: dict[str, int] = {}
    for p in container.get("ports", []):
        ports[str(p["containerPort"])] = p["containerPort"]
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    return ports


def check_statefulset(where: str, sts: dict[str, Any], services: dict[str, dict[str, Any]], c: Checker) -> None:
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    c.check(spec.get("replicas", 1) == 1, where, "sled is single-process: replicas must be 1")
    match = spec.get("selector", {}).get("matchLabels", {})
    c.check(bool(match) and match.items() <= labels.items(), where, "selector.matchLabels must match the pod labels")
    governing = services.get(spec.get("serviceName", ""))
    c.check(governing is not None, where, f"serviceName {spec.get('serviceName')!r} is not a Service here")
    if governing is not None:
        c.check(governing["spec"].get("clusterIP") == "None", where, "the governing Service must be headless")

    grace = pod.get("terminationGracePeriodSeconds")
    c.check(isinstance(grace, int) and grace >= 10, where, "terminationGracePeriodSeconds (>= 10 s) is missing")
    pod_sc = pod.get("securityContext", {})
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    c.check(bool(claims), where, "no volumeClaimTemplates (PVC for the data dir)")

    containers = pod.get("containers", [])
    c.check(len(containers) >= 1, where, "no containers")
    for ct in containers:
        cw = f"{where} container {ct.get('name')}"
        sc = {**pod_sc, **ct.get("securityContext", {})}
        c.check(sc.get("runAsNonRoot") is True, cw, "runAsNonRoot must be true")
        c.check(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] != 0, cw, "runAsUser must be a non-zero UID")
        c.check(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
        res = ct.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                c.check(r in res.get(kind, {}), cw, f"resources.{kind}.{r} is missing")

        ports = container_ports(ct)
        c.check(bool(ports), cw, "no containerPort")
        args = ct.get("args", [])
        listen = args[args.index("--listen") + 1] if "--listen" in args[:-1] else ""
        c.check(listen.rsplit(":", 1)[-1] in ports, cw, f"--listen {listen!r} is not on a containerPort")
        c.check(
            "--data-dir" in args[:-1] and args[args.index("--data-dir") + 1] == DATA_DIR,
            cw,
            f"--data-dir must be {DATA_DIR}",
        )
        mounts = {m["name"]: m["mountPath"] for m in ct.get("volumeMounts", [])}
        c.check(any(mounts.get(cl) == DATA_DIR for cl in claims), cw, f"no PVC mounted at {DATA_DIR}")

        for probe in ("livenessProbe", "readinessProbe"):
            grpc = ct.get(probe, {}).get("grpc")
            c.check(grpc is not None, cw, f"{probe} must be a native grpc probe")
            if grpc is not None:
                c.check(
                    str(grpc.get("port")) in ports, cw, f"{probe}.grpc.port {grpc.get('port')} is not a containerPort"
                )

        for name, svc in services.items():
            if svc["spec"].get("selector", {}).items() <= labels.items():
                for p in svc["spec"].get("ports", []):
                    target = str(p.get("targetPort", p.get("port")))
                    c.check(target in ports, f"Service {name}", f"targetPort {target} is not a containerPort of {cw}")


def check_deployment(where: str, dep: dict[str, Any], services: dict[str, dict[str, Any]], c: Checker) -> None:
    """Replicas on PostgreSQL: stateless pods, --store from a Secret, no data dir."""
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    c.check(spec.get("replicas", 1) >= 2, where, "a PostgreSQL deployment runs several replicas")
    match = spec.get("selector", {}).get("matchLabels", {})
    c.check(bool(match) and match.items() <= labels.items(), where, "selector.matchLabels must match the pod labels")
    grace = pod.get("terminationGracePeriodSeconds")
    c.check(isinstance(grace, int) and grace >= 10, where, "terminationGracePeriodSeconds (>= 10 s) is missing")
    pod_sc = pod.get("securityContext", {})
    containers = pod.get("containers", [])
    c.check(len(containers) >= 1, where, "no containers")
    for ct in containers:
        cw = f"{where} container {ct.get('name')}"
        sc = {**pod_sc, **ct.get("securityContext", {})}
        c.check(sc.get("runAsNonRoot") is True, cw, "runAsNonRoot must be true")
        c.check(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
        res = ct.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                c.check(r in res.get(kind, {}), cw, f"resources.{kind}.{r} is missing")
        ports = container_ports(ct)
        args = ct.get("args", [])
        listen = args[args.index("--listen") + 1] if "--listen" in args[:-1] else ""
        c.check(listen.rsplit(":", 1)[-1] in ports, cw, f"--listen {listen!r} is not on a containerPort")
        c.check("--data-dir" not in args, cw, "replicas on PostgreSQL keep no --data-dir")
        c.check("--store" not in args, cw, "the --store URL (with its password) belongs in a Secret, not in args")
        env = {e.get("name"): e for e in ct.get("env", [])}
        ref = env.get(STORE_ENV, {}).get("valueFrom", {}).get("secretKeyRef", {})
        c.check(bool(ref.get("name")) and bool(ref.get("key")), cw, f"{STORE_ENV} must come from a secretKeyRef")
        for probe in ("livenessProbe", "readinessProbe"):
            grpc = ct.get(probe, {}).get("grpc")
            on_port = grpc is not None and str(grpc.get("port")) in ports
            c.check(on_port, cw, f"{probe} must be a grpc probe on a containerPort")
        selected = False
        for name, svc in services.items():
            if svc["spec"].get("selector", {}).items() <= labels.items():
                selected = True
                for p in svc["spec"].get("ports", []):
                    target = str(p.get("targetPort", p.get("port")))
                    c.check(target in ports, f"Service {name}", f"targetPort {target} is not a containerPort of {cw}")
        c.check(selected, where, "no Service selects these pods")


def check_dockerfile(path: Path, c: Checker) -> None:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    c.check(len(stages) >= 2, str(path), "must be multi-stage (a builder and a runtime stage)")
    runtime = lines[stages[-1] :] if stages else []
    # The builder must see every path the build reads besides src/ (patched
    # crates, workspace members, the cargo config): a missing COPY only fails in `docker build`.
    copied = {ln.split()[1].rstrip("/") for ln in lines if ln.upper().startswith("COPY ") and "--from" not in ln}
    manifest = tomllib.loads((path.parent.parent / "Cargo.toml").read_text())
    paths = [dep["path"] for dep in manifest.get("patch", {}).get("crates-io", {}).values() if "path" in dep]
    # Cargo loads every workspace member's manifest, even to build one binary.
    paths += manifest.get("workspace", {}).get("members", [])
    for needed in [p.split("/")[0] for p in paths] + [".cargo"]:
        c.check(needed in copied, str(path), f"the builder does not COPY {needed}")
    users = [ln.split()[1] for ln in runtime if ln.upper().startswith("USER ")]
    c.check(
        bool(users) and users[-1].split(":")[0] not in ("root", "0"),
        str(path),
        "the runtime stage must run as non-root",
    )


def main(argv: list[str]) -> int:
    deploy = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "deploy"
    c = Checker()
    docs = load(deploy, c)
    kinds = {d["kind"] for _, _, d in docs}
    c.check(kinds >= REQUIRED_KINDS, str(deploy), f"missing kinds: {sorted(REQUIRED_KINDS - kinds)}")
    services = {d["metadata"]["name"]: d for _, _, d in docs if d["kind"] == "Service"}
    for path, where, doc in docs:
        if doc["kind"] == "StatefulSet":
            check_statefulset(where, doc, services, c)
        elif doc["kind"] == "Deployment":
            check_deployment(where, doc, services, c)
        elif doc["kind"] == "Kustomization":
            for res in doc.get("resources", []):
                c.check((path.parent / res).exists(), where, f"resource {res} does not exist")
    dockerfile = deploy / "Dockerfile"
    c.check(dockerfile.exists(), str(deploy), "no Dockerfile")
    if dockerfile.exists():
        check_dockerfile(dockerfile, c)

    for _, where, _ in docs:
        print(f"parsed {where}")
    if c.errors:
        print("\n".join(f"FAIL {e}" for e in c.errors))
        return 1
    print(f"validate-deploy: {len(docs)} documents, kinds {sorted(kinds)}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
