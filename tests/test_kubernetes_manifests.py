"""The Kubernetes manifests (deploy/kubernetes/), rendered and checked offline.

No API server runs here, so nothing is applied: every overlay is rendered with
``kubectl kustomize`` by Debian 12's kubectl 1.20 (kustomize 2.0, the oldest
we support) and by a current kubectl, and the rendered objects are

- validated against the OpenAPI schemas of every Kubernetes version we
  support (1.29 to the newest that ``kubernetes-validate`` bundles), strictly:
  an unknown or misspelt field fails;
- checked for what docs/kubernetes.md promises: rooms get no network in
  either direction, the server's rights are pods, pods/exec, pods/log and
  events in the rooms' namespace and nothing else, the server runs hardened
  without root, nothing mounts a host path, no image is ``:latest``, and the
  ConfigMap names only settings the server has.

What a cluster does with them (admission, a CNI enforcing the NetworkPolicy,
gVisor on the nodes) needs a real cluster: docs/kubernetes.md says how to try.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from replroom.config import Settings, settings_help
from replroom.sandbox.kubernetes.config import PodPlacement, pod_manifest
from replroom.sandbox.spec import room_spec

KUBERNETES = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
OVERLAYS = ("gvisor", "dev")
# Debian 12's kubectl, where scripts/setup unpacks it when another package
# already owns /usr/bin/kubectl (so it cannot be installed as usual).
DEBIAN_KUBECTL = Path(
    os.environ.get("REPLROOM_KUBECTL_1_20", "/opt/kubernetes-client/usr/bin/kubectl")
)
OLDEST_SUPPORTED = Version("1.29")

STABLE_API_VERSIONS = {
    "v1",
    "apps/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "node.k8s.io/v1",
}
CLUSTER_SCOPED_KINDS = {"Namespace", "RuntimeClass", "ClusterRole", "ClusterRoleBinding"}
# What the server may do, all in the core API group of the rooms' namespace.
ALLOWED_GRANTS = {
    "pods": {"create", "get", "list", "watch", "delete", "patch"},
    "pods/exec": {"create", "get"},
    "pods/log": {"get"},
    "events": {"get", "list", "watch"},
}
# Pod Security "restricted" (pod-security-standards, 1.29): the volume types it admits.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


# ------------------------------------------------------------------ rendering


def _client_version(kubectl: str) -> Version | None:
    try:
        shown = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    version = json.loads(shown.stdout)["clientVersion"]
    return Version(f"{version['major']}.{version['minor'].rstrip('+')}")


@cache
def _kubectls() -> dict[str, str]:
    """The kubectls found, by role: "1.20" (Debian 12's) and "current" (anything newer)."""
    found: dict[str, str] = {}
    for candidate in (shutil.which("kubectl"), str(DEBIAN_KUBECTL)):
        if candidate is None or not os.access(candidate, os.X_OK):
            continue
        version = _client_version(candidate)
        if version == Version("1.20"):
            found.setdefault("1.20", candidate)
        elif version is not None and version > Version("1.20"):
            found.setdefault("current", candidate)
    return found


def _kubectl(role: str) -> str:
    kubectl = _kubectls().get(role)
    if kubectl is None:
        pytest.skip(
            {
                "1.20": f"neither `kubectl` on PATH nor {DEBIAN_KUBECTL} is Debian 12's kubectl "
                "1.20: scripts/setup installs it (package kubernetes-client)",
                "current": "no kubectl newer than 1.20 on PATH: Debian 12 packages only 1.20, "
                "a current one comes from the Kubernetes project's own packages",
            }[role]
        )
    return kubectl


@cache
def _render_with(kubectl: str, overlay: str) -> tuple[dict[str, Any], ...]:
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, f"{kubectl} kustomize {overlay}: {rendered.stderr}"
    return tuple(document for document in yaml.safe_load_all(rendered.stdout) if document)


def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The overlay's objects, by the newest kubectl there is."""
    found = _kubectls()
    if not found:
        pytest.skip("no kubectl: scripts/setup installs it (package kubernetes-client)")
    return _render_with(found.get("current") or found["1.20"], overlay)


def _comparable(documents: tuple[dict[str, Any], ...]) -> list[str]:
    """The objects, ordered, without what kustomize versions write differently.

    The ConfigMap's hash suffix is computed differently by kustomize 2 and 5,
    and kustomize 2 writes empty ``annotations``/``labels`` on generated maps.
    """

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if item != {}}
        if isinstance(value, list):
            return [strip(item) for item in value]
        if isinstance(value, str):
            return re.sub(r"^(replroom-settings)-[a-z0-9]{10}$", r"\1", value)
        return value

    return sorted(json.dumps(strip(document), sort_keys=True) for document in documents)


