"""Offline checks of the Kubernetes manifests in k8s/.

The KubeRay manifests are validated against the real KubeRay CRD schemas vendored in k8s/crds/
(see its README for version and licence) with ``jsonschema``, in two modes: the schema as the API
server applies it, and a strict mode that also rejects unknown fields (what ``kubectl apply``'s
default ``--validate=strict`` does; the API server would otherwise drop a misspelled optional field
silently). The Deployment's pod template is validated against the core/v1 PodTemplateSpec schema
embedded in the same CRDs. Cross-checks: the Serve import path and the job entrypoint exist in the
repository, the Serve config is valid for the pinned Ray, the config file in the ConfigMap loads,
and the alert rules agree with configs/prometheus-alerts.yml.
"""

from __future__ import annotations

import ast
import copy
import functools
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CRDS = K8S / "crds"
IMAGE = "model-forensics:latest"
PVC = "model-forensics-data"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RAY_ENV = {
    "MODEL_FORENSICS_BUNDLE_DIR": "/data/bundles",
    "MODEL_FORENSICS_OUTPUT_DIR": "/data/results",
    "MODEL_FORENSICS_DEVICE": "auto",
    "MODEL_FORENSICS_CACHE_DIR": "/data/cache",
    "HF_HUB_OFFLINE": "1",
}
KUBERAY = {  # manifest -> (kind, CRD file, max name length from KubeRay's utils/constant.go)
    "raycluster.yaml": ("RayCluster", "ray.io_rayclusters.yaml", 53),
    "rayjob.yaml": ("RayJob", "ray.io_rayjobs.yaml", 47),
    "rayservice.yaml": ("RayService", "ray.io_rayservices.yaml", 47),
}
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------------------------------- helpers


def load(name: str) -> Any:
    return yaml.load((K8S / name).read_text(), Loader=_Loader)


def load_all(name: str) -> list[Any]:
    return [d for d in yaml.load_all((K8S / name).read_text(), Loader=_Loader) if d is not None]


@functools.cache
def crd_schema(crd_file: str) -> dict[str, Any]:
    crd = yaml.load((CRDS / crd_file).read_text(), Loader=_Loader)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    schema: dict[str, Any] = v1["schema"]["openAPIV3Schema"]
    return schema


