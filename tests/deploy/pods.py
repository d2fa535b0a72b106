"""What a container would see at run time, worked out from the manifests offline: its variables
(downward API and Secret values included, ``$(VAR)`` expanded as the kubelet does), its
arguments, and the files its ConfigMap and Secret volumes mount."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.deploy.kustomize import Manifest

# Sample values for the downward API fields the manifests use.
DOWNWARD = {
    "metadata.name": "inference-node-0",
    "metadata.namespace": "inference",
    "status.podIP": "10.1.2.3",
    "spec.nodeName": "gpu-node-1",
}
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest | None:
    for m in manifests:
        if m["kind"] == kind and m["metadata"]["name"] == name:
            return m
    return None


def config_data(manifests: list[Manifest], kind: str, name: str) -> dict[str, str]:
    """A ConfigMap's ``data`` or a Secret's ``stringData`` (KeyError when it does not exist)."""
    found = find(manifests, kind, name)
    if found is None:
        raise KeyError(f"{kind} {name!r} is referenced but not defined")
    field = "data" if kind == "ConfigMap" else "stringData"
    data: dict[str, str] = found.get(field, {})
    return data


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: defined names are replaced, others left as written."""
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def _value_of(entry: Manifest, manifests: list[Manifest], env: Mapping[str, str]) -> str:
    if "value" in entry:
        return expand(str(entry["value"]), env)
    source = entry["valueFrom"]
    if "fieldRef" in source:
        return DOWNWARD[source["fieldRef"]["fieldPath"]]
    for kind, ref_key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
        if ref_key in source:
            ref = source[ref_key]
            data = config_data(manifests, kind, ref["name"])
            if ref["key"] not in data:
                raise KeyError(f"{kind} {ref['name']!r} has no key {ref['key']!r}")
            return data[ref["key"]]
    raise KeyError(f"unsupported valueFrom: {source}")


def environment(
    container: Manifest, manifests: list[Manifest], image_env: Mapping[str, str]
) -> dict[str, str]:
    """The container's variables: the image's, then its own in order (later ones see earlier)."""
    env = dict(image_env)
    for entry in container.get("env", []):
        env[entry["name"]] = _value_of(entry, manifests, env)
    return env


def mounted_files(
    container: Manifest, pod: Manifest, manifests: list[Manifest], root: Path
) -> dict[str, Path]:
    """Write the files of the container's ConfigMap/Secret mounts under ``root``; returns
    {path in the container: local path} for each mount point."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume: dict[str, Any] = volumes.get(mount["name"], {})
        if "configMap" in volume:
            data = config_data(manifests, "ConfigMap", volume["configMap"]["name"])
            items = volume["configMap"].get("items")
        elif "secret" in volume:
            data = config_data(manifests, "Secret", volume["secret"]["secretName"])
            items = volume["secret"].get("items")
        else:
            continue
        files = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
        for key in files:
            if key not in data:
                raise KeyError(f"volume {mount['name']!r} mounts missing key {key!r}")
        local = root / mount["mountPath"].strip("/")
        if "subPath" in mount:
            sub = mount["subPath"]
            keys = [k for k, p in files.items() if p == sub]
            if not keys:
                raise KeyError(f"volume {mount['name']!r} has no file {sub!r} for its subPath")
            key = keys[0]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(data[key], encoding="utf-8")
        else:
            for key, rel in files.items():
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                (local / rel).write_text(data[key], encoding="utf-8")
        out[mount["mountPath"]] = local
    return out


def localise(value: str, mounts: Mapping[str, Path]) -> str:
    """Rewrite container paths under a mount point to the files written by mounted_files."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path) :]
    return value
