"""Model versions in the MLflow registry: register, resolve to local files, alias, promote.

A model is two plain files, `model.safetensors` and `config.json` (what
`tsm_model.save` writes). Registering logs them as an MLflow pyfunc model
(`registry.pyfunc`: a LoggedModel whose artifacts hold an MLmodel, a code
file and the two files under `artifacts/`) and creates a registered model
version whose source is that model (`models:/<model_id>`), so
`mlflow.pyfunc.load_model("models:/NAME@ALIAS")` works. A version's identity
is its weights' sha256 (the `weights_sha256` tag): `register_if_new` reuses
the version that has the same weights.

Resolving (what the label job does) downloads exactly the two files into a
local cache and checks the digest. Nothing here unpickles: only those two
files are ever fetched, and they are read with safetensors and json by
`tsm_model`. Versions registered before models were MLflow models (the two
files straight in a run's `model/` folder, no MLmodel) still resolve.

Offline accuracy lives on the model as metrics tied to the dataset it was
measured on (`registry.evaluations`); `promote` compares versions only on the
same dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import one_line
from registry.evaluations import (
    Evaluation,
    dataset_source,
    evaluations,
    latest_by_dataset,
    record,
)
from registry.tracking import TrackedRun, client

MODEL_FILES = ("model.safetensors", "config.json")
WEIGHTS = "model.safetensors"
LEGACY_ARTIFACT_DIR = "model"  # where versions made before pyfunc models kept the files in a run
REGISTRY_EXPERIMENT = "model-registry"  # runs created only to log models being registered
DIGEST_TAG = "weights_sha256"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a LoggedModel: the versions made from it
CACHE_ENV = "TSM_MODEL_CACHE"
_MODEL_ID_SOURCE = re.compile(r"^models:/(m-[0-9a-f]+)/?$")


class ModelNotFoundError(LookupError):
    """A model URI that names no model: unknown directory, name, alias or version."""


class PromotionRefused(RuntimeError):
    """`promote` declined: the candidate is unmeasured, measured on another dataset than the
    alias holder, or worse on the same dataset."""


@dataclass(frozen=True)
class ModelRef:
    """A model resolved to local files.

    `path` holds `model.safetensors` and `config.json`; `name`/`version` are
    what the output rows and MLflow runs record (`version` is the registry
    version, or `local-<sha256[:12]>` of the weights for a plain directory).
    """

    path: Path
    name: str
    version: str
    uri: str
    model_id: str | None = None  # the MLflow LoggedModel of a registered version


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version as `tsm models list` shows it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""
    run_id: str | None = None
    created_ms: int = 0
    model_id: str | None = None  # None for versions registered before they were MLflow models

    def tag_number(self, key: str) -> float | None:
        """A numeric tag (e.g. `val_top1`, set by `tsm train`) as a float, or None."""
        value = self.tags.get(key)
        return float(value) if value not in (None, "") else None

    def evaluations(self) -> list[Evaluation]:
        """Every evaluation of this version, oldest first."""
        return evaluations(self.model_id)

    def latest_evaluations(self) -> dict[str, Evaluation]:
        """dataset digest -> the newest evaluation on it, newest first."""
        return latest_by_dataset(self.evaluations())


def weights_digest(model_dir: str | Path) -> str:
    """sha256 hex digest of the directory's `model.safetensors`."""
    h = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_dir(model_dir: str | Path) -> Path:
    """The directory as a Path, or ModelNotFoundError naming what is missing."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelNotFoundError(f"model directory not found: {model_dir}")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"{model_dir} is not a model directory (missing {', '.join(missing)})"
        )
    return path


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, alias, None); `models:/name/3` -> (name, None, "3")."""
    body = uri[len("models:/") :].strip("/")
    if "@" in body:
        name, _, alias = body.partition("@")
        if name and alias and "/" not in alias:
            return name, alias, None
    else:
        name, _, version = body.partition("/")
        if name and version and version.isdigit():
            return name, None, version
    raise ModelNotFoundError(
        f"bad model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or a directory"
    )


def _not_found(e: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(e, MlflowException) and e.error_code in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
    )


def cache_root() -> Path:
    """Where registry downloads go: `$TSM_MODEL_CACHE`, else `~/.cache/tsm-labeller/models`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "tsm-labeller" / "models"


def _get_version(c, name: str, alias: str | None, version: str | None):
    try:
        if alias is not None:
            return c.get_model_version_by_alias(name, alias)
        return c.get_model_version(name, version)
    except Exception as e:
        if not _not_found(e):
            raise
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        versions = _search(c, name)
        if not versions:
            raise ModelNotFoundError(f"no registered model named {name!r}") from None
        known = ", ".join(str(v.version) for v in versions)
        raise ModelNotFoundError(
            f"registered model {name!r} has no {what} (versions: {known})"
        ) from None


def _search(c, name: str):
    return sorted(
        c.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )


def model_id_of(mv) -> str | None:
    """The LoggedModel a version was made from (its `models:/<model_id>` source), if any."""
    model_id = getattr(mv, "model_id", None)  # the OSS SQL registry leaves this empty
    if model_id:
        return model_id
    m = _MODEL_ID_SOURCE.match(mv.source or "")
    return m.group(1) if m else None


def _files_root(c, mv) -> str:
    """The artifact URI of the folder that holds the version's two model files."""
    root = c.get_model_version_download_uri(mv.name, str(mv.version)).rstrip("/")
    if model_id_of(mv) is not None:  # a pyfunc model: the files are its pyfunc artifacts
        from registry.pyfunc import FILES_DIR

        return f"{root}/{FILES_DIR}"
    return root  # a version registered before: the files at the source itself