def strict(schema: Any) -> Any:
    """A copy where every object schema listing ``properties`` rejects keys it does not list, except
    where Kubernetes keeps unknown fields (x-kubernetes-preserve-unknown-fields) or the schema says
    otherwise (additionalProperties)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def strict_schema(crd_file: str) -> dict[str, Any]:
    return strict(crd_schema(crd_file))  # type: ignore[no-any-return]


def errors(schema: dict[str, Any], doc: Any) -> list[str]:
    # Draft 7 treats the x-kubernetes-* keywords, `nullable` and unknown `format`s (int32,
    # int-or-string, ...) as annotations; formats are not asserted without a format checker.
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def cluster_spec(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return {
        "raycluster.yaml": spec,
        "rayjob.yaml": spec.get("rayClusterSpec"),
        "rayservice.yaml": spec.get("rayClusterConfig"),
    }[name]  # type: ignore[return-value]


def groups(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def gpu_limit(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    (pin,) = [d for d in deps if re.match(r"ray(\[[^\]]*\])?==", d)]
    return pin.split("==", 1)[1]


def module_file(dotted: str) -> Path:
    return ROOT.joinpath(*dotted.split(".")).with_suffix(".py")


# ------------------------------------------------------------------------------- KubeRay schemas


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_manifest_validates_against_crd(name: str) -> None:
    kind, crd_file, _ = KUBERAY[name]
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert errors(crd_schema(crd_file), doc) == []
    assert errors(strict_schema(crd_file), doc) == [], "unknown (misspelled?) fields"


def _raycluster() -> dict[str, Any]:
    return copy.deepcopy(load("raycluster.yaml"))  # type: ignore[no-any-return]


def _misspelled_required(doc: dict[str, Any]) -> None:
    doc["spec"]["headGroupSpecs"] = doc["spec"].pop("headGroupSpec")


def _missing_group_name(doc: dict[str, Any]) -> None:
    del doc["spec"]["workerGroupSpecs"][0]["groupName"]


def _wrong_type_replicas(doc: dict[str, Any]) -> None:
    doc["spec"]["workerGroupSpecs"][1]["minReplicas"] = "zero"


def _wrong_type_start_param(doc: dict[str, Any]) -> None:
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string


def _bad_quantity(doc: dict[str, Any]) -> None:
    gpu = doc["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    gpu["resources"]["limits"]["memory"] = "32 gigabytes"


def _bad_env_entry(doc: dict[str, Any]) -> None:
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append({"value": "no name"})


@pytest.mark.parametrize(
    "mutate",
    [
        _misspelled_required,
        _missing_group_name,
        _wrong_type_replicas,
        _wrong_type_start_param,
        _bad_quantity,
        _bad_env_entry,
    ],
)
def test_validator_rejects_broken_manifest(mutate: Any) -> None:
    doc = _raycluster()
    mutate(doc)
    assert errors(crd_schema("ray.io_rayclusters.yaml"), doc), f"{mutate.__name__} was not detected"


def test_strict_mode_catches_misspelled_optional_field() -> None:
    doc = _raycluster()
    pod = doc["spec"]["workerGroupSpecs"][1]["template"]["spec"]
    pod["nodeSelectr"] = pod.pop("nodeSelector")
    # The API server would accept this and drop the field (the GPU pods would land anywhere) ...
    assert errors(crd_schema("ray.io_rayclusters.yaml"), doc) == []
    # ... strict validation, like kubectl's, refuses it.
    assert any("nodeSelectr" in e for e in errors(strict_schema("ray.io_rayclusters.yaml"), doc))


def test_strict_mode_keeps_open_maps_open() -> None:
    schema = strict_schema("ray.io_rayclusters.yaml")
    params = schema["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]["rayStartParams"]
    assert params["additionalProperties"] == {"type": "string"}


# ------------------------------------------------------------------- KubeRay: what the operator checks


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_operator_side_rules(name: str) -> None:
    """A few of KubeRay's own checks (ray-operator/controllers/ray/utils/validation.go)."""
    _, _, max_len = KUBERAY[name]
    doc = load(name)
    metadata_name = doc["metadata"]["name"]
    assert DNS1035.match(metadata_name) and len(metadata_name) <= max_len
    cluster = cluster_spec(name, doc)
    assert cluster is not None
    seen = set()
    for group_name, group in groups(cluster):
        assert group_name not in seen
        seen.add(group_name)
        assert group["template"]["spec"]["containers"], f"{group_name}: no container"
        assert "labels" not in group.get("rayStartParams", {})
        assert not (
            {"num-cpus", "num-gpus", "memory", "resources"} & set(group.get("rayStartParams", {}))
            and group.get("resources")
        ), f"{group_name}: resources set twice"
        if group_name != "head":
            assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


