"""Greengrass v2 model components from model component directories (``edge-agent package-model``).

A model component directory (``manifest.json`` and the model file it names) becomes the two things
Greengrass deploys::

    OUT/artifacts/NAME/VERSION/NAME.zip    the directory's files at the root of the archive
    OUT/recipes/NAME-VERSION.json          the component recipe

which is also the layout ``greengrass-cli deployment create --recipeDir OUT/recipes --artifactDir
OUT/artifacts`` reads for a local deployment. For the cloud, upload the archive to the recipe's S3 URI
and create the component version from the recipe.

On the device Greengrass unpacks the archive into ``{artifacts:decompressedPath}/NAME/`` (a folder named
after the archive). The recipe's install step points the link ``NAME`` in the agent component's models
directory, ``{AGENT:work:path}/models``, at that folder, so the agent lists the model under the
component's name, which is the ``model_component`` clients pass. A new version swaps the link in one
rename; when the component is removed Greengrass deletes its artifacts and the agent drops the dangling
link. The archive is reproducible: the same directory gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent._version import __version__
from edge_agent.errors import EdgeAgentError
from edge_agent.manifest import load_manifest
from edge_agent.models import validate_component_name

RECIPE_FORMAT_VERSION = "2020-01-25"
# The Greengrass component that runs the agent (deploy/greengrass/edgeagent.EdgeAgent.recipe.yaml).
DEFAULT_AGENT_COMPONENT = "edgeagent.EdgeAgent"
DEFAULT_PUBLISHER = "edge-agent package-model"
# Where the archive goes when no --s3-prefix is given: AWS's documentation bucket, to be replaced.
PLACEHOLDER_S3_PREFIX = "s3://amzn-s3-demo-bucket/greengrass-components"
# Greengrass component versions are semantic versions (major.minor.patch, optional pre-release/build).
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z.-]+)?$"
)
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
# Fixed metadata so the archive's bytes depend only on the files' names and contents.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZIP_FILE_MODE = 0o644
_COPY_CHUNK_BYTES = 1 << 20
_ZIP64_THRESHOLD_BYTES = (1 << 31) - 1


@dataclass(frozen=True)
class PackagedModel:
    """What ``package_model`` wrote."""

    name: str
    version: str
    archive: Path
    recipe: Path
    artifact_uri: str
    archive_sha256: str
    files: tuple[str, ...]


def agent_version_requirement(version: str = __version__) -> str:
    """Any agent from ``version`` up to the next major version (npm range syntax, as Greengrass reads it)."""
    major = int(version.split(".", 1)[0])
    return f">={version} <{major + 1}.0.0"


def install_script(name: str, agent_component: str) -> str:
    """The model component's install step: link the unpacked archive into the agent's models directory.

    The link is made beside the target under a dot name (which the agent ignores) and renamed over the
    old one, so the agent never sees the component missing while a new version installs.
    """
    return (
        "set -eu\n"
        f'models="{{{agent_component}:work:path}}/models"\n'
        'mkdir -p "$models"\n'
        f'ln -sfn "{{artifacts:decompressedPath}}/{name}" "$models/.{name}.new"\n'
        f'mv -Tf "$models/.{name}.new" "$models/{name}"\n'
        f'echo "edge-agent model component {name}: $models/{name} -> {{artifacts:decompressedPath}}/{name}"\n'
    )


def build_recipe(
    name: str,
    version: str,
    artifact_uri: str,
    *,
    description: str = "",
    agent_component: str = DEFAULT_AGENT_COMPONENT,
    agent_requirement: str | None = None,
    publisher: str = DEFAULT_PUBLISHER,
) -> dict[str, Any]:
    """The Greengrass recipe (as a JSON object) of a model component packaged as ``NAME.zip``."""
    summary = f"Model component {name} for the edge-agent ({agent_component})."
    if description:
        summary = f"{description.rstrip('. ')}. {summary}"
    return {
        "RecipeFormatVersion": RECIPE_FORMAT_VERSION,
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDescription": summary,
        "ComponentPublisher": publisher,
        "ComponentDependencies": {
            # SOFT: restarting or updating the agent does not restart the model component.
            agent_component: {
                "VersionRequirement": agent_requirement or agent_version_requirement(),
                "DependencyType": "SOFT",
            },
        },
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": {
                    "Install": {"Script": install_script(name, agent_component), "Timeout": 60},
                },
                "Artifacts": [
                    # Read ALL: the agent runs as its own component's user, not this one's.
                    {"URI": artifact_uri, "Unarchive": "ZIP", "Permission": {"Read": "ALL", "Execute": "NONE"}},
                ],
            }
        ],
    }


def _archive_members(component_dir: Path) -> list[tuple[str, Path]]:
    """(name in the archive, file) for every regular file under the directory, hidden ones left out."""
    members: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(component_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for file_name in sorted(files):
            if file_name.startswith("."):
                continue
            path = Path(root) / file_name
            if not path.is_file():  # a dangling link, a socket...
                raise ValueError(f"{path} is not a regular file; remove it from {component_dir} or replace it "
                                 "with the file it stands for.")
            members.append((path.relative_to(component_dir).as_posix(), path))
    return members


def write_archive(component_dir: Path, archive: Path) -> tuple[str, ...]:
    """Writes the directory's files into a reproducible ZIP archive; returns the member names."""
    members = _archive_members(component_dir)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f".{archive.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for member, path in members:
                info = zipfile.ZipInfo(member, date_time=_ZIP_EPOCH)
                info.external_attr = (stat.S_IFREG | _ZIP_FILE_MODE) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                size = path.stat().st_size
                info.file_size = size
                with path.open("rb") as source, zf.open(info, "w", force_zip64=size > _ZIP64_THRESHOLD_BYTES) as dest:
                    shutil.copyfileobj(source, dest, _COPY_CHUNK_BYTES)
        os.replace(partial, archive)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return tuple(member for member, _ in members)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_COPY_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def package_model(
    component_dir: Path,
    out_dir: Path,
    *,
    version: str,
    name: str | None = None,
    s3_prefix: str | None = None,
    agent_component: str = DEFAULT_AGENT_COMPONENT,
    agent_requirement: str | None = None,
    publisher: str = DEFAULT_PUBLISHER,
) -> PackagedModel:
    """Turns a model component directory into a Greengrass model component under ``out_dir``.

    Args:
        component_dir: a directory holding ``manifest.json`` and its model file.
        out_dir: where ``recipes/`` and ``artifacts/`` are written (created if needed).
        version: the component version (semantic version, e.g. ``1.0.0``).
        name: the component name, which clients pass as ``model_component`` (default: the directory's name).
        s3_prefix: ``s3://BUCKET/PREFIX``; the archive's URI is ``PREFIX/NAME/VERSION/NAME.zip``.
        agent_component: the agent's Greengrass component, whose models directory the model links into.
        agent_requirement: the agent versions this model needs (default: this version up to the next major).
        publisher: the recipe's ComponentPublisher.

    Raises:
        ValueError: naming the bad argument or the broken component, and what to do.
        OSError: the output cannot be written.
    """
    component_dir = Path(component_dir)
    if not component_dir.is_dir():
        raise ValueError(f"{component_dir} is not a directory; pass a model component directory "
                         "(manifest.json and the model file it names).")
    name = name or component_dir.resolve().name
    try:
        validate_component_name(name, "--name")
        validate_component_name(agent_component, "--agent-component")
        manifest = load_manifest(component_dir)
    except EdgeAgentError as exc:
        raise ValueError(str(exc)) from None
    if not manifest.model_file.is_file():
        raise ValueError(f"{manifest.model_file}: model file not found. Put the model there or fix model_file in "
                         f"{manifest.manifest_path}.")
    if not _SEMVER.match(version):
        raise ValueError(f"--version {version!r} is not a semantic version; Greengrass component versions are "
                         "MAJOR.MINOR.PATCH, e.g. 1.0.0.")
    prefix = (s3_prefix or PLACEHOLDER_S3_PREFIX).rstrip("/")
    if not _S3_URI.match(prefix):
        raise ValueError(f"--s3-prefix {s3_prefix!r} is not an S3 URI; write it s3://BUCKET or s3://BUCKET/PREFIX.")

    out_dir = Path(out_dir)
    archive = out_dir / "artifacts" / name / version / f"{name}.zip"
    recipe_path = out_dir / "recipes" / f"{name}-{version}.json"
    artifact_uri = f"{prefix}/{name}/{version}/{name}.zip"
    files = write_archive(component_dir, archive)
    recipe = build_recipe(name, version, artifact_uri, description=manifest.description,
                          agent_component=agent_component, agent_requirement=agent_requirement, publisher=publisher)
    _write_text(recipe_path, json.dumps(recipe, indent=2) + "\n")
    return PackagedModel(name=name, version=version, archive=archive, recipe=recipe_path, artifact_uri=artifact_uri,
                         archive_sha256=_sha256(archive), files=files)
