"""deploy/k8s: schema-valid for the Kubernetes versions we support, and consistent with itself,
with the images and with the settings the router and the agent actually accept."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from node_agent.settings import load_settings as load_agent_settings
from router.auth import digest
from router.settings import load_settings as load_router_settings
from tests.deploy import dockerfile, pods
from tests.deploy.kustomize import Manifest, build, containers, kustomization_dirs, pod_spec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The oldest release still in providers' (extended) support, and a current one.
K8S_VERSIONS = ("1.30.0", "1.35.0")
# Each entry point a platform engineer applies with `kubectl apply -k`.
ENTRY_POINTS = {"ollama": K8S, "vllm": K8S / "overlays" / "vllm", "tgi": K8S / "overlays" / "tgi"}
OUR_IMAGES = {"inference-router": "router.Dockerfile", "inference-router-agent": "agent.Dockerfile"}
MARGIN_S = 5  # time a process needs after its drain bound to close and exit


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[Manifest]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


@pytest.fixture(scope="module", params=sorted(ENTRY_POINTS))
def built(request: pytest.FixtureRequest) -> list[Manifest]:
    return build(ENTRY_POINTS[request.param])


def image_repo(image: str) -> str:
    """The image's name without registry, tag or digest: ``inference-router``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else None


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if pod_spec(m) is not None]


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def selected(manifests: list[Manifest], selector: dict[str, str], namespace: str) -> list[Manifest]:
    return [
        w
        for w in workloads(manifests)
        if w["metadata"].get("namespace") == namespace and selects(selector, pod_labels(w))
    ]


def port_number(container: Manifest, port: int | str) -> int | None:
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return int(p["containerPort"])
    return None


def is_ours(container: Manifest) -> bool:
    return image_repo(container["image"]) in OUR_IMAGES


def our_container(workload: Manifest, image: str) -> Manifest:
    (found,) = [c for c in containers(workload) if image_repo(c["image"]) == image]
    return found


def image_env(image: str) -> dict[str, str]:
    env = dockerfile.parse(DEPLOY / OUR_IMAGES[image])[-1].env()
    env.pop("PATH", None)
    return env


def pre_stop_sleep_s(container: Manifest) -> int:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if command is None:
        return 0
    assert command[0] == "sleep", f"{container['name']}: preStop is not a plain sleep"
    return int(command[1])


def probe_port(probe: Manifest) -> int | str:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if handler in probe:
            port: int | str = probe[handler]["port"]
            return port
    raise AssertionError(f"probe without a port: {probe}")


def router_deployment(manifests: list[Manifest]) -> Manifest:
    (found,) = [
        w
        for w in workloads(manifests)
        if any(image_repo(c["image"]) == "inference-router" for c in containers(w))
    ]
    return found


def gpu_workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [
        w
        for w in workloads(manifests)
        if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in containers(w))
    ]


class TestSchemas:
    """Every manifest file validates, strictly, against the Kubernetes schemas we support."""

    @pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
    @pytest.mark.parametrize("version", K8S_VERSIONS)
    def test_file_validates(self, path: Path, version: str) -> None:
        """Each document of each file passes kubernetes-validate in strict mode."""
        docs = documents(path)
        assert docs, f"{path} holds no manifest"
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {where}: {exc}")

    @pytest.mark.parametrize("version", K8S_VERSIONS)
    def test_built_output_validates(self, built: list[Manifest], version: str) -> None:
        """What `kubectl apply -k` sends (namespace and images set) still validates."""
        for doc in built:
            kubernetes_validate.validate(doc, version, strict=True)

    def test_every_file_is_reachable_from_an_entry_point(self) -> None:
        """No manifest sits outside every kustomization (it would never be applied)."""
        listed: set[Path] = set()
        for entry in ENTRY_POINTS.values():
            for directory in kustomization_dirs(entry):
                kustomization = documents(directory / "kustomization.yaml")[0]
                listed.update((directory / r).resolve() for r in kustomization["resources"])
        orphans = [p for p in manifest_files() if p.resolve() not in listed]
        assert not orphans, f"not in any kustomization: {orphans}"

    def test_entry_points_share_one_namespace(self, built: list[Manifest]) -> None:
        """Everything lands in the one Namespace the build also creates."""
        (namespace,) = [m["metadata"]["name"] for m in built if m["kind"] == "Namespace"]
        assert {m["metadata"].get("namespace") for m in built if m["kind"] != "Namespace"} == {
            namespace
        }


