"""Model versions in the MLflow registry: register, resolve to local files, alias, measure.

A model is two plain files, `model.safetensors` and `config.json` (what
`tsm_model.save` writes). Registering logs them as run artifacts and creates a
registered model version whose source is that artifact folder; resolving
downloads them to a local cache. Nothing here unpickles: only those two files
are ever fetched, and they are read with safetensors and json by `tsm_model`.

Offline accuracy measured by `tsm evaluate` is kept on the version itself as
tags (`top1`, `top5`, ...), so `tsm models promote` can compare versions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import one_line
from registry.tracking import TrackedRun, client

MODEL_FILES = ("model.safetensors", "config.json")
WEIGHTS = "model.safetensors"
ARTIFACT_DIR = "model"  # where register_model puts the files inside the run
REGISTRY_EXPERIMENT = "model-registry"  # runs created only to hold registered files
DIGEST_TAG = "weights_sha256"
CACHE_ENV = "TSM_MODEL_CACHE"


class ModelNotFoundError(LookupError):
    """A model URI that names no model: unknown directory, name, alias or version."""


class PromotionRefused(RuntimeError):
    """`promote` declined: the candidate is unmeasured or measures worse than the champion."""


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

    def metric(self, key: str) -> float | None:
        """A measured accuracy tag (`top1`, `top5`, ...) as a float, or None if never measured."""
        value = self.tags.get(key)
        return float(value) if value not in (None, "") else None


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


def _download(source: str, dest: Path, digest: str | None) -> Path:
    """Fetch exactly the model files from `source` into `dest` (atomically; reused if present)."""
    if all((dest / f).is_file() for f in MODEL_FILES) and (
        digest is None or weights_digest(dest) == digest
    ):
        return dest
    import mlflow.artifacts

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    try:
        for f in MODEL_FILES:  # only the two plain files, never a whole (possibly pickled) tree
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source.rstrip('/')}/{f}", dst_path=str(tmp)
            )
        if digest is not None and weights_digest(tmp) != digest:
            raise ModelNotFoundError(f"downloaded weights from {source} do not match the registry")
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
    mv = _get_version(client(), name, alias, version)
    digest = (mv.tags or {}).get(DIGEST_TAG)
    try:
        path = _download(mv.source, cache_root() / name / str(mv.version), digest)
    except ModelNotFoundError:
        raise
    except Exception as e:  # missing artifacts, unreachable store: say which version failed
        raise ModelNotFoundError(
            f"cannot fetch the files of {name} version {mv.version} from {mv.source}: "
            f"{one_line(e)}"
        ) from None
    return ModelRef(path, name, str(mv.version), uri)


def register_model(
    model_dir: str | Path,
    name: str,
    *,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the directory's model files as run artifacts and register them; returns the version.

    With `run_id` the files go into that run (e.g. the training run); otherwise
    a run is created in the `model-registry` experiment just to hold them.
    """
    path = check_model_dir(model_dir)
    c = client()
    if run_id is None:
        with TrackedRun(REGISTRY_EXPERIMENT, f"register-{name}") as run:
            run_id = run.run_id
            for f in MODEL_FILES:
                run.log_artifact(path / f, artifact_path=ARTIFACT_DIR)
    else:
        for f in MODEL_FILES:
            c.log_artifact(run_id, str(path / f), artifact_path=ARTIFACT_DIR)
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
    try:
        c.get_registered_model(name)
    except Exception as e:
        if not _not_found(e):
            raise
        c.create_registered_model(name)
    all_tags = {DIGEST_TAG: weights_digest(path), **(tags or {})}
    mv = c.create_model_version(name, source, run_id=run_id, tags=all_tags)
    return str(mv.version)


def register_if_new(model_dir: str | Path, name: str, *,
                    tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """`(version, created)`: the version of `name` with these weights, registered if none is."""
    version = find_version_by_digest(name, weights_digest(model_dir))
    if version is not None:
        return version, False
    return register_model(model_dir, name, tags=tags), True


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


def record_metrics(name: str, version: str, metrics: dict[str, float]) -> None:
    """Store measured offline accuracy on the version as tags (e.g. `top1`, `top5`)."""
    tag_version(name, version, {k: f"{float(v):.6f}" for k, v in metrics.items()})


def promote(name: str, version: str, alias: str = "champion", *, force: bool = False) -> str | None:
    """Move `alias` to `version`; returns the version it pointed at before (None if unset).

    Refuses (PromotionRefused) a version with no measured top-1, or one whose
    top-1 is lower than the current holder's, unless `force`.
    """
    candidate = get_version(name, version)
    current = alias_version(name, alias)
    if not force:
        top1 = candidate.metric("top1")
        if top1 is None:
            raise PromotionRefused(
                f"{name} version {version} has no measured top-1; run `tsm evaluate` first "
                "or pass --force"
            )
        if current is not None and current.version != candidate.version:
            best = current.metric("top1")
            if best is not None and top1 < best:
                raise PromotionRefused(
                    f"{name} version {version} top-1 {top1:.4f} is lower than @{alias} "
                    f"(version {current.version}) top-1 {best:.4f}; pass --force to promote anyway"
                )
    set_alias(name, alias, candidate.version)
    return current.version if current is not None else None