def _download(root: str, dest: Path, digest: str | None) -> Path:
    """Fetch exactly the model files under `root` into `dest` (atomically; reused if present)."""
    if all((dest / f).is_file() for f in MODEL_FILES) and (
        digest is None or weights_digest(dest) == digest
    ):
        return dest
    import mlflow.artifacts

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    try:
        for f in MODEL_FILES:  # only the two plain files, never a whole (possibly pickled) tree
            mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{f}", dst_path=str(tmp))
        if digest is not None and weights_digest(tmp) != digest:
            raise ModelNotFoundError(f"downloaded weights from {root} do not match the registry")
        shutil.rmtree(dest, ignore_errors=True)
        # rename is atomic, so a concurrent reader sees either nothing or complete files
        try:
            tmp.rename(dest)
        except OSError:  # another process won the race with the same files
            if not all((dest / f).is_file() for f in MODEL_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(uri: str) -> ModelRef:
    """A model URI (`models:/name@alias`, `models:/name/version` or a directory) as local files."""
    if not uri.startswith("models:/"):
        path = check_model_dir(uri).resolve()
        return ModelRef(path, path.name, "local-" + weights_digest(path)[:12], uri)
    name, alias, version = parse_models_uri(uri)
    c = client()
    mv = _get_version(c, name, alias, version)
    digest = (mv.tags or {}).get(DIGEST_TAG)
    try:
        root = _files_root(c, mv)
        path = _download(root, cache_root() / name / str(mv.version), digest)
    except ModelNotFoundError:
        raise
    except Exception as e:  # missing artifacts, unreachable store: say which version failed
        raise ModelNotFoundError(
            f"cannot fetch the files of {name} version {mv.version} from {mv.source}: "
            f"{one_line(e)}"
        ) from None
    return ModelRef(path, name, str(mv.version), uri, model_id_of(mv))


def _model_params(config) -> dict[str, str]:
    """The config as LoggedModel params (class names are in config.json, not here)."""
    return {k: str(v) for k, v in config.to_dict().items() if k != "class_names"}


def register_model(
    model_dir: str | Path,
    name: str,
    *,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the directory's model as an MLflow pyfunc model and register it; returns the version.

    With `run_id` the model is an output of that run (e.g. the training run);
    otherwise a run is created in the `model-registry` experiment to log it.
    This always makes a new version: `register_if_new` is the idempotent one.
    """
    import tsm_model
    from registry import pyfunc

    path = check_model_dir(model_dir)
    try:
        config = tsm_model.load_config(path)
    except (ValueError, OSError) as e:
        raise ModelNotFoundError(f"{model_dir}: {one_line(e)}") from None
    c = client()
    digest = weights_digest(path)
    model_tags = {DIGEST_TAG: digest}
    if run_id is None:
        with TrackedRun(REGISTRY_EXPERIMENT, f"register-{name}") as run:
            run_id = run.run_id
            logged = pyfunc.log_model(c, run_id, path, name=name, tags=model_tags,
                                      params=_model_params(config))
    else:
        logged = pyfunc.log_model(c, run_id, path, name=name, tags=model_tags,
                                  params=_model_params(config))
    try:
        c.get_registered_model(name)
    except Exception as e:
        if not _not_found(e):
            raise
        c.create_registered_model(name)
    all_tags = {DIGEST_TAG: digest, **(tags or {})}
    mv = c.create_model_version(name, f"models:/{logged.model_id}", run_id=run_id,
                                tags=all_tags, model_id=logged.model_id)
    # what mlflow.register_model does too: the LoggedModel lists the versions made from it
    made = json.loads(logged.tags.get(MODEL_VERSIONS_TAG, "[]"))
    made.append({"name": name, "version": str(mv.version)})
    c.set_logged_model_tags(logged.model_id, {MODEL_VERSIONS_TAG: json.dumps(made)})
    return str(mv.version)


def register_if_new(model_dir: str | Path, name: str, *, run_id: str | None = None,
                    tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """`(version, created)`: the version of `name` with these weights, registered if none is."""
    version = find_version_by_digest(name, weights_digest(check_model_dir(model_dir)))
    if version is not None:
        return version, False
    return register_model(model_dir, name, run_id=run_id, tags=tags), True


def _info(mv, aliases: dict[str, str] | None = None) -> VersionInfo:
    """A VersionInfo; `aliases` (alias -> version) fills in what version searches leave out."""
    if aliases is not None:
        names = [a for a, v in aliases.items() if str(v) == str(mv.version)]
    else:
        names = list(getattr(mv, "aliases", None) or ())
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(sorted(names)),
        tags=dict(mv.tags or {}),
        source=mv.source or "",
        run_id=mv.run_id,
        created_ms=int(mv.creation_timestamp or 0),
        model_id=model_id_of(mv),
    )


def list_versions(name: str | None = None) -> list[VersionInfo]:
    """Registered versions (of one model, or of all), by name then version number."""
    c = client()
    if name is not None:
        try:
            models = [c.get_registered_model(name)]
        except Exception as e:
            if _not_found(e):
                raise ModelNotFoundError(f"no registered model named {name!r}") from None
            raise
    else:
        models = sorted(c.search_registered_models(), key=lambda r: r.name)
    out: list[VersionInfo] = []
    for rm in models:
        # version searches do not fill in aliases; the registered model carries them
        aliases = dict(rm.aliases or {})
        out.extend(_info(mv, aliases) for mv in _search(c, rm.name))
    return out


def get_version(name: str, version: str) -> VersionInfo:
    """One version, or ModelNotFoundError."""
    return _info(_get_version(client(), name, None, str(version)))


def alias_version(name: str, alias: str) -> VersionInfo | None:
    """The version an alias points at, or None if the alias (or model) does not exist."""
    try:
        return _info(_get_version(client(), name, alias, None))
    except ModelNotFoundError:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `models:/name@alias` at `version` (which must exist)."""
    get_version(name, version)
    client().set_registered_model_alias(name, alias, str(version))


def find_version_by_digest(name: str, digest: str) -> str | None:
    """The lowest version of `name` with these weights, if any (for idempotent registration)."""
    try:
        versions = list_versions(name)
    except ModelNotFoundError:
        return None
    for v in versions:
        if v.tags.get(DIGEST_TAG) == digest:
            return v.version
    return None


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on an existing version."""
    c = client()
    get_version(name, version)
    for key, value in tags.items():
        c.set_model_version_tag(name, str(version), key, str(value))


def record_evaluation(name: str, version: str, dataset, metrics: dict[str, float], *,
                      experiment: str = "tsm-evaluate") -> str:
    """Record accuracy measured elsewhere on a version: a run of its own, metrics on the
    version's MLflow model tied to `dataset` (see `registry.evaluations.labelled_dataset`).
    Returns the run id. `tsm evaluate` does this (and more) itself.
    """
    v = get_version(name, version)
    if v.model_id is None:
        raise ModelNotFoundError(
            f"{name} version {version} is not an MLflow model (registered before they were); "
            "register its files again to evaluate it")
    with TrackedRun(experiment, f"eval-{name}-{version}",
                    tags={"model_name": name, "model_version": str(version)}) as run:
        record(run, dataset, metrics, model_id=v.model_id)
    return run.run_id


def promote(name: str, version: str, alias: str = "champion", *, force: bool = False) -> str | None:
    """Move `alias` to `version`; returns the version it pointed at before (None if unset).

    Unless `force`, results are compared only on the same dataset (digest):

    - the candidate must have been evaluated (on any dataset if the alias is
      unset or its holder was never evaluated);
    - it must have been evaluated on a dataset the alias holder was evaluated
      on (refused otherwise, naming the holder's newest dataset);
    - on every dataset both were evaluated on, its latest top-1 must be at
      least the holder's latest top-1 there.
    """
    candidate = get_version(name, version)
    current = alias_version(name, alias)
    if not force:
        _check_promotion(candidate, current, alias)
    set_alias(name, alias, candidate.version)
    return current.version if current is not None else None


def _check_promotion(candidate: VersionInfo, current: VersionInfo | None, alias: str) -> None:
    name, version = candidate.name, candidate.version
    mine = candidate.latest_evaluations()
    holder = current is not None and current.version != candidate.version
    theirs = current.latest_evaluations() if holder else {}
    if not theirs:  # no holder, or one never measured: the candidate needs a measurement
        if not mine:
            raise PromotionRefused(
                f"{name} version {version} has no evaluation; run `tsm evaluate --model "
                f"models:/{name}/{version} --manifest M` first or pass --force")
        return
    shared = [d for d in theirs if d in mine]  # the holder's newest datasets first
    if not shared:
        ref = next(iter(theirs.values()))
        source = dataset_source(ref)
        raise PromotionRefused(
            f"{name} version {version} has no evaluation on the dataset @{alias} (version "
            f"{current.version}) was measured on: {ref.describe()}"
            + (f" from {source}" if source else "")
            + f"; run `tsm evaluate --model models:/{name}/{version} --manifest "
            f"{source or 'THAT_MANIFEST'}`, or pass --force")
    for digest in shared:
        new, old = mine[digest].top1, theirs[digest].top1
        if new is not None and old is not None and new < old:
            raise PromotionRefused(
                f"{name} version {version} top-1 {new:.4f} is lower than @{alias} (version "
                f"{current.version}) top-1 {old:.4f} on {theirs[digest].describe()}; pass "
                "--force to promote anyway")