class TestBuilder:
    """The offline builder these tests use agrees with kustomize itself."""

    @pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
    def test_same_output_as_kubectl_kustomize(self, entry: str) -> None:
        """Where kubectl is installed, `kubectl kustomize` yields the very same objects."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl not installed: the offline builder alone is used")
        out = subprocess.run(
            [kubectl, "kustomize", str(ENTRY_POINTS[entry])],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

        def keyed(docs: list[Manifest]) -> dict[tuple[str, str, str], Manifest]:
            return {
                (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
                for d in docs
            }

        real = keyed([d for d in yaml.safe_load_all(out) if d])
        assert keyed(build(ENTRY_POINTS[entry])) == real


class TestReferences:
    """Names that point at other objects, labels and ports all resolve within the build."""

    def test_workload_selectors_match_their_pod_labels(self, built: list[Manifest]) -> None:
        """A Deployment/StatefulSet selector selects its own pod template."""
        for w in workloads(built):
            assert selects(w["spec"]["selector"]["matchLabels"], pod_labels(w)), w["metadata"]

    def test_services_select_pods_and_target_their_ports(self, built: list[Manifest]) -> None:
        """Every Service selects some pods and each targetPort is a port those pods declare."""
        for svc in (m for m in built if m["kind"] == "Service"):
            name, namespace = svc["metadata"]["name"], svc["metadata"]["namespace"]
            backends = selected(built, svc["spec"]["selector"], namespace)
            assert backends, f"Service {name} selects no pods"
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for w in backends:
                    found = [port_number(c, target) for c in containers(w)]
                    assert any(found), f"Service {name}: no port {target!r} on {w['metadata']}"

    def test_probes_use_declared_ports(self, built: list[Manifest]) -> None:
        """Every probe targets a port its own container declares."""
        for w in workloads(built):
            for c in containers(w):
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    if kind in c:
                        port = probe_port(c[kind])
                        assert port_number(c, port), f"{c['name']} {kind}: no port {port!r}"

    def test_config_and_secret_references_exist(self, built: list[Manifest]) -> None:
        """Every ConfigMap/Secret named by a volume or a variable exists with the key used."""
        for w in workloads(built):
            spec = pod_spec(w)
            assert spec is not None
            for c in containers(w):
                pods.environment(c, built, {})  # raises on a missing object or key
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    data = pods.config_data(built, "ConfigMap", volume["configMap"]["name"])
                    items = volume["configMap"].get("items", [])
                elif "secret" in volume:
                    data = pods.config_data(built, "Secret", volume["secret"]["secretName"])
                    items = volume["secret"].get("items", [])
                else:
                    continue
                assert all(i["key"] in data for i in items), volume

    def test_volume_mounts_name_a_volume(self, built: list[Manifest]) -> None:
        """Each volumeMount names a pod volume or a volumeClaimTemplate."""
        for w in workloads(built):
            spec = pod_spec(w)
            assert spec is not None
            names = {v["name"] for v in spec.get("volumes", [])}
            names |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
            for c in containers(w):
                for mount in c.get("volumeMounts", []):
                    assert mount["name"] in names, f"{c['name']}: no volume {mount['name']}"

    def test_prometheus_annotations_name_a_metrics_port(self, built: list[Manifest]) -> None:
        """Pods annotated for scraping name a port one of our containers serves /metrics on."""
        for w in workloads(built):
            notes = w["spec"]["template"]["metadata"].get("annotations", {})
            assert notes.get("prometheus.io/scrape") == "true", w["metadata"]["name"]
            assert notes["prometheus.io/path"] == "/metrics"
            port = int(notes["prometheus.io/port"])
            assert any(port_number(c, port) for c in containers(w) if is_ours(c))


class TestContainers:
    """Containers are sized, pinned and locked down."""

    def test_every_container_has_resources(self, built: list[Manifest]) -> None:
        """CPU and memory requests and a memory limit on every container."""
        for w in workloads(built):
            for c in containers(w):
                res = c.get("resources", {})
                missing = {"cpu", "memory"} - set(res.get("requests", {}))
                assert not missing, f"{c['name']}: no request for {missing}"
                assert "memory" in res.get("limits", {}), f"{c['name']}: no memory limit"

    def test_images_are_pinned(self, built: list[Manifest]) -> None:
        """Every image has an explicit tag other than latest (ours and third parties')."""
        for w in workloads(built):
            for c in containers(w):
                tag = image_tag(c["image"])
                assert tag, f"{c['name']}: {c['image']} has no tag"
                assert tag != "latest", f"{c['name']}: {c['image']} is not pinned"

    def test_our_images_point_at_a_registry_set_in_the_kustomization(
        self, built: list[Manifest]
    ) -> None:
        """The kustomization's images: rewrites both of our images (one place to edit)."""
        ours = {c["image"] for w in workloads(built) for c in containers(w) if is_ours(c)}
        assert {image_repo(i) for i in ours} == set(OUR_IMAGES)
        assert all("/" in i for i in ours), ours

    def test_our_containers_run_as_non_root_on_a_read_only_root(
        self, built: list[Manifest]
    ) -> None:
        """Our containers run as a non-root user, with no privilege escalation or capabilities."""
        for w in workloads(built):
            pod_ctx = (pod_spec(w) or {}).get("securityContext", {})
            for c in containers(w):
                ctx = c.get("securityContext", {})
                assert ctx.get("allowPrivilegeEscalation") is False, c["name"]
                if not is_ours(c):
                    continue
                assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, c["name"]
                assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) != 0, c["name"]
                assert ctx.get("readOnlyRootFilesystem") is True, c["name"]
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], c["name"]

    def test_pods_get_no_api_token_or_service_variables(self, built: list[Manifest]) -> None:
        """No service-account token, and no service-link variables (a Service named `router`
        would inject ROUTER_PORT=tcp://..., which the router reads as a setting)."""
        for w in workloads(built):
            spec = pod_spec(w)
            assert spec is not None
            assert spec.get("automountServiceAccountToken") is False, w["metadata"]["name"]
            assert spec.get("enableServiceLinks") is False, w["metadata"]["name"]