# ---------------------------------------------------------------------------- KubeRay: our choices


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_ray_cluster_layout(name: str) -> None:
    cluster = cluster_spec(name, load(name))
    assert cluster["rayVersion"] == ray_pin(), "rayVersion must match the Ray pinned in pyproject.toml"
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    workers = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in workers if gpu_limit(g["template"]["spec"]["containers"][0])]
    cpu_groups = [g for g in workers if not gpu_limit(g["template"]["spec"]["containers"][0])]
    assert len(gpu_groups) == 1 and len(cpu_groups) == 1

    (gpu,) = gpu_groups
    pod = gpu["template"]["spec"]
    container = pod["containers"][0]
    res = container["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 1
    assert (res["requests"]["memory"], res["limits"]["memory"]) == ("16Gi", "32Gi")  # deployment guide
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    if name != "rayjob.yaml":  # the RayJob keeps one GPU pod from the start (see its header)
        assert gpu["minReplicas"] == 0

    for _, group in groups(cluster):
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values())
        container = group["template"]["spec"]["containers"][0]
        if group is not head:  # Ray's CPU count must not exceed what the pod may use
            assert float(params["num-cpus"]) <= float(container["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_ray_pods_image_env_and_data_volume(name: str) -> None:
    cluster = cluster_spec(name, load(name))
    for group_name, group in groups(cluster):
        pod = group["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert PVC in claims.values(), group_name
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["image"] == IMAGE
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert claims.get(mounts.get("/data")) == PVC, f"{group_name}/{container['name']}: /data not mounted"
        env = env_of(pod["containers"][0])
        assert {k: env.get(k) for k in RAY_ENV} == RAY_ENV, group_name


def test_rayjob_entrypoint() -> None:
    spec = load("rayjob.yaml")["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_jobs.batch"]
    assert module_file("ray_jobs.batch").is_file(), "the RayJob runs ray_jobs/batch.py"
    from ray_jobs.batch import parse_args  # the job's own argument parser accepts the arguments

    args = parse_args(argv[3:])
    assert (args.bundles, args.baseline, args.output) == (
        "/data/bundles/incidents",
        "/data/bundles/benign",
        "/data/results/batch",
    )


def _serve_config() -> dict[str, Any]:
    text = load("rayservice.yaml")["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 is a YAML string"
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def test_rayservice_serve_config() -> None:
    (app,) = _serve_config()["applications"]
    assert app["name"] == "model-forensics"
    assert app["import_path"] == "serve_app.app:app"
    assert app["route_prefix"] == "/"
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"ForensicsAPI", "Analyzer"}
    for d in deployments.values():
        auto = d["autoscaling_config"]
        assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 4, 2)
        assert d["max_ongoing_requests"] >= auto["target_ongoing_requests"]
        assert d["max_queued_requests"] > 0
        assert "ray_actor_options" in d
    assert deployments["Analyzer"]["ray_actor_options"]["num_gpus"] == 0.5


def test_rayservice_serve_config_is_valid_for_pinned_ray() -> None:
    schema = pytest.importorskip("ray.serve.schema")
    schema.ServeDeploySchema.model_validate(_serve_config())


def test_rayservice_port_8000() -> None:
    spec = load("rayservice.yaml")["spec"]
    (port,) = spec["serveService"]["spec"]["ports"]
    assert port["port"] == 8000
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": 8000} in head["ports"]
    assert _serve_config()["http_options"]["port"] == 8000


def test_serve_import_path_exists() -> None:
    module, _, attr = _serve_config()["applications"][0]["import_path"].partition(":")
    path = module_file(module)
    assert path.is_file(), f"serveConfigV2 imports {module}, but {path.relative_to(ROOT)} does not exist"
    tree = ast.parse(path.read_text())
    names = {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    assert attr in names, f"{path.relative_to(ROOT)} has no module-level {attr!r}"
    source = path.read_text()
    for dep in ("ForensicsAPI", "Analyzer"):  # Serve rejects config for deployments the app lacks
        assert re.search(rf"class {dep}\b|name=['\"]{dep}['\"]", source), f"no deployment {dep} in {path.name}"


# ------------------------------------------------------------------------------- plain Deployment


def _deployment_docs() -> dict[str, dict[str, Any]]:
    docs = load_all("deployment.yaml")
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs) == 3
    return by_kind


def test_deployment_structure() -> None:
    docs = _deployment_docs()
    assert set(docs) == {"ConfigMap", "Deployment", "Service"}
    dep = docs["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    spec = dep["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert shlex.join(container["command"] + container["args"]) == "model-forensics serve --host 0.0.0.0 --port 8000"
    assert {"name": "http", "containerPort": 8000} in container["ports"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": 8000}, probe

    res = container["resources"]
    assert (res["requests"]["memory"], res["limits"]["memory"]) == ("16Gi", "32Gi")
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 1

    env = env_of(container)
    assert env["MODEL_FORENSICS_CONFIG"] == "/etc/model-forensics/config.yaml"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == PVC
    config_volume = volumes[mounts["/etc/model-forensics"]]
    assert config_volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert "config.yaml" in docs["ConfigMap"]["data"]
    assert all(v.get("secret", {}).get("optional") is not True for v in volumes.values())

    svc = docs["Service"]["spec"]
    assert svc["selector"].items() <= labels.items()
    (port,) = svc["ports"]
    assert port["port"] == 8000 and port["targetPort"] == 8000


def test_deployment_pod_template_validates_against_core_schema() -> None:
    """The pod template against core/v1 PodTemplateSpec, as embedded (from k8s.io/api) in the CRD."""
    schema = crd_schema("ray.io_rayclusters.yaml")
    pod_template = schema["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]["template"]
    template = _deployment_docs()["Deployment"]["spec"]["template"]
    assert errors(pod_template, template) == []
    assert errors(strict(pod_template), template) == []
    broken = copy.deepcopy(template)
    broken["spec"]["containers"][0]["livenesProbe"] = broken["spec"]["containers"][0].pop("livenessProbe")
    assert errors(strict(pod_template), broken)


def test_deployment_config_file_loads(tmp_path: Path) -> None:
    from forensics.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(_deployment_docs()["ConfigMap"]["data"]["config.yaml"])
    config = load_config(path)
    assert (config.bundle_dir, config.output_dir) == ("/data/bundles", "/data/results")


def test_serve_command_accepts_manifest_arguments() -> None:
    from forensics.cli import build_parser

    container = _deployment_docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["model-forensics"]
    try:
        args = build_parser().parse_args(container["args"])
    except SystemExit as exc:  # argparse: unknown command or option
        pytest.fail(f"`model-forensics {' '.join(container['args'])}` is not accepted by the CLI ({exc})")
    assert (args.host, args.port) == ("0.0.0.0", 8000)


# ------------------------------------------------------------------------------------ PVC, alerts


def test_pvc() -> None:
    (pvc,) = load_all("pvc.yaml")
    assert (pvc["apiVersion"], pvc["kind"], pvc["metadata"]["name"]) == ("v1", "PersistentVolumeClaim", PVC)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # mounted by Ray pods on several nodes


def _alerts(groups_: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups_ for r in g["rules"] if "alert" in r}


def test_prometheus_rules() -> None:
    (doc,) = load_all("prometheus-rules.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = _alerts(doc["spec"]["groups"])
    assert set(alerts) == {"HighAnomalyScore", "LowFixRate"}
    assert (alerts["HighAnomalyScore"]["expr"], alerts["HighAnomalyScore"]["for"]) == (
        "model_forensics_anomaly_score > 0.8",
        "5m",
    )
    assert (alerts["LowFixRate"]["expr"], alerts["LowFixRate"]["for"]) == ("model_forensics_fix_rate < 0.5", "10m")
    for rule in alerts.values():
        assert rule["annotations"]["summary"]


def test_prometheus_rules_agree_with_plain_rule_file() -> None:
    plain = ROOT / "configs" / "prometheus-alerts.yml"
    if not plain.is_file():
        pytest.skip("configs/prometheus-alerts.yml not present")
    ours = _alerts(load_all("prometheus-rules.yaml")[0]["spec"]["groups"])
    theirs = _alerts(yaml.safe_load(plain.read_text())["groups"])
    assert {k: (r["expr"], r["for"]) for k, r in ours.items()} == {k: (r["expr"], r["for"]) for k, r in theirs.items()}
