#!/usr/bin/env python3
"""Renders helm/hookfleet for each toggle and checks the result (run by scripts/helm-check).

For every case: validate each manifest against the Kubernetes schemas (strict), check the
chart's invariants (non-root, read-only root, probes, grace period above the drain timeout,
secrets only by reference), and run `hookfleet config check` on the rendered config.toml with
the environment each container gets. Bad values must fail with a clear message.
"""

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

SECRET = "hookfleet-credentials"
BASE = ["--set", f"existingSecret.name={SECRET}"]
# Custom resources: no schema in kubernetes-validate; checked structurally below instead.
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# Stand-ins for the Secret's values when running `hookfleet config check`.
FAKE_SECRET_VALUES = {
    "amqp-url": "amqp://hookfleet:s3cret@rabbitmq:5672/%2f",
    "database-url": "postgres://hookfleet:s3cret@postgres:5432/hookfleet",
    "amqp-urls": "amqp://hookfleet:s3cret@rabbit-0:5672/%2f,amqp://hookfleet:s3cret@rabbit-1:5672/%2f,"
                 "amqp://hookfleet:s3cret@rabbit-2:5672/%2f",
}
CONFIG_PATH = "/etc/hookfleet/config.toml"

errors: list[str] = []


def fail(case: str, message: str) -> None:
    errors.append(f"[{case}] {message}")