class TestSecrets:
    """The repository holds placeholders, never secrets."""

    def test_secret_values_are_placeholders(self) -> None:
        """Secrets use stringData whose values are empty or say REPLACE-ME."""
        secrets = [d for p in manifest_files() for d in documents(p) if d["kind"] == "Secret"]
        assert secrets
        for secret in secrets:
            assert "data" not in secret, "use stringData so placeholders stay readable"
            for key, value in secret["stringData"].items():
                assert value == "" or "REPLACE-ME" in value, f"{secret['metadata']['name']}.{key}"


class TestRouter:
    """The router Deployment, its Services, PDB and HPA fit the router's own behaviour."""

    def router_settings(self, built: list[Manifest], tmp_path: Path) -> Any:
        deployment = router_deployment(built)
        container = our_container(deployment, "inference-router")
        spec = pod_spec(deployment)
        assert spec is not None
        mounts = pods.mounted_files(container, spec, built, tmp_path)
        env = pods.environment(container, built, image_env("inference-router"))
        env = {k: pods.localise(v, mounts) for k, v in env.items()}
        args = [pods.localise(pods.expand(a, env), mounts) for a in container.get("args", [])]
        return load_router_settings(args, env)

    def test_router_accepts_its_config_and_variables(
        self, built: list[Manifest], tmp_path: Path
    ) -> None:
        """router.toml, the args and the variables load through the router's own settings, on
        the port the container declares."""
        settings = self.router_settings(built, tmp_path)
        container = our_container(router_deployment(built), "inference-router")
        assert settings.port == port_number(container, "http")
        assert settings.host == "0.0.0.0"

    def test_probes_are_ready_and_health(self, built: list[Manifest]) -> None:
        """Readiness is /ready (503 while stopping), liveness /health."""
        container = our_container(router_deployment(built), "inference-router")
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"

    def test_grace_period_covers_pre_stop_and_drain(
        self, built: list[Manifest], tmp_path: Path
    ) -> None:
        """terminationGracePeriodSeconds >= preStop sleep + shutdown_grace_s + a margin."""
        deployment = router_deployment(built)
        container = our_container(deployment, "inference-router")
        settings = self.router_settings(built, tmp_path)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert pre_stop_sleep_s(container) >= 1
        assert grace >= pre_stop_sleep_s(container) + settings.shutdown_grace_s + MARGIN_S

    def test_services_for_clients_and_agents(self, built: list[Manifest]) -> None:
        """A ClusterIP Service on port 80 for clients, a headless one listing every replica."""
        deployment = router_deployment(built)
        namespace = deployment["metadata"]["namespace"]
        services = [
            s
            for s in built
            if s["kind"] == "Service"
            and deployment in selected(built, s["spec"]["selector"], namespace)
        ]
        client = [s for s in services if s["spec"].get("clusterIP") != "None"]
        headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
        assert len(client) == 1
        assert len(headless) == 1
        assert [p["port"] for p in client[0]["spec"]["ports"]] == [80]
        assert headless[0]["spec"].get("publishNotReadyAddresses") is True

    def test_autoscaling_and_disruption_budget_agree(self, built: list[Manifest]) -> None:
        """The HPA scales this Deployment on CPU from >= 2 replicas; the PDB covers the same
        pods and still lets one be evicted at the minimum (or node drains would hang)."""
        deployment = router_deployment(built)
        (hpa,) = [m for m in built if m["kind"] == "HorizontalPodAutoscaler"]
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert hpa["spec"]["minReplicas"] >= 2
        assert deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"]
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        container = our_container(deployment, "inference-router")
        assert "cpu" in container["resources"]["requests"], "CPU utilisation needs a request"
        (pdb,) = [m for m in built if m["kind"] == "PodDisruptionBudget"]
        assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        if "minAvailable" in pdb["spec"]:
            assert int(pdb["spec"]["minAvailable"]) < hpa["spec"]["minReplicas"]
        else:
            assert int(pdb["spec"]["maxUnavailable"]) >= 1


