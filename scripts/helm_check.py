#!/usr/bin/env python3
"""Renders helm/hookfleet for each toggle and checks the result (run by scripts/helm-check).

Values are validated against the chart's values.schema.json first, as `helm install` does
(the offline renderer does not apply the schema: it prints the merged values with
--values-json and this script validates them with the `jsonschema` package, draft-07).
For every case: validate each manifest against the Kubernetes schemas (strict), check the
chart's invariants (non-root, read-only root, probes, grace period above the drain timeout,
secrets only by reference), and run `hookfleet config check` on the rendered config.toml with
the environment each container gets. Bad values must fail with a clear message: the
schema's for types, enums and unknown keys, the templates' for what a schema cannot say.
The PrometheusRule's expressions may name only metrics src/metrics/ defines and the code
records, and each alert's runbook_url must name a section of docs/RUNBOOK.md.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
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
    # base64 of 32 bytes, as `openssl rand -base64 32` makes.
    "webhook-secret-key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
}
CONFIG_PATH = "/etc/hookfleet/config.toml"

errors: list[str] = []
# The parsed command line, for expectations that need the repository's files.
ARGS: argparse.Namespace


def fail(case: str, message: str) -> None:
    errors.append(f"[{case}] {message}")


def schema_errors(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The merged values' violations of values.schema.json, worded like Helm's report."""
    cmd = [args.renderer, "--values-json", *extra, args.chart]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return [f"(values): {out.stderr.strip()}"]
    schema = json.loads((Path(args.chart) / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    found = []
    for e in validator.iter_errors(json.loads(out.stdout)):
        path = ".".join(str(p) for p in e.absolute_path) or "(root)"
        found.append(f"{path}: {e.message}")
    return sorted(found)


def render(args: argparse.Namespace, extra: list[str], schema: bool = True) -> subprocess.CompletedProcess:
    """Renders like `helm template`: the values must meet the schema before any template runs
    (schema=False: like `--skip-schema-validation`)."""
    cmd = [args.renderer, "--release", "hf", "--namespace", "hookfleet", *extra, args.chart]
    bad = schema_errors(args, extra) if schema else []
    if bad:
        chart = Path(args.chart).name
        message = ("values don't meet the specifications of the schema(s) in the following "
                   f"chart(s):\n{chart}:\n" + "\n".join(f"- {b}" for b in bad))
        return subprocess.CompletedProcess(cmd, 1, "", message)
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def check_schema_file(args: argparse.Namespace) -> None:
    """values.schema.json is valid draft-07 and names no value that values.yaml lacks."""
    schema = json.loads((Path(args.chart) / "values.schema.json").read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        fail("schema", f"values.schema.json is not valid draft-07: {e.message}")
        return
    values = yaml.safe_load((Path(args.chart) / "values.yaml").read_text())
    # Keys Helm itself may add when the chart is a dependency.
    injected = {"global", "enabled"}

    def walk(node: dict, vals, path: str) -> None:
        if node.get("additionalProperties") is not False or not isinstance(vals, dict):
            return
        for key, sub in node.get("properties", {}).items():
            if key in injected and not path:
                continue
            where = f"{path}.{key}" if path else key
            if key not in vals:
                fail("schema", f"values.schema.json describes {where}, which values.yaml lacks")
                continue
            if "$ref" in sub:
                sub = schema["definitions"][sub["$ref"].rsplit("/", 1)[1]]
            walk(sub, vals[key], where)

    walk(schema, values, "")


# Metrics src/metrics/ registers but no code records: an alert on one would never fire.
UNRECORDED: set[str] = set()

# How src/metrics/families.rs registers a field: its own helpers, or `reg` around a constructor.
REGISTRATION = r"\b(\w+): (?:reg|counter|counter_vec|gauge|gauge_vec|histogram|histogram_vec)\("


def metric_catalogue(metrics: Path) -> dict[str, set[str]]:
    """Metric name → label names, for every metric src/metrics/ (a folder, or one file)
    registers and some code outside it records (the others go to UNRECORDED)."""
    files = sorted(metrics.rglob("*.rs")) if metrics.is_dir() else [metrics]
    text = "\n".join(p.read_text() for p in files)
    src = metrics.parent
    elsewhere = "\n".join(p.read_text() for p in src.rglob("*.rs") if p not in files)
    catalogue = {}
    fields = list(re.finditer(REGISTRATION, text))
    for i, f in enumerate(fields):
        segment = text[f.end(): fields[i + 1].start() if i + 1 < len(fields) else len(text)]
        name = re.search(r'"(hookfleet_\w+)"', segment)
        if not name:
            continue
        labels = re.search(r'&\[((?:\s*"\w+",?)+)\s*\]', segment)
        if not re.search(rf"\.{f.group(1)}\b", elsewhere) and f.group(1) != "build_info":
            UNRECORDED.add(name.group(1))
            continue
        catalogue[name.group(1)] = set(re.findall(r'"(\w+)"', labels.group(1))) if labels else set()
    return catalogue


# Series Prometheus makes itself, and the target labels a ServiceMonitor scrape adds.
PROMETHEUS_SERIES = {"up": set()}
TARGET_LABELS = {"namespace", "job", "pod", "instance", "service", "container", "endpoint"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def expr_problems(expr: str, catalogue: dict[str, set[str]]) -> list[str]:
    """Metric and label names of a PromQL expression that hookfleet does not export."""
    problems = []
    known = {**catalogue, **PROMETHEUS_SERIES}

    def labels_of(metric: str):
        if metric in known:
            return known[metric]
        for suffix in HISTOGRAM_SUFFIXES:
            if metric.endswith(suffix) and metric[: -len(suffix)] in catalogue:
                return catalogue[metric[: -len(suffix)]] | ({"le"} if suffix == "_bucket" else set())
        return None

    for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        labels = labels_of(m.group(1))
        if labels is None:
            continue
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)):
            if label not in labels | TARGET_LABELS:
                problems.append(f"{m.group(1)} has no label {label!r}")
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)\b(\s*\()?", bare):
        word = m.group(1)
        if m.group(2) or word in PROMQL_WORDS:
            continue  # a function call or a keyword
        if word in UNRECORDED:
            problems.append(f"{word} is registered in src/metrics/ but nothing records it")
        elif labels_of(word) is None:
            problems.append(f"unknown metric {word!r} (not in src/metrics/)")
    if not re.search(r"hookfleet_\w+|\bup\b", expr):
        problems.append("names no metric")
    return problems


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def check_prometheus_rule(args, rule: dict) -> None:
    """Structure, metric names, runbook links, and `promtool check rules` when available."""
    case = "prometheusrule"
    catalogue = metric_catalogue(Path(args.metrics))
    runbook = Path(args.runbook).read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    groups = rule.get("spec", {}).get("groups") or []
    if not groups:
        fail(case, "PrometheusRule has no spec.groups")
    alerts = []
    for g in groups:
        if not g.get("name") or not g.get("rules"):
            fail(case, f"group {g.get('name')!r} needs a name and rules")
        for r in g.get("rules") or []:
            name = r.get("alert") or r.get("record") or "?"
            alerts.append(name)
            expr = str(r.get("expr", "")).strip()
            if not expr:
                fail(case, f"{name}: empty expr")
                continue
            for problem in expr_problems(expr, catalogue):
                fail(case, f"{name}: {problem} in {expr!r}")
            if "alert" not in r:
                continue
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                fail(case, f"{name}: severity label must be critical, warning or info")
            ann = r.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not str(ann.get(key, "")).strip():
                    fail(case, f"{name}: annotation {key} missing")
            anchor = str(ann.get("runbook_url", "")).partition("#")[2]
            if not str(ann.get("runbook_url", "")).split("#")[0].endswith("docs/RUNBOOK.md"):
                fail(case, f"{name}: runbook_url must point into docs/RUNBOOK.md")
            if anchor != name.lower() or anchor not in anchors:
                fail(case, f"{name}: runbook_url anchor #{anchor} is not a section of {args.runbook}")
    if len(alerts) != len(set(alerts)):
        fail(case, f"duplicate alert names: {alerts}")
    readme = Path(args.runbook).parent.parent / "README.md"
    for name in alerts:
        if name not in readme.read_text():
            fail(case, f"{name} is not listed in README.md's Alerts section")
    promtool = shutil.which("promtool")
    if promtool:
        path = Path(args.out) / "prometheusrule-groups.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            fail(case, f"promtool check rules: {(out.stdout + out.stderr).strip()}")
    else:
        print("helm-check: promtool not found; PromQL syntax not checked", file=sys.stderr)


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
            if case == "secret-key" and "HOOKFLEET_WEBHOOK__SECRET_KEY" not in env:
                fail(case, f"{who}: HOOKFLEET_WEBHOOK__SECRET_KEY missing")
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
                if effective["outbox"]["relay"] != (case not in ("relay", "combo", "private-ca", "cluster", "digest")):
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
    for absent in ("HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "PrometheusRule"):
        assert absent not in k, f"{absent} rendered by default"
    assert_spread(worker(k), "worker")
    image = pod_spec(worker(k))["containers"][0]["image"]
    assert image == "ghcr.io/example/hookfleet:0.1.0", image


def assert_spread(deployment, component):
    """Spread softly across nodes by default, selecting only the component's own pods."""
    (tsc,) = pod_spec(deployment)["topologySpreadConstraints"]
    assert tsc["topologyKey"] == "kubernetes.io/hostname", tsc
    assert tsc["whenUnsatisfiable"] == "ScheduleAnyway", tsc
    want = {**deployment["spec"]["selector"]["matchLabels"], "app.kubernetes.io/component": component}
    assert tsc["labelSelector"] == {"matchLabels": want}, tsc


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
    assert queues == ["hookfleet.push", "hookfleet.push.bulk", "hookfleet.webhook"], queues
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
    relay = next(d for d in k["Deployment"] if d["metadata"]["name"].endswith("-relay"))
    assert_spread(relay, "relay")
    assert_spread(worker(k), "worker")


def expect_servicemonitor(k):
    (sm,) = k["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "admin"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def expect_prometheusrule(k):
    (rule,) = k["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    before = len(errors)
    check_prometheus_rule(ARGS, rule)
    assert len(errors) == before, "see the prometheusrule errors"


DIGEST = "sha256:" + "0123456789abcdef" * 4


def expect_digest(k):
    pods = [pod_spec(d) for d in k["Deployment"] + k["Job"]]
    for pod in pods:
        image = pod["containers"][0]["image"]
        assert image == f"ghcr.io/example/hookfleet@{DIGEST}", image


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
    "prometheusrule": (["--set", "monitoring.prometheusRule.enabled=true"], expect_prometheusrule),
    "digest": (["--set", f"image.digest={DIGEST}", "--set", "image.tag=ignored",
                "--set", "relay.separate=true"], expect_digest),
    "private-ca": (["--set", "privateCA.configMap=corp-ca", "--set", "relay.separate=true"],
                   expect_private_ca),
    "cluster": (["--set", "existingSecret.amqpUrlsKey=amqp-urls", "--set", "relay.separate=true"],
                expect_relay),
    "secret-key": (["--set", "existingSecret.webhookSecretKeyKey=webhook-secret-key"],
                   expect_default),
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
    # The schema's messages (what `helm install` prints before rendering anything).
    "bad-mode": (BASE + ["--set", "autoscaling.mode=sometimes"],
                 "autoscaling.mode: 'sometimes' is not one of ['none', 'hpa', 'keda']"),
    "replicas-type": (BASE + ["--set", "worker.replicas=three"],
                      "worker.replicas: 'three' is not of type 'integer'"),
    "unknown-value": (BASE + ["--set", "replicaCount=3"],
                      "(root): Additional properties are not allowed ('replicaCount' was unexpected)"),
    "unknown-nested": (BASE + ["--set", "relay.replica=2"],
                       "relay: Additional properties are not allowed ('replica' was unexpected)"),
    "bad-digest": (BASE + ["--set", "image.digest=latest"],
                   "image.digest: 'latest' does not match"),
    "numeric-tag": (BASE + ["--set", "image.tag=2"], "image.tag: 2 is not of type 'string'"),
    "bad-pull-policy": (BASE + ["--set", "image.pullPolicy=Sometimes"],
                        "image.pullPolicy: 'Sometimes' is not one of"),
    "config-section": (BASE + ["--set", "config.worker=8"], "config.worker: 8 is not of type 'object'"),
    "bad-ratio": (BASE + ["--set", "monitoring.prometheusRule.webhookFailureRatio=2"],
                  "monitoring.prometheusRule.webhookFailureRatio: 2 is greater than the maximum of 1"),
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
    p.add_argument("--metrics", default="src/metrics")
    p.add_argument("--runbook", default="docs/RUNBOOK.md")
    args = p.parse_args()
    global ARGS
    ARGS = args
    Path(args.out).mkdir(parents=True, exist_ok=True)

    check_schema_file(args)
    bad = schema_errors(args, BASE)
    if bad:
        fail("schema", f"the default values break values.schema.json: {bad}")
    print(f"helm-check: schema: {'ok' if not errors else 'FAILED'}", file=sys.stderr)

    for case, (sets, expect) in CASES.items():
        before = len(errors)
        check_case(args, case, sets, expect)
        print(f"helm-check: {case}: {'ok' if len(errors) == before else 'FAILED'}", file=sys.stderr)

    # The templates' own guard still holds when the schema is skipped.
    for case, (extra, message) in {**MUST_FAIL, "bad-mode-no-schema": (
            BASE + ["--set", "autoscaling.mode=sometimes"],
            'autoscaling.mode must be none, hpa or keda, got "sometimes"')}.items():
        r = render(args, extra, schema=not case.endswith("-no-schema"))
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
    print(f"helm-check: passed (values.schema.json valid and met by the defaults, {len(CASES)} renders "
          f"validated against Kubernetes {args.kubernetes_version}, {len(MUST_FAIL) + 2} bad-value "
          f"cases rejected)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
