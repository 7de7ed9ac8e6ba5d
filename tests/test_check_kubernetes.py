"""The Kubernetes manifest checks: the shipped overlays pass, and each broken manifest is reported."""

from pathlib import Path
from typing import Any

from scripts.check_kubernetes import (
    OVERLAYS,
    check_cross_references,
    check_overlay,
    load_documents,
    parse_quantity,
    validate_schemas,
)

REPOSITORY = Path(__file__).resolve().parent.parent
BIN_DIR = REPOSITORY / ".venv" / "bin"

BROKEN_MANIFESTS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: media}
spec:
  replicas: 3
  selector: {matchLabels: {app.kubernetes.io/name: media}}
  template:
    metadata:
      labels: {app.kubernetes.io/name: media}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "9200"}
    spec:
      terminationGracePeriodSeconds: 12
      containers:
        - name: media
          image: stillpoint-media
          ports: [{name: grpc, containerPort: 50053}, {name: metrics, containerPort: 9100}]
          env:
            - {name: STILLPOINT_GRACE_SECONDS, value: "10"}
            - {name: STILLPOINT_METRICS_PORT, value: "9100"}
            - {name: STILLPOINT_MEDIA_VOLUME, value: "11"}
            - {name: OPENAI_API_KEY, value: not-from-a-secret}
            - name: REDIS_URL
              valueFrom: {secretKeyRef: {name: undocumented-secret, key: REDIS_URL}}
          resources:
            requests: {cpu: "2", memory: 1Gi}
            limits: {cpu: 500m}
          readinessProbe:
            exec:
              command: [python, /probe/grpc_health_probe.py, "50099", stillpoint.media.v9.Nothing]
          livenessProbe:
            grpc: {port: 50051}
          lifecycle: {preStop: {sleep: {seconds: 5}}}
          securityContext: {capabilities: {drop: [NET_RAW]}}
          volumeMounts: [{name: scratch, mountPath: /work}, {name: storage, mountPath: /storage}]
      volumes: [{name: storage, persistentVolumeClaim: {claimName: unmade-claim}}]
---
apiVersion: v1
kind: Service
metadata: {name: media-headless}
spec:
  clusterIP: None
  selector: {app.kubernetes.io/name: media}
  ports: [{name: http, port: 8081, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: ghost}
spec:
  selector: {app.kubernetes.io/name: ghost}
  ports: [{port: 80}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: media}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: media}
  minReplicas: 2
  maxReplicas: 8
"""


def test_shipped_overlays_pass(tmp_path: Path) -> None:
    overlays = sorted(path.parent for path in OVERLAYS.glob("*/kustomization.yaml"))
    assert overlays

    for overlay in overlays:
        findings = check_overlay(overlay, tmp_path, BIN_DIR)

        assert findings.errors == []
        assert (tmp_path / f"{overlay.name}.yaml").stat().st_size > 0


def test_broken_manifests_are_each_reported() -> None:
    documents: list[Any] = load_documents(BROKEN_MANIFESTS)

    findings = check_cross_references(documents, REPOSITORY / "README.md", REPOSITORY / "services")

    report = "\n".join(findings.errors)
    for expected in (
        "STILLPOINT_MEDIA_VOLUME is not read by any service",
        "OPENAI_API_KEY is a secret (services/serving.py): take it from a Secret",
        "Secret undocumented-secret key REDIS_URL: README.md must say how to create it",
        "readinessProbe runs grpc_health_probe.py without a port of the container",
        "checks the health of 'stillpoint.media.v9.Nothing', not a gRPC service here",
        "livenessProbe.grpc.port 50051 is not a port of the container",
        "terminationGracePeriodSeconds 12 must exceed",
        "cpu request 2 exceeds its limit 500m",
        "needs both a memory request and a memory limit",
        "must run as non-root",
        "must drop ALL capabilities",
        "mounts volume 'scratch', which the pod does not declare",
        "the prometheus.io/port annotation (9200) must agree",
        "service/media-headless: targetPort 'http' is not a port of deployment/media",
        "service/ghost: its selector matches no pod template",
        "media sets replicas, which every apply would reset",
        "deployment/media: several replicas but no PodDisruptionBudget",
        "needs PersistentVolumeClaim 'unmade-claim', which the overlay does not make",
    ):
        assert expected in report


def test_schema_validation_fails_on_unknown_fields_and_unknown_kinds(tmp_path: Path) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(
        """
apiVersion: v1
kind: Service
metadata: {name: typo}
spec:
  selectr: {app: x}
  ports: [{port: 80}]
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: unknown-kind}
spec: {}
""",
        encoding="utf-8",
    )

    problems = "\n".join(validate_schemas(manifest, BIN_DIR / "kubernetes-validate"))

    assert "'selectr' was unexpected" in problems
    # kubernetes-validate exits 0 for a kind it has no schema for: only its WARN line tells.
    assert "WARN" in problems and "ServiceMonitor" in problems


def test_an_overlay_that_does_not_render_is_reported(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text("resources: [missing.yaml]\n", encoding="utf-8")

    findings = check_overlay(overlay, tmp_path, BIN_DIR)

    assert len(findings.errors) == 1
    assert "kubectl kustomize" in findings.errors[0]


def test_quantities_compare_across_units() -> None:
    assert parse_quantity("250m") == parse_quantity("0.25")
    assert parse_quantity("1Gi") == parse_quantity("1024Mi")
    assert parse_quantity("lots") is None