class TestInferenceNodes:
    """The GPU pods have the platform's shape and the agent gets settings it accepts."""

    def agent_settings(self, built: list[Manifest], workload: Manifest) -> Any:
        agent = our_container(workload, "inference-router-agent")
        env = pods.environment(agent, built, image_env("inference-router-agent"))
        args = [pods.expand(a, env) for a in agent.get("args", [])]
        assert not [a for a in args if "$(" in a], "unexpanded variable in the agent's args"
        return load_agent_settings(args, env)

    def test_one_gpu_pod_per_entry_point(self, built: list[Manifest]) -> None:
        """Each entry point deploys GPU inference pods."""
        assert len(gpu_workloads(built)) == 1

    def test_only_the_backend_claims_the_gpu(self, built: list[Manifest]) -> None:
        """One container (the backend, not the agent) requests nvidia.com/gpu: 1, request equal
        to limit; a GPU in both containers would claim two GPUs."""
        for w in gpu_workloads(built):
            claims = [c for c in containers(w) if "nvidia.com/gpu" in c["resources"]["limits"]]
            assert len(claims) == 1
            (backend,) = claims
            assert not is_ours(backend)
            res = backend["resources"]
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1

    def test_agent_settings_follow_the_seed(self, built: list[Manifest]) -> None:
        """Octopus's InferenceNode__* variables and the downward API give the agent its backend
        (the backend container's port on localhost), group, name (the pod) and address (the pod
        IP on the agent's declared port)."""
        for w in gpu_workloads(built):
            agent = our_container(w, "inference-router-agent")
            names = {e["name"] for e in agent["env"]}
            assert {"InferenceNode__BackendUrl", "InferenceNode__GroupName"} <= names
            settings = self.agent_settings(built, w)
            (backend,) = [c for c in containers(w) if not is_ours(c)]
            backend_url = urlsplit(settings.backend_url)
            assert backend_url.hostname == "localhost"
            assert backend_url.port == port_number(backend, backend["ports"][0]["name"])
            assert settings.name == pods.DOWNWARD["metadata.name"]
            assert settings.port == port_number(agent, "agent")
            assert (
                settings.advertise_url == f"http://{pods.DOWNWARD['status.podIP']}:{settings.port}"
            )

    def test_agent_group_is_a_router_group(self, built: list[Manifest], tmp_path: Path) -> None:
        """The agent registers in a group the router's config declares."""
        settings = TestRouter().router_settings(built, tmp_path)
        groups = {settings.default_group, *(g.name for g in settings.groups)}
        for w in gpu_workloads(built):
            assert self.agent_settings(built, w).group in groups

    def test_agents_report_to_every_router_replica(self, built: list[Manifest]) -> None:
        """The agent follows the headless Service's name (one address per replica) on its port."""
        services = {s["metadata"]["name"]: s for s in built if s["kind"] == "Service"}
        deployment = router_deployment(built)
        for w in gpu_workloads(built):
            url = self.agent_settings(built, w).router_dns
            assert url is not None
            parts = urlsplit(url)
            svc = services[parts.hostname or ""]
            assert svc["spec"]["clusterIP"] == "None"
            assert selects(svc["spec"]["selector"], pod_labels(deployment))
            assert parts.port in [p["port"] for p in svc["spec"]["ports"]]

    def test_agents_present_the_routers_registration_token(
        self, built: list[Manifest], tmp_path: Path
    ) -> None:
        """The router requires a registration token and every agent sends the one it requires,
        both read from the same Secret key (agents in other pods are not loopback: without a
        token the router would refuse them)."""
        settings = TestRouter().router_settings(built, tmp_path)
        assert settings.registration_token_sha256, "the router runs without a registration token"
        router = our_container(router_deployment(built), "inference-router")
        (router_ref,) = [
            e["valueFrom"]["secretKeyRef"]
            for e in router["env"]
            if e["name"] == "ROUTER_REGISTRATION_TOKEN"
        ]
        for w in gpu_workloads(built):
            token = self.agent_settings(built, w).router_token
            assert token, f"{w['metadata']['name']}: the agent sends no registration token"
            assert digest(token) in settings.registration_token_sha256
            agent = our_container(w, "inference-router-agent")
            (agent_ref,) = [
                e["valueFrom"]["secretKeyRef"]
                for e in agent["env"]
                if e["name"] == "NODE_AGENT_ROUTER_TOKEN"
            ]
            assert agent_ref == router_ref

    def test_backend_outlives_the_agent_on_shutdown(self, built: list[Manifest]) -> None:
        """The backend's preStop outlasts the agent's drain, and the grace period both."""
        for w in gpu_workloads(built):
            settings = self.agent_settings(built, w)
            (backend,) = [c for c in containers(w) if not is_ours(c)]
            sleep_s = pre_stop_sleep_s(backend)
            assert sleep_s >= settings.shutdown_timeout_s + MARGIN_S
            grace = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert grace >= sleep_s + 2 * MARGIN_S

    def test_model_cache_is_a_persistent_volume_on_the_backend(self, built: list[Manifest]) -> None:
        """The backend mounts a per-pod model-cache claim; StatefulSet names its Service."""
        services = {s["metadata"]["name"] for s in built if s["kind"] == "Service"}
        for w in gpu_workloads(built):
            assert w["kind"] == "StatefulSet"
            assert w["spec"]["serviceName"] in services
            claims = {t["metadata"]["name"] for t in w["spec"]["volumeClaimTemplates"]}
            assert claims == {"model-cache"}
            (backend,) = [c for c in containers(w) if not is_ours(c)]
            assert "model-cache" in {m["name"] for m in backend["volumeMounts"]}


class TestPrometheusScrape:
    """deploy/prometheus-kubernetes.yml finds our pods under the dashboards' job names."""

    def test_jobs_keep_annotated_pods_under_dashboard_job_names(
        self, built: list[Manifest]
    ) -> None:
        """Each job keeps pods of one app label that exist, named as dashboards/prometheus.yml."""
        config = documents(DEPLOY / "prometheus-kubernetes.yml")[0]
        dashboard_jobs = {
            j["job_name"]
            for j in documents(ROOT / "dashboards" / "prometheus.yml")[0]["scrape_configs"]
        }
        apps = {pod_labels(w)["app.kubernetes.io/name"] for w in workloads(built)}
        kept: set[str] = set()
        for job in config["scrape_configs"]:
            assert job["job_name"] in dashboard_jobs
            keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
            (match,) = [re.fullmatch(r"true;([\w-]+)", r["regex"]) for r in keep]
            assert match is not None
            kept.add(match.group(1))
        assert kept == apps
