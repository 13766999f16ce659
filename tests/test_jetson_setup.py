"""jetson-setup.sh: shellcheck, and runs against fake root filesystems (JetPack 5, JetPack 6, not a Jetson).

Every system command the script runs (dpkg-query, python3, useradd and friends, systemctl, the
virtualenv's pip and edge-agent) is a stub first on PATH: it logs its arguments and does to the fake
root what the real command would (a user appears in etc/passwd, ``systemctl enable`` makes the
wants/ link), so a second run can see what the first did. The account and systemctl stubs refuse to run
without ``--root``: nothing here touches the machine's own /etc.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy import REPO, tool

SCRIPT = REPO / "jetson-setup.sh"
UNIT_LINK = "etc/systemd/system/multi-user.target.wants/edge-agent.service"
MUTATING = {"groupadd", "useradd", "usermod", "userdel", "groupdel"}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the real-mode runs chown to the fake root's user")

STUB = r'''
import json, os, re, sys
from pathlib import Path

here = Path(sys.argv[0])
name, args = here.name, sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([name, *args]) + "\n")


def fail(message, code=99):
    print(f"stub {name}: {message}", file=sys.stderr)
    sys.exit(code)


def take(flag):
    """Removes '--flag VALUE' or '--flag=VALUE' from args; returns VALUE or None."""
    for i, arg in enumerate(args):
        if arg == flag:
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if arg.startswith(flag + "="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def root_or_fail():
    root = take("--root")
    if not root:
        fail("refusing to change the real system: no --root")
    return Path(root)


def edit(path, change):
    lines = [line for line in path.read_text().splitlines() if line]
    path.write_text("".join(line + "\n" for line in change(lines)))


def add_member(lines, group, user):
    out = []
    for line in lines:
        fields = line.split(":")
        if fields[0] == group:
            members = [m for m in fields[3].split(",") if m]
            fields[3] = ",".join(members + [user])
        out.append(":".join(fields))
    return out


def gid_of(root, group):
    for line in (root / "etc/group").read_text().splitlines():
        if line.split(":")[0] == group:
            return line.split(":")[2]
    fail(f"no group {group}", 6)


def accounts():
    root = root_or_fail()
    passwd, group = root / "etc/passwd", root / "etc/group"
    if name == "groupadd":
        user = [a for a in args if not a.startswith("--")][-1]
        edit(group, lambda lines: lines + [f"{user}:x:998:"])
    elif name == "useradd":
        gid = take("--gid")
        groups = (take("--groups") or "").split(",")
        home = take("--home-dir")
        shell = take("--shell")
        user = [a for a in args if not a.startswith("--")][-1]
        edit(passwd, lambda lines: lines + [f"{user}:x:999:{gid_of(root, gid)}::{home}:{shell}"])
        for g in filter(None, groups):
            edit(group, lambda lines, g=g: add_member(lines, g, user))
    elif name == "usermod":
        g = take("--groups")
        user = args[-1]
        edit(group, lambda lines: add_member(lines, g, user))
    elif name in ("userdel", "groupdel"):
        target = passwd if name == "userdel" else group
        edit(target, lambda lines: [line for line in lines if line.split(":")[0] != args[-1]])


def systemctl():
    root = root_or_fail()
    wants = root / "etc/systemd/system/multi-user.target.wants"
    command, unit = args[0], args[-1]
    link = wants / unit
    if command == "is-enabled":
        sys.exit(0 if link.is_symlink() else 1)
    if command == "enable":
        if not (root / "etc/systemd/system" / unit).is_file():
            fail(f"unit {unit} does not exist", 1)
        wants.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"/etc/systemd/system/{unit}")
    elif command == "disable":
        link.unlink(missing_ok=True)
    else:
        fail(f"unexpected systemctl {command}")


def dpkg_query():
    admindir = Path(take("--admindir"))
    fmt = take("-f").replace("\\n", "\n")
    package = args[-1]
    stanzas = (admindir / "status").read_text().split("\n\n") if (admindir / "status").exists() else []
    for stanza in stanzas:
        fields = dict(line.split(": ", 1) for line in stanza.strip().splitlines() if ": " in line)
        if fields.get("Package") == package:
            print(fmt.replace("${Status}", fields["Status"]).replace("${Version}", fields["Version"]), end="")
            return
    print(f"dpkg-query: no packages found matching {package}", file=sys.stderr)
    sys.exit(1)


def python_version():
    if (here.parent.parent / "pyvenv.cfg").exists():
        cfg = (here.parent.parent / "pyvenv.cfg").read_text()
        return re.search(r"^version = (\d+\.\d+)", cfg, re.M).group(1)
    if re.fullmatch(r"python\d+\.\d+", name):
        return name[len("python"):]
    return os.environ.get("FAKE_PYTHON3_VERSION", "3.10")


def python():
    version = python_version()
    venv = here.parent.parent
    if args[:2] == ["-m", "venv"]:
        target = Path(args[-1])
        (target / "bin").mkdir(parents=True)
        (target / "pyvenv.cfg").write_text(
            f"home = /usr/bin\ninclude-system-site-packages = {'true' if '--system-site-packages' in args else 'false'}"
            f"\nversion = {version}.12\n")
        (target / "bin/python").symlink_to(os.environ["STUB_FILE"])
        return
    if args[:3] == ["-m", "pip", "install"]:
        if not (venv / "pyvenv.cfg").exists():
            fail("pip install outside a virtualenv")
        agent = venv / "bin/edge-agent"
        if not agent.exists():
            agent.symlink_to(os.environ["STUB_FILE"])
        return
    if args[0] != "-c":
        fail(f"unexpected python arguments {args}")
    code = args[1]
    major_minor = tuple(int(p) for p in version.split("."))
    if "sys.version_info[:2]" in code:
        print(version)
    elif "sys.version_info < (3, 10)" in code:
        sys.exit(1 if major_minor < (3, 10) else 0)
    elif "import ensurepip, venv" in code:
        pass
    elif "import tensorrt" in code:
        if os.environ.get("FAKE_TENSORRT") == "missing":
            fail("ModuleNotFoundError: No module named 'tensorrt'", 1)
        print(os.environ.get("FAKE_TENSORRT", "10.3.0"))
    elif "Python.h" in code:
        sys.exit(0 if os.environ.get("FAKE_PYTHON_HEADERS", "yes") == "yes" else 1)
    else:
        fail(f"unexpected python code {code!r}")


def agent():
    mode = os.environ.get("FAKE_BUILD_ENGINES", "present")
    if args == ["--version"]:
        print("edge-agent 0.1.0")
    elif args[:1] == ["build-engines"]:
        if mode == "absent":
            print("edge-agent: error: argument COMMAND: invalid choice: 'build-engines'", file=sys.stderr)
            sys.exit(2)
        if args[1:] == ["--help"]:
            print("usage: edge-agent build-engines [--models-dir DIR] [--cache-dir DIR]")
        elif mode == "fail":
            fail("engine build failed", 1)
    else:
        fail(f"unexpected edge-agent arguments {args}")


if name == "dpkg-query":
    dpkg_query()
elif name in ("groupadd", "useradd", "usermod", "userdel", "groupdel"):
    accounts()
elif name == "systemctl":
    systemctl()
elif name == "edge-agent":
    agent()
elif name.startswith("python"):
    python()
else:
    fail(f"unexpected command {name}")
'''

JETPACK_6 = {
    "model": "NVIDIA Jetson AGX Orin Developer Kit",
    "release": "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
               "DATE: Fri Sep 13 04:36:44 UTC 2024",
    "packages": {"nvidia-l4t-core": "36.4.0-20240912212859", "nvidia-jetpack": "6.1+b123",
                 "python3-libnvinfer": "10.3.0.30-1+cuda12.5"},
    "cudart": "usr/local/cuda/targets/aarch64-linux/lib/libcudart.so.12.6.68",
    "libcuda": "usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1.1",
}
JETPACK_5 = {
    "model": "NVIDIA Jetson Xavier NX Developer Kit",
    "release": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
               "DATE: Tue Aug  1 19:57:35 UTC 2023",
    "packages": {"nvidia-l4t-core": "35.4.1-20230801124926", "nvidia-jetpack": "5.1.2-b104",
                 "python3-libnvinfer": "8.5.2-1+cuda11.4"},
    "cudart": "usr/local/cuda/lib64/libcudart.so.11.0",
    "libcuda": "usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1",
    "nvcc": "usr/local/cuda/bin/nvcc",
}


def make_root(base: Path, spec: dict[str, Any] | None, *, model: str | None = None) -> Path:
    """A fake root filesystem: device-tree model, L4T release, dpkg status, CUDA libraries, accounts."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\nrender:x:110:\n")
    board = model or (spec or {}).get("model")
    if board:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(board.encode() + b"\0")
    if spec is None:
        return root
    (root / "etc/nv_tegra_release").write_text(spec["release"] + "\n")
    status = "\n".join(f"Package: {name}\nStatus: install ok installed\nVersion: {version}\n"
                       for name, version in spec["packages"].items())
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(status)
    for key in ("cudart", "libcuda", "nvcc"):
        if spec.get(key):
            path = root / spec[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x7fELF")
            path.chmod(0o755)
    if "targets" in spec["cudart"]:  # JetPack 6 lays CUDA out under targets/, with lib64 a link to it
        (root / "usr/local/cuda/lib64").symlink_to("targets/aarch64-linux/lib")
    return root


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A directory of stub commands, first on PATH for the script."""
    directory = tmp_path / "bin"
    directory.mkdir()
    stub = directory / "stub.py"
    stub.write_text(f"#!{sys.executable} -IS\n{STUB}")  # -IS: no site packages, a faster start
    stub.chmod(0o755)
    for name in ("dpkg-query", "useradd", "groupadd", "usermod", "userdel", "groupdel", "systemctl", "runuser",
                 "python3", "python3.8", "python3.10"):
        (directory / name).symlink_to(stub)
    return directory


class Setup:
    """Runs jetson-setup.sh against one fake root, with the stubs; keeps what each run logged."""

    def __init__(self, root: Path, stubs: Path) -> None:
        self.root = root
        self.stubs = stubs
        self.log = stubs.parent / "calls.jsonl"

    def run(self, *args: str, **fake: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        env = {"PATH": f"{self.stubs}:{os.environ['PATH']}", "STUB_LOG": str(self.log),
               "STUB_FILE": str(self.stubs / "stub.py"), "HOME": str(self.stubs.parent), "LC_ALL": "C.UTF-8",
               **{f"FAKE_{k.upper()}": v for k, v in fake.items()}}
        return subprocess.run(["bash", str(SCRIPT), "--root", str(self.root), *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def changing_calls(self) -> list[list[str]]:
        """Calls that change something (read-only probes left out)."""
        changing = []
        for call in self.calls():
            name, args = call[0], call[1:]
            if name in MUTATING or (name == "systemctl" and not any(a.startswith("is-") for a in args)):
                changing.append(call)
            elif name.startswith("python") and args[:2] in (["-m", "venv"], ["-m", "pip"]):
                changing.append(call)
            elif name == "edge-agent" and args[:1] == ["build-engines"] and "--help" not in args:
                changing.append(call)
        return changing


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under the root with its type, mode, owner, mtime and content."""
    seen: dict[str, tuple[Any, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = Path(directory, entry)
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                seen[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                seen[key] = ("dir", info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns)
            else:
                seen[key] = ("file", info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns, path.read_bytes())
    return seen


def passwd_entry(root: Path, user: str) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")
    return None


def group_members(root: Path, group: str) -> list[str]:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return []


def add_model(root: Path, name: str) -> Path:
    directory = root / "var/lib/edge-agent/models" / name
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text("{}")
    return directory


# -- lint ------------------------------------------------------------------------------------------


def test_shellcheck_passes_on_the_setup_script() -> None:
    result = subprocess.run([tool("shellcheck"), "--shell=bash", "--severity=style", str(SCRIPT)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_is_executable_and_starts_with_strict_mode() -> None:
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text


# -- refusals --------------------------------------------------------------------------------------


def test_setup_refuses_when_machine_is_not_a_jetson(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, None, model="Raspberry Pi 4 Model B Rev 1.4")
    result = Setup(root, stubs).run()
    assert result.returncode == 3
    assert "not an NVIDIA Jetson" in result.stderr and "Raspberry Pi 4 Model B" in result.stderr
    assert "pip install 'edge-agent[gpu]'" in result.stderr and "docker/Dockerfile.cpu" in result.stderr
    assert Setup(root, stubs).changing_calls() == []


def test_setup_refuses_when_jetson_runs_jetpack_4(tmp_path: Path, stubs: Path) -> None:
    spec = dict(JETPACK_6, release="# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64")
    spec["packages"] = {}
    result = Setup(make_root(tmp_path, spec), stubs).run("--dry-run")
    assert result.returncode == 3 and "JetPack 4" in result.stderr and "Flash JetPack 6" in result.stderr


def test_setup_refuses_when_jetpack_5_python_is_older_than_3_10(tmp_path: Path, stubs: Path) -> None:
    result = Setup(make_root(tmp_path, JETPACK_5), stubs).run("--dry-run", python3_version="3.8")
    assert result.returncode == 3
    assert "JetPack 5 comes with Python 3.8" in result.stderr and "Python 3.10" in result.stderr
    assert "--python" in result.stderr


def test_setup_names_python3_libnvinfer_when_tensorrt_bindings_are_missing(tmp_path: Path, stubs: Path) -> None:
    spec = dict(JETPACK_6, packages={k: v for k, v in JETPACK_6["packages"].items() if k != "python3-libnvinfer"})
    result = Setup(make_root(tmp_path, spec), stubs).run("--dry-run", tensorrt="missing")
    assert result.returncode == 4
    assert "install python3-libnvinfer" in result.stderr


def test_setup_says_bindings_belong_to_another_python_when_package_is_installed(tmp_path: Path, stubs: Path) -> None:
    result = Setup(make_root(tmp_path, JETPACK_6), stubs).run("--dry-run", tensorrt="missing")
    assert result.returncode == 4
    assert "python3-libnvinfer 10.3.0.30-1+cuda12.5 is installed" in result.stderr and "another Python" in result.stderr


def test_setup_names_nvidia_cuda_when_cuda_runtime_is_missing(tmp_path: Path, stubs: Path) -> None:
    result = Setup(make_root(tmp_path, dict(JETPACK_6, cudart="")), stubs).run("--dry-run")
    assert result.returncode == 4 and "install nvidia-cuda" in result.stderr


def test_setup_names_nvidia_l4t_cuda_when_cuda_driver_is_missing(tmp_path: Path, stubs: Path) -> None:
    result = Setup(make_root(tmp_path, dict(JETPACK_6, libcuda="")), stubs).run("--dry-run")
    assert result.returncode == 4 and "install nvidia-l4t-cuda" in result.stderr


def test_setup_names_nvidia_cuda_dev_when_jetpack_5_lacks_nvcc_for_pycuda(tmp_path: Path, stubs: Path) -> None:
    result = Setup(make_root(tmp_path, dict(JETPACK_5, nvcc="")), stubs).run("--dry-run", "--python", "python3.10")
    assert result.returncode == 4 and "install nvidia-cuda-dev" in result.stderr


def test_setup_rejects_purge_without_uninstall(tmp_path: Path, stubs: Path) -> None:
    result = Setup(make_root(tmp_path, JETPACK_6), stubs).run("--purge")
    assert result.returncode == 2 and "--purge goes with --uninstall" in result.stderr


# -- dry run ---------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing_on_jetpack_6(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_6)
    before = snapshot(root)
    setup = Setup(root, stubs)
    result = setup.run("--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\\", "")
    assert "Jetson: NVIDIA Jetson AGX Orin Developer Kit, JetPack 6.1, L4T 36.4.0" in out
    assert "TensorRT: 10.3.0" in out and "CUDA: 12" in out
    assert f"would run: groupadd --root {root} --system edge-agent" in out
    assert "would run: useradd" in out and "--groups video,render" in out
    assert f"would run: python3 -m venv --system-site-packages {root}/opt/edge-agent/venv" in out
    assert f"-m pip install --disable-pip-version-check --no-input {REPO}[gpu]" in out
    assert "would write: /etc/systemd/system/edge-agent.service" in out
    assert "would write: /etc/default/edge-agent" in out
    assert "would run: systemctl --root=" in out and "enable edge-agent.service" in out
    assert snapshot(root) == before
    assert setup.changing_calls() == []


def test_dry_run_plans_pycuda_instead_of_gpu_extra_on_jetpack_5_cuda_11(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_5)
    result = Setup(root, stubs).run("--dry-run", "--python", "python3.10")
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\\", "")
    assert "JetPack 5.1.2, L4T 35.4.1" in out and "CUDA: 11" in out
    assert f"would run: python3.10 -m venv --system-site-packages {root}/opt/edge-agent/venv" in out
    assert f"--no-input {REPO} pycuda" in out and "[gpu]" not in out


def test_dry_run_derives_jetpack_from_l4t_when_nvidia_jetpack_is_not_installed(tmp_path: Path, stubs: Path) -> None:
    spec = dict(JETPACK_6, packages={"python3-libnvinfer": "10.3.0.30-1+cuda12.5"})
    result = Setup(make_root(tmp_path, spec), stubs).run("--dry-run")
    assert result.returncode == 0, result.stderr
    assert "JetPack 6.1 (nvidia-jetpack is not installed), L4T 36.4.0" in result.stdout


# -- install, reinstall, uninstall -----------------------------------------------------------------


@needs_root
def test_install_sets_up_service_user_directories_venv_and_unit_on_jetpack_6(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_6)
    add_model(root, "pcb-solder")
    setup = Setup(root, stubs)
    result = setup.run()
    assert result.returncode == 0, result.stdout + result.stderr

    user = passwd_entry(root, "edge-agent")
    assert user is not None and user[5:] == ["/var/lib/edge-agent", "/usr/sbin/nologin"]
    uid, gid = int(user[2]), int(user[3])
    assert "edge-agent" in group_members(root, "video") and "edge-agent" in group_members(root, "render")
    for path, mode in (("var/lib/edge-agent/models", 0o755), ("var/cache/edge-agent/engines", 0o750)):
        info = (root / path).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, mode), path
    assert "include-system-site-packages = true" in (root / "opt/edge-agent/venv/pyvenv.cfg").read_text()

    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    for line in ("User=edge-agent", "Group=edge-agent", "EnvironmentFile=-/etc/default/edge-agent",
                 "ExecStart=/opt/edge-agent/venv/bin/edge-agent serve", "Environment=XDG_CACHE_HOME=/var/cache",
                 "PrivateTmp=false", "WantedBy=multi-user.target"):
        assert line in unit.splitlines()
    settings = (root / "etc/default/edge-agent").read_text().splitlines()
    assert "EDGE_AGENT_SOCKET_GROUP=edge-agent" in settings
    assert "EDGE_AGENT_SOCKET_PATH=/tmp/aws.iot.lookoutvision.EdgeAgent.sock" in settings
    assert "EDGE_AGENT_MODELS_DIRS=/var/lib/edge-agent/models" in settings
    assert os.readlink(root / UNIT_LINK) == "/etc/systemd/system/edge-agent.service"

    calls = setup.calls()
    assert ["edge-agent", "build-engines", "--models-dir", f"{root}/var/lib/edge-agent/models",
            "--cache-dir", f"{root}/var/cache/edge-agent/engines"] in calls
    assert any(c[0] == "python" and f"{REPO}[gpu]" in c for c in calls)
    assert not any(c[0] == "runuser" for c in calls)
    assert "skip: not starting edge-agent.service: --root is not /" in result.stdout


@needs_root
def test_second_install_changes_nothing_and_says_what_it_skips(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_6)
    add_model(root, "pcb-solder")
    setup = Setup(root, stubs)
    assert setup.run().returncode == 0
    before = snapshot(root)

    result = setup.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(root) == before
    # Building engines again is the only action: engines already in the cache are reused.
    assert [c[:2] for c in setup.changing_calls()] == [["edge-agent", "build-engines"]]
    for skipped in ("skip: group edge-agent exists", "skip: user edge-agent exists",
                    "skip: user edge-agent is in group video", "skip: /var/lib/edge-agent/models exists",
                    "skip: virtualenv /opt/edge-agent/venv exists", "skip: edge-agent 0.1.0 is installed",
                    "skip: /etc/default/edge-agent is up to date",
                    "skip: /etc/systemd/system/edge-agent.service is up to date",
                    "skip: edge-agent.service is enabled"):
        assert skipped in result.stdout


@needs_root
def test_install_keeps_local_settings_and_skips_engines_without_build_engines(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_6)
    setup = Setup(root, stubs)
    assert setup.run().returncode == 0
    settings = root / "etc/default/edge-agent"
    settings.write_text(settings.read_text() + "EDGE_AGENT_WORKER_THREADS=4\n")
    add_model(root, "pcb-solder")

    result = setup.run(build_engines="absent")
    assert result.returncode == 0, result.stderr
    assert "skip: keeping /etc/default/edge-agent: it differs from the default" in result.stdout
    assert "EDGE_AGENT_WORKER_THREADS=4" in settings.read_text()
    assert "skip: engines: this edge-agent has no build-engines command" in result.stdout


@needs_root
def test_install_warns_and_succeeds_when_engine_build_fails(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_6)
    add_model(root, "pcb-solder")
    result = Setup(root, stubs).run(build_engines="fail")
    assert result.returncode == 0
    assert "warning: building the engines failed" in result.stderr


@needs_root
def test_install_on_jetpack_5_with_python_3_10_adds_pycuda(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_5)
    setup = Setup(root, stubs)
    result = setup.run("--python", "python3.10")
    assert result.returncode == 0, result.stdout + result.stderr
    pip = [c for c in setup.calls() if c[0] == "python" and c[1:4] == ["-m", "pip", "install"]]
    assert pip and pip[0][-2:] == [str(REPO), "pycuda"]
    assert "version = 3.10" in (root / "opt/edge-agent/venv/pyvenv.cfg").read_text()
    assert "skip: engines: no models in /var/lib/edge-agent/models yet" in result.stdout


@needs_root
def test_uninstall_removes_service_and_venv_keeps_models_then_purge_removes_all(tmp_path: Path, stubs: Path) -> None:
    root = make_root(tmp_path, JETPACK_6)
    setup = Setup(root, stubs)
    assert setup.run().returncode == 0
    model = add_model(root, "pcb-solder")

    dry = setup.run("--uninstall", "--dry-run")
    assert dry.returncode == 0 and (root / "opt/edge-agent").exists() and setup.changing_calls() == []

    result = setup.run("--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / UNIT_LINK).is_symlink()
    assert not (root / "opt/edge-agent").exists() and not (root / "etc/default/edge-agent").exists()
    assert model.is_dir() and passwd_entry(root, "edge-agent") is not None
    assert "--purge removes them" in result.stdout

    again = setup.run("--uninstall")
    assert again.returncode == 0 and "skip: edge-agent.service is not installed" in again.stdout
    assert setup.changing_calls() == []

    purged = setup.run("--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "var/lib/edge-agent").exists() and not (root / "var/cache/edge-agent").exists()
    assert passwd_entry(root, "edge-agent") is None and "edge-agent:" not in (root / "etc/group").read_text()


@needs_root
def test_readme_commands_run_in_order_against_a_jetpack_6_root(tmp_path: Path, stubs: Path) -> None:
    from tests.test_deploy import readme_commands

    setup = Setup(make_root(tmp_path, JETPACK_6), stubs)
    commands = [shlex.split(c) for c in readme_commands() if c.startswith("sudo ./jetson-setup.sh")]
    assert [c[2:] for c in commands] == [["--dry-run"], [], ["--uninstall"]]
    for command in commands:
        result = setup.run(*command[2:])
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