def render(args: argparse.Namespace, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [args.renderer, "--release", "hf", "--namespace", "hookfleet", *extra, args.chart]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def seconds(duration: str) -> float:
    """Seconds of a humantime duration as `config check` prints it ("1m 40s", "25s", "500ms")."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+)([a-z]+)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration.replace(" ", ""):
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def container_env(container: dict, case: str) -> dict[str, str]:
    """The container's environment as the pod would see it, with fake Secret values."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            if ref.get("name") != SECRET:
                fail(case, f"{e['name']} reads Secret {ref.get('name')!r}, want {SECRET!r}")
            env[e["name"]] = FAKE_SECRET_VALUES.get(ref["key"], "unknown-key")
        else:
            fail(case, f"env {e['name']} has an unexpected source")
    return env


def config_check(args, case, who, config_file: Path, env: dict[str, str]):
    """Runs `hookfleet config check` as the pod would; returns the effective config."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    out = subprocess.run(
        [args.hookfleet, "config", "check", "--config", str(config_file)],
        capture_output=True, text=True, env=clean, check=False,
    )
    if out.returncode != 0:
        fail(case, f"{who}: `hookfleet config check` rejected the rendered config: "
                   f"{out.stderr.strip()}")
        return None
    if "s3cret" in out.stdout:
        fail(case, f"{who}: `config check` printed a secret")
    return tomllib.loads(out.stdout)


def check_case(args, case: str, sets: list[str], expect) -> None:
    r = render(args, BASE + sets)
    if r.returncode != 0:
        fail(case, f"rendering failed: {r.stderr.strip()}")
        return
    out_dir = Path(args.out)
    (out_dir / f"{case}.yaml").write_text(r.stdout)
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(d, args.kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(case, f"{name} invalid for Kubernetes {args.kubernetes_version} at {path}: {e.message}")
        except SchemaNotFoundError:
            fail(case, f"{name}: no schema for {d['apiVersion']} in Kubernetes {args.kubernetes_version}")

    # Config maps → files, keyed by ConfigMap name.
    configs: dict[str, Path] = {}
    parsed: dict[str, dict] = {}
    for cm in by_kind.get("ConfigMap", []):
        text = cm.get("data", {}).get("config.toml")
        if text is None:
            fail(case, f"ConfigMap {cm['metadata']['name']} has no config.toml")
            continue
        path = out_dir / f"{case}-{cm['metadata']['name']}.toml"
        path.write_text(text)
        configs[cm["metadata"]["name"]] = path
        try:
            parsed[cm["metadata"]["name"]] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            fail(case, f"ConfigMap {cm['metadata']['name']}: config.toml is not TOML: {e}")
    for name, cfg in parsed.items():
        if cfg.get("database", {}).get("auto_migrate") is not False:
            fail(case, f"{name}: database.auto_migrate must be false in pods")
        if cfg.get("spool", {}).get("dir") != "/var/lib/hookfleet/spool":
            fail(case, f"{name}: spool.dir must be the spool emptyDir")

    workloads = by_kind.get("Deployment", []) + by_kind.get("Job", [])
    for w in workloads:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        spec = pod_spec(w)
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
            fail(case, f"{wname}: pod must run as non-root user 10001")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            who = f"{wname}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(case, f"{who}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(case, f"{who}: readOnlyRootFilesystem must be true")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(case, f"{who}: must drop ALL capabilities")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            needed = ["/tmp"] + (["/var/lib/hookfleet/spool"] if w["kind"] == "Deployment" else [])
            for p in needed:
                if "emptyDir" not in volumes.get(mounts.get(p, ""), {}):
                    fail(case, f"{who}: {p} must be an emptyDir mount")
            cargs = c.get("args", [])
            if cargs[1:3] != ["--config", CONFIG_PATH]:
                fail(case, f"{who}: args must pass --config {CONFIG_PATH}, got {cargs}")
            env = container_env(c, case)
            amqp_var = "HOOKFLEET_AMQP__URLS" if case == "cluster" else "HOOKFLEET_AMQP__URL"
            for var in (amqp_var, "HOOKFLEET_DATABASE__URL"):
                if var not in env:
                    fail(case, f"{who}: {var} missing")
            if "HOOKFLEET_AMQP__URL" in env and "HOOKFLEET_AMQP__URLS" in env:
                fail(case, f"{who}: both HOOKFLEET_AMQP__URL and HOOKFLEET_AMQP__URLS are set")
            cm_name = volumes.get(mounts.get("/etc/hookfleet", ""), {}).get("configMap", {}).get("name")
            if cm_name not in configs:
                fail(case, f"{who}: /etc/hookfleet is not a rendered ConfigMap ({cm_name})")
                continue
            effective = config_check(args, case, who, configs[cm_name], env)
            if effective is None:
                continue
            if case == "cluster" and len(effective["amqp"].get("urls", [])) != 3:
                fail(case, f"{who}: amqp.urls must list the Secret's 3 nodes, got {effective['amqp']}")
            if w["kind"] == "Deployment":
                drain = seconds(effective["worker"]["drain_timeout"])
                grace = spec.get("terminationGracePeriodSeconds", 30)
                if grace <= drain:
                    fail(case, f"{wname}: terminationGracePeriodSeconds {grace} must exceed the drain timeout {drain}s")
                port = int(effective["admin"]["listen"].rsplit(":", 1)[1])
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                if ports.get("admin") != port or not effective["admin"]["listen"].startswith("0.0.0.0:"):
                    fail(case, f"{who}: admin port {ports.get('admin')} vs admin.listen {effective['admin']['listen']}")
            if c["name"] == "worker":
                if cargs[:1] != ["worker"]:
                    fail(case, f"{who}: must run `hookfleet worker`")
                if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    fail(case, f"{who}: liveness probe must GET /healthz")
                if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                    fail(case, f"{who}: readiness probe must GET /readyz")
                if effective["outbox"]["relay"] != (case not in ("relay", "combo", "private-ca", "cluster")):
                    fail(case, f"{who}: outbox.relay is {effective['outbox']['relay']}")
            elif c["name"] == "relay" and cargs[:1] != ["relay"]:
                fail(case, f"{who}: must run `hookfleet relay`")
            elif c["name"] == "migrate":
                hooks = w["metadata"].get("annotations", {}).get("helm.sh/hook", "")
                if cargs[:1] != ["migrate"] or set(hooks.split(",")) != {"pre-install", "pre-upgrade"}:
                    fail(case, f"{who}: must run `hookfleet migrate` as a pre-install,pre-upgrade hook")

    for svc in by_kind.get("Service", []):
        if [p.get("targetPort") for p in svc["spec"]["ports"]] != ["admin"]:
            fail(case, f"Service {svc['metadata']['name']} must target the admin port")
    try:
        expect(by_kind)
    except AssertionError as e:
        fail(case, f"expectation failed: {e}")


def names(by_kind, kind):
    return sorted(d["metadata"]["name"] for d in by_kind.get(kind, []))


def worker(by_kind):
    return next(d for d in by_kind["Deployment"] if d["metadata"]["name"].endswith("-worker"))


def expect_default(k):
    assert names(k, "Deployment") == ["hf-hookfleet-worker"], names(k, "Deployment")
    assert worker(k)["spec"]["replicas"] == 2
    assert names(k, "Job") == ["hf-hookfleet-migrate"]
    assert names(k, "PodDisruptionBudget") == ["hf-hookfleet-worker"]
    assert names(k, "Service") == ["hf-hookfleet-admin"]
    assert names(k, "ServiceAccount") == ["hf-hookfleet"]
    assert names(k, "ConfigMap") == ["hf-hookfleet", "hf-hookfleet-migrate"]
    for absent in ("HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor"):
        assert absent not in k, f"{absent} rendered by default"


def expect_hpa(k):
    (hpa,) = k["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "hf-hookfleet-worker"
    assert "replicas" not in worker(k)["spec"], "replicas must be left to the HPA"
    assert "ScaledObject" not in k


def expect_keda(k):
    (so,) = k["ScaledObject"]
    assert so["spec"]["scaleTargetRef"]["name"] == "hf-hookfleet-worker"
    queues = sorted(t["metadata"]["queueName"] for t in so["spec"]["triggers"])
    assert queues == ["hookfleet.push", "hookfleet.webhook"], queues
    assert all(t["type"] == "rabbitmq" for t in so["spec"]["triggers"])
    (ta,) = k["TriggerAuthentication"]
    ref = ta["spec"]["secretTargetRef"][0]
    assert (ref["name"], ref["key"], ref["parameter"]) == (SECRET, "amqp-url", "host")
    assert "replicas" not in worker(k)["spec"], "replicas must be left to KEDA"
    assert "HorizontalPodAutoscaler" not in k


def expect_relay(k):
    assert names(k, "Deployment") == ["hf-hookfleet-relay", "hf-hookfleet-worker"]
    env = {e["name"]: e.get("value") for e in pod_spec(worker(k))["containers"][0]["env"]}
    assert env.get("HOOKFLEET_OUTBOX__RELAY") == "false", env


def expect_servicemonitor(k):
    (sm,) = k["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "admin"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def expect_combo(k):
    expect_relay(k)
    expect_hpa(k)
    expect_servicemonitor(k)
    assert "Job" not in k, "migrations.enabled=false still rendered the Job"
    assert pod_spec(worker(k))["terminationGracePeriodSeconds"] == 115
    (pdb,) = k["PodDisruptionBudget"]
    assert pdb["spec"] == {**pdb["spec"], "minAvailable": 1} and "maxUnavailable" not in pdb["spec"]
    assert k["Service"][0]["spec"]["ports"][0]["port"] == 9191


def expect_private_ca(k):
    pods = [pod_spec(d) for d in k["Deployment"] + k.get("Job", [])]
    assert len(pods) == 3, "worker, relay and migrations"
    for pod in pods:
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols.get("private-ca", {}).get("configMap") == {"name": "corp-ca"}, vols
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts.get("private-ca") == {"name": "private-ca", "mountPath": "/etc/hookfleet-ca",
                                            "readOnly": True}, mounts


CASES = {
    "default": ([], expect_default),
    "hpa": (["--set", "autoscaling.mode=hpa"], expect_hpa),
    "keda": (["--set", "autoscaling.mode=keda"], expect_keda),
    "relay": (["--set", "relay.separate=true"], expect_relay),
    "servicemonitor": (["--set", "monitoring.serviceMonitor.enabled=true"], expect_servicemonitor),
    "private-ca": (["--set", "privateCA.configMap=corp-ca", "--set", "relay.separate=true"],
                   expect_private_ca),
    "cluster": (["--set", "existingSecret.amqpUrlsKey=amqp-urls", "--set", "relay.separate=true"],
                expect_relay),
    "combo": ([
        "--set", "relay.separate=true", "--set", "autoscaling.mode=hpa",
        "--set", "monitoring.serviceMonitor.enabled=true", "--set", "migrations.enabled=false",
        "--set", "podDisruptionBudget.minAvailable=1", "--set", "drainTimeoutSeconds=100",
        "--set", "admin.port=9191",
    ], expect_combo),
}

# Values that must not render, and the message the operator must see.
MUST_FAIL = {
    "no-secret": ([], "existingSecret.name is required"),
    "bad-mode": (BASE + ["--set", "autoscaling.mode=sometimes"],
                 "autoscaling.mode must be none, hpa or keda"),
    "owned-key": (BASE + ["--set", "config.admin.listen=127.0.0.1:1"],
                  "config.admin.listen is set by the chart"),
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--renderer", required=True)
    p.add_argument("--hookfleet", required=True)
    p.add_argument("--chart", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kubernetes-version", required=True)
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)

    for case, (sets, expect) in CASES.items():
        before = len(errors)
        check_case(args, case, sets, expect)
        print(f"helm-check: {case}: {'ok' if len(errors) == before else 'FAILED'}", file=sys.stderr)

    for case, (extra, message) in MUST_FAIL.items():
        r = render(args, extra)
        if r.returncode == 0:
            fail(case, "rendering succeeded but must fail")
        elif message not in r.stderr:
            fail(case, f"rendering failed without the message {message!r}: {r.stderr.strip()}")

    # An unknown config key renders, but the config check must catch it (proves the check bites).
    r = render(args, BASE + ["--set", "config.worker.concurrencyy=3"])
    if r.returncode != 0:
        fail("unknown-key", f"rendering failed: {r.stderr.strip()}")
    else:
        cm = next(d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "ConfigMap")
        path = Path(args.out) / "unknown-key.toml"
        path.write_text(cm["data"]["config.toml"])
        out = subprocess.run([args.hookfleet, "config", "check", "--config", str(path)],
                             capture_output=True, text=True, check=False,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if out.returncode == 0 or "concurrencyy" not in out.stderr:
            fail("unknown-key", f"`config check` accepted an unknown key: {out.stderr.strip()}")
    print(f"helm-check: failure cases: {'ok' if not errors else 'see below'}", file=sys.stderr)

    for e in errors:
        print(f"helm-check: ERROR {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"helm-check: passed ({len(CASES)} renders validated against Kubernetes "
          f"{args.kubernetes_version}, {len(MUST_FAIL) + 1} bad-value cases rejected)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
