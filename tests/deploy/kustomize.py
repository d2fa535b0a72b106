"""A small, offline stand-in for ``kubectl kustomize`` covering what ``deploy/k8s`` uses.

It follows a kustomization's ``resources`` (files and directories holding a
``kustomization.yaml``), then applies its ``namespace`` and ``images`` transformers, innermost
kustomization first, as kustomize does. Any other field fails the build, so a kustomization that
grows a feature this builder ignores cannot pass the checks unseen.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "namespace", "resources", "images"})
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"})
Manifest = dict[str, Any]


class KustomizeError(ValueError):
    """A kustomization this builder cannot build faithfully."""


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document in a file."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def read_kustomization(directory: Path) -> Manifest:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    docs = load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise KustomizeError(f"{path} must hold one mapping")
    data: Manifest = docs[0]
    unknown = set(data) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this builder does not apply: {sorted(unknown)}")
    if data.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")
    return data


def kustomization_dirs(directory: Path) -> Iterator[Path]:
    """``directory`` and every kustomization it reaches through ``resources``."""
    yield directory
    for entry in read_kustomization(directory).get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            yield from kustomization_dirs(target)


def pod_spec(manifest: Manifest) -> Manifest | None:
    """The pod template's spec of a workload, or None for other kinds."""
    if manifest["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        spec: Manifest = manifest["spec"]["template"]["spec"]
        return spec
    return None


def containers(manifest: Manifest) -> list[Manifest]:
    spec = pod_spec(manifest)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _image_name(image: str) -> tuple[str, str | None]:
    """``name[:tag]`` split (a registry port's colon is part of the name)."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, None
    return name, tag


def _apply_images(manifests: list[Manifest], images: list[Manifest]) -> None:
    for manifest in manifests:
        for container in containers(manifest):
            name, tag = _image_name(container["image"].split("@", 1)[0])
            for rule in images:
                if rule["name"] != name:
                    continue
                name = rule.get("newName", name)
                tag = str(rule["newTag"]) if "newTag" in rule else tag
                digest = rule.get("digest")
                container["image"] = (
                    f"{name}@{digest}" if digest else f"{name}:{tag}" if tag else name
                )


def _apply_namespace(manifests: list[Manifest], namespace: str) -> None:
    for manifest in manifests:
        if manifest["kind"] == "Namespace":
            manifest["metadata"]["name"] = namespace
        elif manifest["kind"] not in CLUSTER_SCOPED:
            manifest["metadata"]["namespace"] = namespace


def build(directory: Path) -> list[Manifest]:
    """The resources ``kubectl kustomize directory`` would print, in order."""
    data = read_kustomization(directory)
    out: list[Manifest] = []
    for entry in data.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            out.extend(build(target))
        elif target.is_file():
            out.extend(copy.deepcopy(load_documents(target)))
        else:
            raise KustomizeError(f"{directory / 'kustomization.yaml'}: no resource {entry!r}")
    if "namespace" in data:
        _apply_namespace(out, str(data["namespace"]))
    if "images" in data:
        _apply_images(out, list(data["images"]))
    seen: set[tuple[str, str | None, str]] = set()
    for manifest in out:
        key = (
            manifest["kind"],
            manifest["metadata"].get("namespace"),
            manifest["metadata"]["name"],
        )
        if key in seen:
            raise KustomizeError(f"{directory}: {key} is defined twice")
        seen.add(key)
    return out
