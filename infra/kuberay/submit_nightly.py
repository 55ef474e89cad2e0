"""Submit tonight's labelling run: a RayJob copied from the suspended template.

Runs in the nightly CronJob's pod (infra/kuberay/nightly-cronjob.yaml), with the
Python standard library only, talking to the Kubernetes API with the pod's
service account. What it does:

1. the date: LABEL_DATE if set (YYYY-MM-DD, for backfills), else yesterday (UTC);
2. a nightly RayJob for that date still going (a retry of this pod) is adopted;
   one for another date still going is waited for (one run per output at a time);
3. otherwise the template RayJob (TEMPLATE) is copied: `${LABEL_DATE}` in its
   entrypoint becomes the date, `suspend` is cleared, the name is
   `tsm-label-YYYYMMDD-HHMMSS` (unique, and a valid RayJob name);
4. finished nightly RayJobs beyond the newest KEEP_FINISHED are deleted;
5. it waits for the run to end and exits 0 if the Ray job SUCCEEDED, 1 if not.

Environment: NAMESPACE, TEMPLATE, LABEL_DATE, KEEP_FINISHED (14), POLL_SECONDS
(60); K8S_API overrides the API server address (tests).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TOKEN = "${LABEL_DATE}"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
DATE_LABEL = "tsm-labeller/label-date"
RUN_COMPONENT = "nightly-run"
RUN_SELECTOR = f"{NAME_LABEL}=tsm-labeller,{COMPONENT_LABEL}={RUN_COMPONENT}"
# KubeRay's JobDeploymentStatus values after which nothing more happens to a RayJob
FINISHED = {"Complete", "Failed", "ValidationFailed"}
MAX_NAME = 47  # KubeRay: RayJob names are DNS-1035 labels of at most 47 characters


def log(message: str) -> None:
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} {message}", flush=True)


class Api:
    """The few Kubernetes API calls needed, for RayJobs in one namespace."""

    def __init__(self, server: str, namespace: str, token: str | None, ca_file: str | None):
        self.base = f"{server.rstrip('/')}/apis/ray.io/v1/namespaces/{namespace}/rayjobs"
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @classmethod
    def in_cluster(cls, namespace: str) -> Api:
        if os.environ.get("K8S_API"):
            return cls(os.environ["K8S_API"], namespace, None, None)
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        token = (SA_DIR / "token").read_text().strip()
        return cls(f"https://{host}:{port}", namespace, token, str(SA_DIR / "ca.crt"))

    def call(self, method: str, path: str = "", body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise RuntimeError(f"{method} {self.base}{path}: HTTP {e.code}: {detail}") from None

    def get(self, name: str) -> dict:
        return self.call("GET", f"/{name}")

    def list_runs(self) -> list[dict]:
        query = urllib.parse.urlencode({"labelSelector": RUN_SELECTOR})
        return self.call("GET", f"?{query}").get("items", [])

    def create(self, rayjob: dict) -> dict:
        return self.call("POST", "", rayjob)

    def delete(self, name: str) -> None:
        self.call("DELETE", f"/{name}")


def label_date(now: dt.datetime, override: str = "") -> dt.date:
    """The input date: `override` (YYYY-MM-DD) or the UTC day before `now`."""
    if override.strip():
        return dt.date.fromisoformat(override.strip())
    return now.astimezone(dt.UTC).date() - dt.timedelta(days=1)


def render(template: dict, day: dt.date, now: dt.datetime) -> dict:
    """The RayJob for `day`: the template's spec, its entrypoint dated, not suspended."""
    spec = copy.deepcopy(template["spec"])
    if TOKEN not in spec.get("entrypoint", ""):
        raise ValueError(f"the template's entrypoint has no {TOKEN}: {spec.get('entrypoint')!r}")
    spec["entrypoint"] = spec["entrypoint"].replace(TOKEN, day.isoformat())
    spec["suspend"] = False
    labels = dict(template["metadata"].get("labels", {}))
    labels.update({COMPONENT_LABEL: RUN_COMPONENT, DATE_LABEL: day.isoformat()})
    name = f"tsm-label-{day:%Y%m%d}-{now.astimezone(dt.UTC):%H%M%S}"
    if len(name) > MAX_NAME:
        raise ValueError(f"RayJob name too long for KubeRay: {name}")
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "tsm-labeller/template": template["metadata"]["name"],
                "tsm-labeller/submitted-at": now.astimezone(dt.UTC).isoformat(),
            },
        },
        "spec": spec,
    }


def deployment_status(rayjob: dict) -> str:
    return rayjob.get("status", {}).get("jobDeploymentStatus", "")


def finished(rayjob: dict) -> bool:
    return deployment_status(rayjob) in FINISHED


def wait_for(api: Api, name: str, poll_s: float, max_errors: int = 10) -> dict:
    """Poll RayJob `name` until it has finished; its last state.

    A run lasts hours: API hiccups are logged and retried, `max_errors` in a row end it
    (the pod fails, and the Job's retry adopts the same RayJob).
    """
    last = None
    errors = 0
    while True:
        try:
            rayjob = api.get(name)
            errors = 0
        except (OSError, RuntimeError) as e:  # URLError and timeouts are OSErrors
            errors += 1
            if errors >= max_errors:
                raise
            log(f"{name}: {e} (retrying)")
            time.sleep(poll_s)
            continue
        state = (deployment_status(rayjob), rayjob.get("status", {}).get("jobStatus", ""))
        if state != last:
            log(f"{name}: {state[0] or 'New'} (Ray job: {state[1] or '-'})")
            last = state
        if finished(rayjob):
            return rayjob
        time.sleep(poll_s)


def prune(api: Api, runs: list[dict], keep: int, current: str) -> None:
    """Delete finished nightly RayJobs beyond the newest `keep`."""
    done = [r for r in runs if finished(r) and r["metadata"]["name"] != current]
    done.sort(key=lambda r: r["metadata"].get("creationTimestamp", ""), reverse=True)
    for old in done[keep:]:
        log(f"deleting finished {old['metadata']['name']}")
        api.delete(old["metadata"]["name"])


def main(now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    namespace = os.environ.get("NAMESPACE") or (SA_DIR / "namespace").read_text().strip()
    template_name = os.environ.get("TEMPLATE", "tsm-label-nightly-template")
    keep = int(os.environ.get("KEEP_FINISHED", "14"))
    poll_s = float(os.environ.get("POLL_SECONDS", "60"))
    day = label_date(now, os.environ.get("LABEL_DATE", ""))
    api = Api.in_cluster(namespace)

    runs = api.list_runs()
    going = [r for r in runs if not finished(r)]
    mine = [r for r in going if r["metadata"].get("labels", {}).get(DATE_LABEL) == day.isoformat()]
    if mine:
        name = mine[0]["metadata"]["name"]
        log(f"adopting {name}, already submitted for {day}")
    else:
        for other in going:
            log(f"waiting for {other['metadata']['name']} to finish first")
            wait_for(api, other["metadata"]["name"], poll_s)
        rayjob = render(api.get(template_name), day, now)
        name = api.create(rayjob)["metadata"]["name"]
        log(f"created {name}: {rayjob['spec']['entrypoint']}")
    prune(api, api.list_runs(), keep, name)

    result = wait_for(api, name, poll_s)
    status = result.get("status", {})
    ok = status.get("jobStatus") == "SUCCEEDED"
    log(f"{name} ended: {deployment_status(result)}, Ray job {status.get('jobStatus') or '-'}"
        + ("" if ok else f" ({status.get('reason', '')}: {status.get('message', '')})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