# ------------------------------------------------------------------- helpers


def of_kind(documents: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def one(documents: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = of_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def settings_of(documents: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return dict(one(documents, "ConfigMap")["data"])


def server_deployment(documents: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return one(documents, "Deployment")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches ``labels`` (``{}`` matches everything)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        matched = {
            "In": present and value in expression.get("values", []),
            "NotIn": value not in expression.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expression["operator"]]
        if not matched:
            return False
    return True


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) pair inside a document, depth first."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]")


def pod_specs(documents: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for document in documents:
        if document["kind"] == "Pod":
            yield document["metadata"]["name"], document["spec"]
        elif document["kind"] in POD_TEMPLATE_KINDS:
            yield document["metadata"]["name"], document["spec"]["template"]["spec"]


def server_settings(documents: tuple[dict[str, Any], ...]) -> Settings:
    """The server's settings from the ConfigMap alone (this process's environment left out)."""
    fields: dict[str, Any] = {}
    for name, value in settings_of(documents).items():
        *outer, field = name.removeprefix("REPLROOM_").lower().split("__")
        place = fields
        for part in outer:
            place = place.setdefault(part, {})
        place[field] = value
    return Settings.model_validate(fields)


def room_pod(documents: tuple[dict[str, Any], ...], room_id: str = "abc123") -> dict[str, Any]:
    """The pod the backend makes for a room, with this rendering's settings."""
    server = server_settings(documents)
    placement = PodPlacement(
        namespace=server.kubernetes_namespace,
        runtime_class=server.kubernetes_runtime_class,
        seccomp=server.kubernetes_seccomp_profile,
    )
    image = server.kubernetes_image or ""
    spec = room_spec(room_id, server.limits, image=image, instance=server.instance)
    return pod_manifest(spec, placement)


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec Pod Security's "restricted" level refuses (its checks, as of 1.29)."""
    found = []
    pod_context = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(flag)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot not set")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccomp {seccomp}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


def parse_quantity(quantity: str) -> float:
    """A Kubernetes quantity (``256Mi``, ``500m``, ``2``, ``268435456``) as a number."""
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3}
    for suffix, factor in suffixes.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity)


@cache
def _schema_error(document_json: str, version: str) -> str | None:
    # Cached: the overlays share most objects, and each check loads the
    # version's schemas from disk.
    document = json.loads(document_json)
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        name = f"{document['kind']}/{document['metadata']['name']}"
        return f"{name} @{version}: {where}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError as error:
        return str(error.message)
    return None


def schema_errors(document: dict[str, Any]) -> list[str]:
    """Where ``document`` breaks a supported version's schema (strictly: unknown fields too)."""
    document_json = json.dumps(document, sort_keys=True)
    errors = (_schema_error(document_json, version) for version in supported_versions())
    return [error for error in errors if error is not None]


def supported_versions() -> list[str]:
    return [version for version in all_versions() if Version(version) >= OLDEST_SUPPORTED]


# --------------------------------------------------------------------- tests


@pytest.mark.fast
def test_kustomizations_avoid_what_kustomize_2_lacks() -> None:
    # kubectl 1.20's kustomize 2.0 fails on these, or worse, ignores them.
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        keys = set(yaml.safe_load(kustomization.read_text()))
        assert not keys & {"patches", "components", "labels", "replacements"}, kustomization


@pytest.mark.parametrize("role", ["1.20", "current"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay: str, role: str) -> None:
    documents = _render_with(_kubectl(role), overlay)
    kinds = {document["kind"] for document in documents}
    assert {"Namespace", "Deployment", "Role", "RoleBinding", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_versions_render_the_same_objects(overlay: str) -> None:
    old = _render_with(_kubectl("1.20"), overlay)
    new = _render_with(_kubectl("current"), overlay)
    assert _comparable(old) == _comparable(new)


def test_validator_rejects_an_unknown_field() -> None:
    # The schema check below would pass vacuously if strict mode let anything through.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x:1", "securityContex": {}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, supported_versions()[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_every_supported_version(overlay: str) -> None:
    versions = supported_versions()
    assert versions[0] == str(OLDEST_SUPPORTED) + ".0", versions
    failures = []
    for document in render(overlay):
        assert document["apiVersion"] in STABLE_API_VERSIONS, document["apiVersion"]
        failures += schema_errors(document)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaces(overlay: str) -> None:
    documents = render(overlay)
    rooms = settings_of(documents)["REPLROOM_KUBERNETES_NAMESPACE"]
    server = server_deployment(documents)["metadata"]["namespace"]
    namespaces = {
        document["metadata"]["name"]: document for document in of_kind(documents, "Namespace")
    }
    assert set(namespaces) == {server, rooms}
    for namespace in namespaces.values():
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for document in documents:
        if document["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in document["metadata"]
        else:
            assert document["metadata"].get("namespace") in namespaces, document["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rooms_have_no_network_either_way(overlay: str) -> None:
    documents = render(overlay)
    rooms = settings_of(documents)["REPLROOM_KUBERNETES_NAMESPACE"]
    room_labels = room_pod(documents)["metadata"]["labels"]
    policies = [
        policy
        for policy in of_kind(documents, "NetworkPolicy")
        if policy["metadata"]["namespace"] == rooms
        and selects(policy["spec"]["podSelector"], room_labels)
    ]
    assert policies, "no NetworkPolicy selects the room pods"
    # Policies add up: one that allows anything to room pods opens that way.
    for policy in policies:
        spec = policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}, policy["metadata"]["name"]
        assert not spec.get("ingress") and not spec.get("egress"), policy["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_only_pods_exec_logs_and_events_in_the_rooms_namespace(overlay: str) -> None:
    documents = render(overlay)
    rooms = settings_of(documents)["REPLROOM_KUBERNETES_NAMESPACE"]
    deployment = server_deployment(documents)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert not of_kind(documents, "ClusterRole") and not of_kind(documents, "ClusterRoleBinding")

    role = one(documents, "Role")
    assert role["metadata"]["namespace"] == rooms
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == ALLOWED_GRANTS

    binding = one(documents, "RoleBinding")
    assert binding["metadata"]["namespace"] == rooms
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account,
            "namespace": deployment["metadata"]["namespace"],
        }
    ]
    accounts = {
        (sa["metadata"]["namespace"], sa["metadata"]["name"]): sa
        for sa in of_kind(documents, "ServiceAccount")
    }
    assert (deployment["metadata"]["namespace"], account) in accounts
    # Pods in the rooms' namespace get no token unless they ask for one (room pods do not).
    assert accounts[(rooms, "default")]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_runs_hardened_without_root(overlay: str) -> None:
    documents = render(overlay)
    deployment = server_deployment(documents)
    assert deployment["spec"]["replicas"] == 1
    # Two servers at once would each clean up the other's room pods at start.
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    # Service links would put REPLROOM_PORT=tcp://… into the server's settings.
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    (container,) = pod["containers"]
    hardening = container["securityContext"]
    assert hardening["runAsNonRoot"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    assert hardening["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in hardening

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    port = container["ports"][0]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/healthz" and check["port"] in (
            port["name"],
            port["containerPort"],
        )
    settings = settings_of(documents)
    assert int(settings["REPLROOM_PORT"]) == port["containerPort"]
    assert settings["REPLROOM_HOST"] == "0.0.0.0"

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    claim = mounts[settings["REPLROOM_DATA_DIR"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {c["metadata"]["name"] for c in of_kind(documents, "PersistentVolumeClaim")}
    assert "emptyDir" in mounts["/tmp"]
    # Read-only root: these two are all it may write.
    assert set(mounts) == {settings["REPLROOM_DATA_DIR"], "/tmp"}

    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == one(documents, "ConfigMap")["metadata"]["name"]
    services = of_kind(documents, "Service")
    assert any(
        selects({"matchLabels": s["spec"]["selector"]}, pod_labels(deployment)) for s in services
    )


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], labels)
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_reaches_into_the_node(overlay: str) -> None:
    for name, spec in pod_specs(render(overlay)):
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{name}: {flag}"
        for path, value in walk(spec):
            assert not path.endswith(".hostPath"), f"{name}{path}"
            assert not (path.endswith(".privileged") and value), f"{name}{path}"
            assert not path.endswith(".hostPort"), f"{name}{path}"


def image_is_pinned(reference: str) -> bool:
    """A tag other than ``latest``, or a digest."""
    if "@sha256:" in reference:
        return True
    name, _, tag = reference.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    documents = render(overlay)
    for name, spec in pod_specs(documents):
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert image_is_pinned(container["image"]), f"{name}: {container['image']}"
    room_image = settings_of(documents)["REPLROOM_KUBERNETES_IMAGE"]
    assert image_is_pinned(room_image), room_image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_the_servers(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(render(overlay))
    # A misspelt name would be silently ignored by the server.
    known = {described.env for described in settings_help()}
    assert set(settings) <= known, sorted(set(settings) - known)
    # And the values are ones it takes, read the way it reads them.
    for name in known:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REPLROOM_CONFIG", raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    server = Settings()
    assert server.backend == "kubernetes"
    assert server.kubernetes_config is None  # the service account's in-cluster credentials
    assert server.max_sandboxes >= 2


def test_gvisor_overlay_runs_rooms_under_runsc() -> None:
    documents = render("gvisor")
    runtime_class = settings_of(documents)["REPLROOM_KUBERNETES_RUNTIME_CLASS"]
    (declared,) = of_kind(documents, "RuntimeClass")
    assert declared["metadata"]["name"] == runtime_class
    assert declared["handler"] == "runsc"


def test_dev_overlay_runs_rooms_on_the_default_runtime() -> None:
    documents = render("dev")
    assert "REPLROOM_KUBERNETES_RUNTIME_CLASS" not in settings_of(documents)
    assert not of_kind(documents, "RuntimeClass")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_passes_pod_security_restricted(overlay: str) -> None:
    # Both namespaces enforce "restricted": a pod that fails it is refused by
    # the API server, the server's own and every room's alike.
    assert restricted_violations({"containers": [{"name": "bad"}]})
    documents = render(overlay)
    for name, spec in pod_specs(documents):
        assert not restricted_violations(spec), (name, restricted_violations(spec))
    room = room_pod(documents)
    assert not restricted_violations(room["spec"]), restricted_violations(room["spec"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_room_pods_fit_the_rooms_namespace(overlay: str) -> None:
    documents = render(overlay)
    room = room_pod(documents)
    assert room["metadata"]["namespace"] == one(documents, "Role")["metadata"]["namespace"]
    assert not schema_errors(room), schema_errors(room)
    runtime_class = room["spec"].get("runtimeClassName")
    runtimes = {r["metadata"]["name"]: r for r in of_kind(documents, "RuntimeClass")}
    assert runtime_class is None or runtime_class in runtimes
    overhead = runtimes[runtime_class].get("overhead", {}) if runtime_class else {}
    # The quota admits every room the server's memory budget lets it run.
    rooms = server_settings(documents).max_sandboxes
    quota = one(documents, "ResourceQuota")["spec"]["hard"]
    assert int(quota["pods"]) >= rooms
    limits = room["spec"]["containers"][0]["resources"]["limits"]
    for resource in ("memory", "cpu"):
        per_room = parse_quantity(limits[resource]) + parse_quantity(
            overhead.get("podFixed", {}).get(resource, "0")
        )
        assert parse_quantity(quota[f"limits.{resource}"]) >= rooms * per_room, resource
        assert parse_quantity(quota[f"requests.{resource}"]) >= rooms * per_room, resource
