"""What the project ships: Greengrass model components (package-model), the wheel, the CPU image's build.

The slow tests build the wheel and install it into fresh virtualenvs, then run the installed copy from a
directory outside the source tree: the container image's build steps (docker/Dockerfile.cpu's own RUN
line) and the Greengrass agent component's lifecycle (its recipe's Install, Run and Shutdown scripts, with
the recipe variables filled in as the nucleus would).
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent import __version__
from edge_agent.cli import main
from edge_agent.packaging import DEFAULT_AGENT_COMPONENT, PackagedModel, agent_version_requirement, package_model
from tests import model_factory
from tests.conftest import start_agent
from tests.test_deploy import (
    AGENT_RECIPE,
    REPO,
    agent_recipe,
    dockerfile_stages,
    recipe_validator,
    recipe_values,
    render,
)

RUNTIME_DEPENDENCIES = {"grpcio", "grpcio-health-checking", "protobuf", "numpy", "prometheus-client",
                        "onnxruntime", "onnx", "pillow"}
SOCKET_WAIT_S = 60.0
INSTALL_TIMEOUT_S = 900


@pytest.fixture
def component(tmp_path: Path) -> Path:
    """A model component directory: a segmentation model with its manifest."""
    return model_factory.write_component(tmp_path / "models", "pcb-solder", "segmentation")


def read_recipe(packaged: PackagedModel) -> dict:
    return json.loads(packaged.recipe.read_text())


def install_model_component(packaged: PackagedModel, greengrass: Path, agent_work: Path) -> Path:
    """Does what the nucleus does for a model component: unpacks the archive, runs the install step."""
    recipe = read_recipe(packaged)
    decompressed = greengrass / "packages/artifacts-unarchived" / packaged.name / packaged.version
    with zipfile.ZipFile(packaged.archive) as archive:
        archive.extractall(decompressed / packaged.archive.stem)
    script = render(recipe["Manifests"][0]["Lifecycle"]["Install"]["Script"], {
        "artifacts:decompressedPath": str(decompressed),
        f"{DEFAULT_AGENT_COMPONENT}:work:path": str(agent_work),
    })
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, text=True, timeout=30)
    return decompressed


# -- package-model ---------------------------------------------------------------------------------


def test_package_model_writes_archive_and_recipe_in_greengrass_layout(component: Path, tmp_path: Path) -> None:
    packaged = package_model(component, tmp_path / "out", version="1.0.0", s3_prefix="s3://my-bucket/models/")
    assert packaged.archive == tmp_path / "out/artifacts/pcb-solder/1.0.0/pcb-solder.zip"
    assert packaged.recipe == tmp_path / "out/recipes/pcb-solder-1.0.0.json"
    with zipfile.ZipFile(packaged.archive) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "model.onnx"]
        assert archive.read("model.onnx") == (component / "model.onnx").read_bytes()
    assert packaged.archive_sha256 == hashlib.sha256(packaged.archive.read_bytes()).hexdigest()

    recipe = read_recipe(packaged)
    recipe_validator().validate(recipe)
    assert (recipe["ComponentName"], recipe["ComponentVersion"]) == ("pcb-solder", "1.0.0")
    assert recipe["ComponentDependencies"] == {
        "edgeagent.EdgeAgent": {"VersionRequirement": f">={__version__} <1.0.0", "DependencyType": "SOFT"}}
    [artifact] = recipe["Manifests"][0]["Artifacts"]
    assert artifact == {"URI": "s3://my-bucket/models/pcb-solder/1.0.0/pcb-solder.zip", "Unarchive": "ZIP",
                        "Permission": {"Read": "ALL", "Execute": "NONE"}}


def test_package_model_archive_is_reproducible_and_leaves_hidden_files_out(component: Path, tmp_path: Path) -> None:
    (component / ".DS_Store").write_bytes(b"junk")
    (component / "weights").mkdir()
    (component / "weights/model.onnx.data").write_bytes(b"\0" * 1000)
    first = package_model(component, tmp_path / "a", version="1.0.0")
    os.utime(component / "model.onnx", (1_000_000_000, 1_000_000_000))
    second = package_model(component, tmp_path / "b", version="1.0.0")
    assert first.files == ("manifest.json", "model.onnx", "weights/model.onnx.data")
    assert first.archive.read_bytes() == second.archive.read_bytes()


def test_package_model_takes_name_from_option_or_directory(component: Path, tmp_path: Path) -> None:
    assert package_model(component, tmp_path / "a", version="2.0.0").name == "pcb-solder"
    renamed = package_model(component, tmp_path / "b", version="2.0.0", name="line2.pcb-solder",
                            agent_component="aws.iot.lookoutvision.EdgeAgent", agent_requirement="^1.0.0")
    recipe = read_recipe(renamed)
    assert recipe["ComponentName"] == "line2.pcb-solder"
    assert recipe["ComponentDependencies"]["aws.iot.lookoutvision.EdgeAgent"]["VersionRequirement"] == "^1.0.0"
    assert "{aws.iot.lookoutvision.EdgeAgent:work:path}/models" in recipe["Manifests"][0]["Lifecycle"]["Install"][
        "Script"]


@pytest.mark.parametrize("kwargs,message", [
    ({"version": "1.0"}, "not a semantic version"),
    ({"version": "1.0.0", "name": "../evil"}, "--name"),
    ({"version": "1.0.0", "s3_prefix": "https://bucket/x"}, "not an S3 URI"),
])
def test_package_model_refuses_bad_argument(component: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        package_model(component, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_package_model_refuses_directory_that_is_not_a_model_component(component: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no manifest"):
        package_model(tmp_path, tmp_path / "out", version="1.0.0")
    (component / "model.onnx").unlink()
    with pytest.raises(ValueError, match="model file not found"):
        package_model(component, tmp_path / "out", version="1.0.0")


def test_agent_version_requirement_allows_versions_up_to_next_major() -> None:
    assert agent_version_requirement("0.1.0") == ">=0.1.0 <1.0.0"
    assert agent_version_requirement("2.3.1") == ">=2.3.1 <3.0.0"


def test_cli_package_model_prints_where_it_wrote_and_what_to_run(
    component: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["package-model", str(component), "--name", "pcb-solder", "--version", "1.2.3", "--out",
                 str(tmp_path / "gg"), "--s3-prefix", "s3://my-bucket"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"archive: {tmp_path}/gg/artifacts/pcb-solder/1.2.3/pcb-solder.zip (2 files" in out
    assert "upload the archive to s3://my-bucket/pcb-solder/1.2.3/pcb-solder.zip" in out
    assert f"--recipeDir {tmp_path}/gg/recipes --artifactDir {tmp_path}/gg/artifacts --merge pcb-solder=1.2.3" in out

    code = main(["package-model", str(component), "--version", "1.2.3", "--out", str(tmp_path / "j"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["files"] == ["manifest.json", "model.onnx"]


def test_cli_package_model_exits_one_with_message_when_version_is_bad(
    component: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["package-model", str(component), "--version", "v1", "--out", str(tmp_path / "gg")]) == 1
    assert "error: --version 'v1' is not a semantic version" in capsys.readouterr().err


def test_agent_discovers_model_component_where_greengrass_unpacks_it(
    component: Path, tmp_path: Path, short_tmp: Path
) -> None:
    greengrass = tmp_path / "greengrass"
    agent_work = greengrass / "work/edgeagent.EdgeAgent"
    agent_work.mkdir(parents=True)
    first = install_model_component(package_model(component, tmp_path / "v1", version="1.0.0"), greengrass,
                                    agent_work)
    link = agent_work / "models/pcb-solder"
    assert link.is_symlink() and link.resolve() == (first / "pcb-solder").resolve()

    running = start_agent([agent_work / "models"], short_tmp)
    try:
        listed = running.stub.ListModels(pb2.ListModelsRequest()).models
        assert [(m.model_component, m.status) for m in listed] == [("pcb-solder", pb2.STOPPED)]
        assert running.start_and_wait("pcb-solder").status == pb2.RUNNING
        frame = model_factory.with_patch(model_factory.grey_frame(128, 128), 40, 40, 30, 30, (255, 0, 0))
        result = running.stub.DetectAnomalies(pb2.DetectAnomaliesRequest(
            model_component="pcb-solder", bitmap=pb2.Bitmap(width=128, height=128, byte_data=frame.tobytes())))
        assert result.detect_anomaly_result.is_anomalous
        running.stub.StopModel(pb2.StopModelRequest(model_component="pcb-solder"))

        # Version 1.1.0 replaces the link; the agent reads the new manifest.
        manifest = json.loads((component / "manifest.json").read_text())
        manifest["lookout_vision_model_arn"] = "arn:aws:lookoutvision:eu-west-1:123456789012:model/pcb/2"
        (component / "manifest.json").write_text(json.dumps(manifest))
        second = install_model_component(package_model(component, tmp_path / "v2", version="1.1.0"), greengrass,
                                         agent_work)
        assert link.resolve() == (second / "pcb-solder").resolve()
        [model] = running.stub.ListModels(pb2.ListModelsRequest()).models
        assert model.lookout_vision_model_arn.endswith("model/pcb/2")

        # Removing the component from the deployment deletes its artifacts: the model goes away.
        shutil.rmtree(second)
        assert list(running.stub.ListModels(pb2.ListModelsRequest()).models) == []
    finally:
        running.channel.close()
        running.agent.stop(grace_s=1.0)


# -- the wheel and a user's install -----------------------------------------------------------------


def build_context(destination: Path) -> Path:
    """The files docker/Dockerfile.cpu's builder stage copies into /src, laid out as it lays them."""
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for instruction in dockerfile_stages(REPO / "docker/Dockerfile.cpu")[-2]:
        if instruction.keyword != "COPY":
            continue
        *sources, target = instruction.value.split()
        for source in sources:
            origin = REPO / source.rstrip("/")
            into = destination / target
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=ignored, dirs_exist_ok=True)
            else:
                into = into / origin.name if target.endswith("/") else into
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)
    return destination


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the test virtualenv (pip's cache and index settings kept)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    test_bin = str(Path(sys.executable).parent)
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if p and p != test_bin)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from the image's build context (so from no file the image lacks)."""
    source = build_context(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--wheel-dir",
                    str(out), str(source)], check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                   env=clean_env())
    [wheel] = out.glob("edge_agent-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_holds_stubs_proto_dashboard_every_module_and_only_runtime_dependencies(built_wheel: Path) -> None:
    assert built_wheel.name == f"edge_agent-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(built_wheel) as wheel:
        names = set(wheel.namelist())
        proto = wheel.read(f"edge_agent-{__version__}.data/data/share/edge-agent/proto/edge-agent.proto")
        metadata = email.parser.Parser().parsestr(wheel.read(f"edge_agent-{__version__}.dist-info/METADATA").decode())
        entry_points = wheel.read(f"edge_agent-{__version__}.dist-info/entry_points.txt").decode()
    assert {"edge_agent_pb2.py", "edge_agent_pb2_grpc.py", "edge_agent/dashboards/edge-agent.json",
            "edge_agent/py.typed"} <= names
    assert proto == (REPO / "proto/edge-agent.proto").read_bytes()
    source_modules = {f"edge_agent/{p.relative_to(REPO / 'edge_agent').as_posix()}"
                      for p in (REPO / "edge_agent").rglob("*.py")}
    source_modules |= {f"edge_agent/engines/{p.relative_to(REPO / 'engines').as_posix()}"
                       for p in (REPO / "engines").rglob("*.py")}
    assert source_modules - names == set(), "modules missing from the wheel (add their packages to pyproject.toml)"
    assert not any(n.startswith("tests/") for n in names)

    requirements = metadata.get_all("Requires-Dist")
    runtime = {re.split(r"[\s<>=!~\[;(]", r, maxsplit=1)[0].lower().replace("_", "-")
               for r in requirements if "extra ==" not in r}
    assert runtime == RUNTIME_DEPENDENCIES
    assert {"gpu", "demo", "dev"} <= set(metadata.get_all("Provides-Extra"))
    assert re.search(r"^edge-agent = edge_agent\.cli:main$", entry_points, re.M)


def wait_for_socket(path: Path, process: subprocess.Popen[str], timeout_s: float = SOCKET_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the agent exited with {process.returncode}: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no socket at {path} after {timeout_s} s")
        time.sleep(0.1)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the source tree, with a models directory."""
    directory = tmp_path / "elsewhere"
    model_factory.write_component(directory / "models", "pcb-solder", "segmentation")
    return directory


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_cpu_image_build_steps_install_a_working_agent_from_the_wheel(
    tmp_path: Path, elsewhere: Path, short_tmp: Path
) -> None:
    # docker/Dockerfile.cpu's builder stage, run here: its COPY lines lay out /src, its RUN line runs as
    # written with /src and /opt/edge-agent/venv moved under tmp_path (and pip's cache allowed).
    src, venv = build_context(tmp_path / "src"), tmp_path / "opt/edge-agent/venv"
    [run] = [i.value for i in dockerfile_stages(REPO / "docker/Dockerfile.cpu")[-2] if i.keyword == "RUN"]
    command = run.replace("/opt/edge-agent/venv", str(venv)).replace(" /src", f" {src}")
    built = subprocess.run(["bash", "-c", command], cwd=src, env=clean_env(PYTHON=sys.executable),
                           capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert built.stdout.strip().endswith(f"edge-agent {__version__}")
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()

    env = clean_env(PATH=f"{venv}/bin:/usr/bin:/bin")

    def installed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
                              check=False)

    assert installed("edge-agent", "--version").stdout.strip() == f"edge-agent {__version__}"
    where = installed("python", "-c",
                      "import edge_agent, edge_agent_pb2, edge_agent_pb2_grpc, importlib.resources as r;"
                      "print(edge_agent.__file__, edge_agent_pb2.__file__, edge_agent_pb2_grpc.__file__);"
                      "print(r.files('edge_agent').joinpath('dashboards/edge-agent.json').is_file())")
    assert where.returncode == 0, where.stderr
    paths, dashboard = where.stdout.split("\n")[:2]
    assert all(p.startswith(str(venv)) for p in paths.split()) and dashboard == "True"
    assert (venv / "share/edge-agent/proto/edge-agent.proto").read_bytes() == (
        REPO / "proto/edge-agent.proto").read_bytes()

    socket_path = short_tmp / "agent.sock"
    agent = subprocess.Popen(["edge-agent", "serve", "--socket", str(socket_path), "--models-dir", "models",
                              "--metrics-port", "0"], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(socket_path, agent)
        # What the image's HEALTHCHECK runs.
        health = installed("edge-agent", "health", "--address", f"unix://{socket_path}")
        assert health.returncode == 0 and health.stdout.strip().endswith("SERVING"), health.stderr
        listed = installed("edge-agent", "list", "--json", "--address", str(socket_path))
        assert [(m["model_component"], m["status"]) for m in json.loads(listed.stdout)] == [("pcb-solder", "STOPPED")]
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            models = pb2_grpc.EdgeAgentStub(channel).ListModels(pb2.ListModelsRequest(), timeout=10).models
            assert [m.model_component for m in models] == ["pcb-solder"]
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert not socket_path.exists()


# -- the Greengrass agent component ---------------------------------------------------------------------


@pytest.fixture
def greengrass_agent(tmp_path: Path, short_tmp: Path, built_wheel: Path) -> Iterator[dict]:
    """The agent recipe's lifecycle, ready to run as the nucleus runs it: scripts, environment, paths."""
    recipe = agent_recipe()
    greengrass = tmp_path / "greengrass"
    work = greengrass / "work/edgeagent.EdgeAgent"
    artifacts = greengrass / f"packages/artifacts/edgeagent.EdgeAgent/{__version__}"
    work.mkdir(parents=True)
    artifacts.mkdir(parents=True)
    shutil.copy2(built_wheel, artifacts)
    values = recipe_values(recipe, **{"work:path": str(work), "artifacts:path": str(artifacts)})
    # A configuration merged at deployment: a short socket path, no metrics port, no GPU extra in CI.
    values.update({"configuration:/SocketPath": str(short_tmp / "agent.sock"), "configuration:/MetricsPort": "0",
                   "configuration:/PipExtras": "", "configuration:/PythonInterpreter": sys.executable})
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    env = clean_env(**{key: render(value, values) for key, value in lifecycle["Setenv"].items()})
    yield {"greengrass": greengrass, "work": work, "socket": short_tmp / "agent.sock", "env": env,
           "scripts": {step: render(lifecycle[step]["Script"], values) for step in ("Install", "Run", "Shutdown")}}


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_greengrass_agent_component_installs_runs_serves_model_components_and_shuts_down(
    greengrass_agent: dict, component: Path, tmp_path: Path
) -> None:
    work, env, scripts = greengrass_agent["work"], greengrass_agent["env"], greengrass_agent["scripts"]

    def step(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", scripts[name]], cwd=work, env=env, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S, check=False)

    installed = step("Install")
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    again = step("Install")  # the nucleus runs Install at every start
    assert again.returncode == 0 and "is already installed" in again.stdout

    # A model component deployed with it, and a link left by a model component since removed.
    install_model_component(package_model(component, tmp_path / "gg", version="1.0.0"), greengrass_agent["greengrass"],
                            work)
    (work / "models/removed-model").symlink_to(greengrass_agent["greengrass"] / "gone")

    socket_path = greengrass_agent["socket"]
    agent = subprocess.Popen(["sh", "-c", scripts["Run"]], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(socket_path, agent)
        assert not (work / "models/removed-model").is_symlink()
        assert (work / "edge-agent.pid").read_text().strip() == str(agent.pid)
        agent_bin = str(work / "venv/bin/edge-agent")
        health = subprocess.run([agent_bin, "health"], env=env, capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stderr
        listed = subprocess.run([agent_bin, "list", "--json", "--address", str(socket_path)], env=env,
                                capture_output=True, text=True, timeout=60)
        assert [m["model_component"] for m in json.loads(listed.stdout)] == ["pcb-solder"]
        assert stat_mode(socket_path) == 0o660

        shutdown = step("Shutdown")
        assert shutdown.returncode == 0, shutdown.stderr
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert not socket_path.exists() and not (work / "edge-agent.pid").exists()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- the README's Greengrass commands -------------------------------------------------------------------


def test_readme_package_model_command_writes_what_the_next_commands_upload(tmp_path: Path) -> None:
    from tests.test_deploy import readme_commands

    commands = readme_commands()
    [package] = [c for c in commands if c.startswith("edge-agent package-model")]
    args = shlex.split(package)
    model_factory.write_component(tmp_path / Path(args[2]).parent, Path(args[2]).name, "segmentation")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(args[1:]) == 0
    finally:
        os.chdir(cwd)
    model_recipe = json.loads(next((tmp_path / "gg/recipes").glob("*.json")).read_text())
    for command in commands:
        words = shlex.split(command)
        if words[:3] == ["aws", "s3", "cp"]:
            if words[3].startswith("dist/"):  # the wheel, where the agent recipe's artifact points
                assert words[3] == f"dist/edge_agent-{__version__}-py3-none-any.whl"
                uri = agent_recipe()["Manifests"][0]["Artifacts"][0]["URI"]
            else:
                assert (tmp_path / words[3]).is_file(), command
                uri = model_recipe["Manifests"][0]["Artifacts"][0]["URI"]
            assert uri == words[4] + Path(words[3]).name
        if "greengrass-cli" in command:
            option = {words[i]: words[i + 1] for i in range(2, len(words) - 1) if words[i].startswith("--")}
            assert (tmp_path / option["--recipeDir"] / "pcb-solder-1.0.0.json").is_file()
            assert (tmp_path / option["--artifactDir"] / "pcb-solder/1.0.0/pcb-solder.zip").is_file()
            assert option["--merge"] == f"{model_recipe['ComponentName']}={model_recipe['ComponentVersion']}"
        if words[:3] == ["python", "-m", "pip"]:
            assert words[3:] == ["wheel", "--no-deps", "-w", "dist", "."]
        if words[:2] == ["aws", "greengrassv2"] and "--inline-recipe" in words:
            recipe_file = words[words.index("--inline-recipe") + 1].removeprefix("fileb://")
            path = tmp_path / recipe_file if recipe_file.startswith("gg/") else REPO / recipe_file
            data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
            recipe_validator().validate(data)


def test_deployment_document_names_this_agent_version_and_known_configuration() -> None:
    deployment = json.loads((REPO / "deploy/greengrass/deployment.json").read_text())
    assert set(deployment) <= {"targetArn", "deploymentName", "components", "deploymentPolicies",
                               "iotJobConfiguration", "tags"}
    assert re.match(r"^arn:aws:iot:[a-z0-9-]+:\d{12}:(thing|thinggroup)/.+$", deployment["targetArn"])
    agent = deployment["components"]["edgeagent.EdgeAgent"]
    assert agent["componentVersion"] == __version__ == yaml.safe_load(AGENT_RECIPE.read_text())["ComponentVersion"]
    merged = json.loads(agent["configurationUpdate"]["merge"])
    assert set(merged) <= set(agent_recipe()["ComponentConfiguration"]["DefaultConfiguration"])
