"""Rebuild the vendored JSON schemas in this folder (see README.md here).

    python infra/schemas/refresh.py --kuberay KUBERAY_CHECKOUT --k8s K8S_SCHEMA_DIR

KUBERAY_CHECKOUT is a KubeRay source tree at the release the manifests target
(its CRDs are read from ray-operator/config/crd/bases/). K8S_SCHEMA_DIR is a
"local-strict" folder of Kubernetes JSON schemas (one file per kind plus
_definitions.json), as shipped in the kubernetes-validate wheel on PyPI.

Each output file is one self-contained JSON Schema (draft 2020-12) for one kind:
only the definitions it reaches, no descriptions, objects closed to unknown
fields (what `kubectl apply`'s strict field validation does). CRD schemas are
converted from Kubernetes' OpenAPI v3 dialect: `nullable` becomes a "null" type,
`x-kubernetes-int-or-string` an integer-or-string, a required field with a default
is no longer required (the API server fills defaults in before it validates),
objects with listed properties and no `x-kubernetes-preserve-unknown-fields` get
`additionalProperties: false`;
CEL rules (`x-kubernetes-validations`) are dropped (the manifest tests check the
operator-side rules that matter to us by hand). Repeated large subtrees (the pod
template, container) are moved into `$defs` to keep the files small.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# output file -> source kind file in the Kubernetes schema folder
K8S_KINDS = {
    "namespace-v1.json": "namespace-v1.json",
    "configmap-v1.json": "configmap-v1.json",
    "secret-v1.json": "secret-v1.json",
    "serviceaccount-v1.json": "serviceaccount-v1.json",
    "role-rbac-v1.json": "role-rbac-v1.json",
    "rolebinding-rbac-v1.json": "rolebinding-rbac-v1.json",
    "cronjob-batch-v1.json": "cronjob-batch-v1.json",
}
# output file -> (CRD file, kind, served version)
CRD_KINDS = {
    "rayjob-ray-v1.json": ("ray.io_rayjobs.yaml", "RayJob", "v1"),
    "raycluster-ray-v1.json": ("ray.io_rayclusters.yaml", "RayCluster", "v1"),
}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
DEDUPE_MIN_CHARS = 1500  # subtrees smaller than this stay inline


def _strip(node):
    """Drop descriptions and Kubernetes-only annotations, recursively."""
    if isinstance(node, dict):
        return {
            k: _strip(v)
            for k, v in node.items()
            if k not in ("description", "x-kubernetes-group-version-kind")
            and k != "default"
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _ref_names(node, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            out.add(ref.split("#/$defs/", 1)[1])
        for v in node.values():
            _ref_names(v, out)
    elif isinstance(node, list):
        for v in node:
            _ref_names(v, out)


def _local_refs(node):
    """'/api/_definitions.json#/$defs/X' -> '#/$defs/X'."""
    if isinstance(node, dict):
        out = {k: _local_refs(v) for k, v in node.items()}
        if isinstance(out.get("$ref"), str) and "#/$defs/" in out["$ref"]:
            out["$ref"] = "#/$defs/" + out["$ref"].split("#/$defs/", 1)[1]
        return out
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def _closure(roots, all_defs: dict) -> dict:
    """The definitions reachable from `roots`, with local refs."""
    todo: set[str] = set()
    for r in roots:
        _ref_names(r, todo)
    defs: dict = {}
    while todo:
        name = todo.pop()
        if name in defs:
            continue
        defs[name] = _local_refs(_strip(all_defs[name]))
        more: set[str] = set()
        _ref_names(defs[name], more)
        todo |= more - defs.keys()
    return dict(sorted(defs.items()))


def k8s_schema(src: Path, kind_file: str) -> dict:
    all_defs = json.loads((src / "_definitions.json").read_text())["$defs"]
    root = _local_refs(_strip(json.loads((src / kind_file).read_text())))
    root.pop("$id", None)
    root["$defs"] = _closure([root], all_defs)
    return root


def _convert_crd(node):
    """Kubernetes structural schema (OpenAPI v3 dialect) -> JSON Schema."""
    if isinstance(node, list):
        return [_convert_crd(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _convert_crd(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k not in ("nullable", "default", "format")
    }
    # `properties` and `additionalProperties` map names to schemas: convert values only
    if "properties" in node:
        out["properties"] = {k: _convert_crd(v) for k, v in node["properties"].items()}
    if "required" in node:  # the API server fills defaults in before it validates
        props = node.get("properties", {})
        out["required"] = [r for r in node["required"] if "default" not in props.get(r, {})]
        if not out["required"]:
            del out["required"]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    open_object = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not open_object:
        out["additionalProperties"] = False
    return out


def _digest(node, memo: dict) -> tuple[str, int]:
    """(content hash, serialized size) of a subtree, memoised by id()."""
    key = id(node)
    if key in memo:
        return memo[key][0], memo[key][1]
    if isinstance(node, dict):
        parts = [(k, _digest(v, memo)) for k, v in sorted(node.items())]
        text = "{" + ",".join(f"{k}:{h}" for k, (h, _) in parts) + "}"
        size = sum(len(k) + s + 4 for k, (_, s) in parts) + 2
    elif isinstance(node, list):
        parts = [_digest(v, memo) for v in node]
        text = "[" + ",".join(h for h, _ in parts) + "]"
        size = sum(s + 1 for _, s in parts) + 2
    else:
        text = json.dumps(node)
        size = len(text)
    h = hashlib.sha256(text.encode()).hexdigest()
    memo[key] = (h, size, node)
    return h, size


def _subschemas(schema: dict):
    """(container, key, subschema) for each schema position directly below `schema`."""
    for name, sub in schema.get("properties", {}).items():
        yield schema["properties"], name, sub
    for name, sub in schema.get("$defs", {}).items():
        yield schema["$defs"], name, sub
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            yield schema, key, schema[key]
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield schema[key], i, sub


def _walk(schema: dict, visit, name: str = "root") -> None:
    for container, key, sub in list(_subschemas(schema)):
        visit(container, key, sub, name)
        _walk(sub, visit, key if isinstance(key, str) else name)


def _repeated(root: dict, defs: dict) -> list[tuple[int, str, str]]:
    """(size, hash, a name) of each large subschema found more than once."""
    memo: dict = {}
    found: dict[str, list] = {}  # hash -> [size, count, first name]

    def count(container, key, sub, name):
        if container is defs or "$ref" in sub:
            return
        h, size = _digest(sub, memo)
        if size >= DEDUPE_MIN_CHARS:
            found.setdefault(h, [size, 0, name if isinstance(key, int) else key])[1] += 1

    _walk(root, count)
    return [(size, h, name) for h, (size, n, name) in found.items() if n > 1]


def _replace(root: dict, defs: dict, target: str, ref: str) -> dict:
    """Replace each subschema with hash `target` by a $ref to `ref`; one of them."""
    memo: dict = {}
    bodies: list = []

    def replace(container, key, sub, _name):
        if container is not defs and "$ref" not in sub and _digest(sub, memo)[0] == target:
            bodies.append(sub)
            container[key] = {"$ref": f"#/$defs/{ref}"}

    _walk(root, replace)
    return copy.deepcopy(bodies[0])


def _dedupe(root: dict) -> dict:
    """Move the largest repeated subschema into $defs, until none is left."""
    defs = root.setdefault("$defs", {})
    while repeated := _repeated(root, defs):
        _, target, name = max(repeated)
        ref = f"{name}-{target[:8]}"
        defs[ref] = _replace(root, defs, target, ref)
    return root


def crd_schema(crd_file: Path, kind: str, version: str, object_meta: dict) -> dict:
    crd = yaml.safe_load(crd_file.read_text())
    assert crd["spec"]["names"]["kind"] == kind, crd_file
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _convert_crd(ver["schema"]["openAPIV3Schema"])
    group = crd["spec"]["group"]
    props = schema["properties"]
    props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version}"]}
    props["kind"] = {"type": "string", "enum": [kind]}
    props["metadata"] = {"$ref": f"#/$defs/{OBJECT_META}"}
    schema["additionalProperties"] = False
    schema = _dedupe(schema)
    schema["$defs"].update(object_meta)
    schema["$defs"] = dict(sorted(schema["$defs"].items()))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kuberay", type=Path, required=True, help="KubeRay source tree")
    ap.add_argument("--k8s", type=Path, required=True, help="a *-local-strict schema folder")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    for out, kind_file in K8S_KINDS.items():
        write(args.out / out, k8s_schema(args.k8s, kind_file))
    all_defs = json.loads((args.k8s / "_definitions.json").read_text())["$defs"]
    meta_root = {"$ref": f"#/$defs/{OBJECT_META}"}
    object_meta = _closure([meta_root], all_defs)
    bases = args.kuberay / "ray-operator" / "config" / "crd" / "bases"
    for out, (crd_file, kind, version) in CRD_KINDS.items():
        write(args.out / out, crd_schema(bases / crd_file, kind, version, object_meta))


def write(path: Path, schema: dict) -> None:
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"{path}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
