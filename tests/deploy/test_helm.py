"""The Helm chart, rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK; no `helm`
binary is packaged for this machine) for each deployment's values, and every manifest validated
against the Kubernetes JSON schemas (kubernetes-validate, schemas bundled, offline)."""

from __future__ import annotations

import pytest

from seekd.server.shutdown import CUT_GRACE_S

from .conftest import CHART, SECRET_VALUES, VALUES_FILES, kind, render_chart

# Kubernetes versions whose schemas the manifests must satisfy: the chart's oldest and the newest bundled
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# CRDs have no schema in kubernetes-validate; their fields are checked by the tests below
CRD_KINDS = {"ServiceMonitor"}
UVICORN_CLOSE_S = 5  # seekd/server/app.py: timeout_graceful_shutdown after the drain


def test_helm_lint_finds_no_errors() -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")
    result = helm.lint(str(CHART), values=SECRET_VALUES)
    assert result["errors"] == [] and all(m["severity"] < 3 for m in result["messages"]), result


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(values: str, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    manifests = render_chart(values)
    assert {m["kind"] for m in manifests} >= {
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "Secret",
        "ConfigMap",
        "Deployment",
        "ServiceMonitor",
    }
    for manifest in manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    statefulset = kind(render_chart("values-1gpu.yaml"), "StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(("values", "gpus"), [("values-1gpu.yaml", 1), ("values-8gpu.yaml", 8), ("values-cpu.yaml", 0)])
def test_each_deployment_asks_for_its_gpus_and_splits_the_model_across_them(values: str, gpus: int) -> None:
    pod = kind(render_chart(values), "StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
    assert int(env["SEEKD_TENSOR_PARALLEL_SIZE"]) == max(gpus, 1)
    assert container["image"].endswith(":cuda" if gpus else ":cpu")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and "/var/lib/seekd" in mounts
    assert ("/dev/shm" in mounts) == (gpus > 1)  # NCCL between tensor-parallel ranks


@pytest.mark.parametrize("values", VALUES_FILES)
def test_termination_grace_outlasts_the_prestop_sleep_drain_and_cut_off(values: str) -> None:
    pod = kind(render_chart(values), "StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = stop + float(env["SEEKD_DRAIN_TIMEOUT_S"]) + CUT_GRACE_S + UVICORN_CLOSE_S
    assert pod["terminationGracePeriodSeconds"] > needed
    longer = kind(render_chart(values, {"settings": {"drain_timeout_s": 300}}), "StatefulSet")
    assert longer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 300 + stop + CUT_GRACE_S


@pytest.mark.parametrize("values", VALUES_FILES)
def test_startup_probe_allows_for_loading_the_model(values: str) -> None:
    (container,) = kind(render_chart(values), "StatefulSet")["spec"]["template"]["spec"]["containers"]
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (300 if values == "values-cpu.yaml" else 1200)


def test_hpa_scales_the_statefulset_on_the_adapters_metrics_and_keeps_warm_replicas() -> None:
    import yaml

    manifests = render_chart("values-1gpu.yaml")
    hpa = kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": kind(manifests, "StatefulSet")["metadata"]["name"],
    }
    adapter = yaml.safe_load((CHART.parent / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    used = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert used and used <= served
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    statefulset = kind(manifests, "StatefulSet")
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert "replicas" not in statefulset["spec"]  # the HPA owns the count
    (prewarm,) = statefulset["spec"]["template"]["spec"]["initContainers"]
    assert "/models/" in " ".join(prewarm["command"])


def test_pdb_and_service_monitor_select_the_pods_and_ports_that_exist() -> None:
    manifests = render_chart("values-1gpu.yaml")
    pod_labels = kind(manifests, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    pdb = kind(manifests, "PodDisruptionBudget", "seekd")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for monitor in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s for s in manifests if s["kind"] == "Service" and wanted.items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1, (monitor["metadata"]["name"], [s["metadata"]["name"] for s in services])
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        assert all(e["port"] in port_names and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    server_monitor = kind(manifests, "ServiceMonitor", "seekd")
    secret = server_monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert kind(manifests, "Secret", secret["name"])["stringData"][secret["key"]] == SECRET_VALUES["apiKey"]["value"]


def test_chart_refuses_to_render_without_keys() -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match=r"apiKey\.existingSecret"):
        chart.render({}, name="seekd", namespace="llm")
