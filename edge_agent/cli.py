"""The ``edge-agent`` command: run the agent, prepare models, and talk to a running agent."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from edge_agent._version import __version__
from edge_agent.config import IMAGE_THREADS_HINT, MAX_IMAGE_THREADS, AgentConfig, default_demo_models_dir
from edge_agent.constants import DEFAULT_SOCKET_PATH
from edge_agent.errors import EdgeAgentError

LOGGER = logging.getLogger("edge_agent")




# -- serve and model preparation ----------------------------------------------------------------


def serve_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> AgentConfig:
    """``serve``'s configuration: the environment's, then what the command line says over it."""
    config = AgentConfig.from_env(environ)
    if args.socket:
        config.socket_path = args.socket
    if args.tcp:
        config.tcp_address = args.tcp
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        if getattr(args, name):
            setattr(config, name, getattr(args, name))
    if args.socket_group:
        config.socket_group = args.socket_group
    if args.models_dir:
        config.models_dirs = [Path(p) for p in args.models_dir]
    if args.backend:
        config.backend = args.backend
    if args.workers:
        config.worker_threads = args.workers
    if args.max_concurrent_rpcs:
        config.max_concurrent_rpcs = args.max_concurrent_rpcs
    if args.max_requests_per_model:
        config.max_requests_per_model = args.max_requests_per_model
    if args.ort_spinning is not None:
        config.ort_spinning = args.ort_spinning
    if args.image_threads is not None:
        if not 0 <= args.image_threads <= MAX_IMAGE_THREADS:
            raise ValueError(f"--image-threads is {args.image_threads}; {IMAGE_THREADS_HINT}")
        config.image_threads = args.image_threads
    if args.metrics_port is not None:
        config.metrics_port = args.metrics_port
    if args.metrics_address:
        config.metrics_address = args.metrics_address
    if args.cache_dir:
        config.cache_dir = Path(args.cache_dir)
    if args.fake_gpu_memory:
        config.fake_gpu_memory = args.fake_gpu_memory
    if args.prebuild is not None:
        config.prebuild = "on" if args.prebuild else "off"
    if args.memory_headroom:
        from edge_agent.engines.tensorrt import parse_bytes

        config.memory_headroom_bytes = parse_bytes(args.memory_headroom)
    return config


def _cmd_serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from edge_agent.backends import Prebuilder
    from edge_agent.bands import BANDS
    from edge_agent.metrics import AgentMetrics
    from edge_agent.models import ModelManager
    from edge_agent.server import run

    config = serve_config(args)
    BANDS.configure(config.image_threads)
    if bool(config.tls_cert) != bool(config.tls_key):
        LOGGER.error("--tls-cert and --tls-key go together")
        return 2
    if not config.models_dirs:
        demo_dir = default_demo_models_dir()
        config.models_dirs = [demo_dir]
        _prepare_default_demo_models(demo_dir)

    try:
        provider = _provider(config)
    except EdgeAgentError as exc:
        LOGGER.error("cannot start: %s", exc)
        return 2
    manager = ModelManager(config.models_dirs, provider, loader_threads=config.loader_threads,
                           memory_headroom_bytes=config.memory_headroom_bytes,
                           max_requests_per_model=config.max_requests_per_model)
    if config.prebuild == "on" or (config.prebuild == "auto" and provider.kind == "tensorrt"
                                   and config.fake_gpu_memory is None):
        Prebuilder(manager, provider).attach()
    # ONNX Runtime's first session in a process is slow: make it now, and let it finish before the
    # process exits (a native thread still running at interpreter exit aborts the process).
    warming = provider.prepare_runtime() if hasattr(provider, "prepare_runtime") else None
    versions = provider.versions() if hasattr(provider, "versions") else {}
    metrics = AgentMetrics(CollectorRegistry(), manager, provider, versions) if config.metrics_port else None
    try:
        return run(config, manager, metrics=metrics)
    except OSError as exc:
        manager.close()
        LOGGER.error("cannot start: %s", exc)
        return 2
    finally:
        if warming is not None:
            warming.join()
        if hasattr(provider, "close"):
            provider.close()


def _provider(config: AgentConfig):  # type: ignore[no-untyped-def]
    from edge_agent.backends import select_provider
    from edge_agent.engines.tensorrt import parse_bytes

    fake = parse_bytes(config.fake_gpu_memory) if config.fake_gpu_memory else None
    return select_provider(config.backend, intra_op_threads=config.intra_op_threads,
                           ort_spinning=config.ort_spinning, cache_dir=config.cache_dir, fake_gpu_memory=fake)


def _cmd_build_engines(args: argparse.Namespace) -> int:
    from edge_agent.engines.tensorrt import build_engines

    config = AgentConfig.from_env()
    if args.models_dir:
        config.models_dirs = [Path(p) for p in args.models_dir]
    if args.cache_dir:
        config.cache_dir = Path(args.cache_dir)
    if args.fake_gpu_memory:
        config.fake_gpu_memory = args.fake_gpu_memory
    if not config.models_dirs:
        print("error: name the models directories with --models-dir (or EDGE_AGENT_MODELS_DIRS)", file=sys.stderr)
        return 2
    config.backend = "tensorrt"
    try:
        provider = _provider(config)
    except EdgeAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    try:
        for component, outcome in build_engines(provider, config.models_dirs):
            if isinstance(outcome, EdgeAgentError):
                failed += 1
                print(f"{component}: FAILED: {outcome}")
            elif outcome.built:
                print(f"{component}: engine built in {outcome.seconds:.1f} s -> {outcome.plan_path}")
            else:
                print(f"{component}: up to date ({outcome.plan_path})")
    finally:
        provider.close()
    return 1 if failed else 0


def _prepare_default_demo_models(demo_dir: Path) -> None:
    from edge_agent import demo

    try:
        demo.build_demo_models(demo_dir)
    except RuntimeError as exc:  # scikit-image (the demo extra) missing
        LOGGER.warning("no --models-dir given and the demo models cannot be built: %s", exc)
    LOGGER.info("no --models-dir given: serving the demo models in %s", demo_dir)


def _cmd_convert_anomalib(args: argparse.Namespace) -> int:
    from edge_agent.anomalib_export import convert_anomalib

    try:
        manifest = convert_anomalib(Path(args.export_dir), Path(args.component_dir),
                                    lookout_vision_model_arn=args.arn or "", description=args.description or "",
                                    color=args.color, overwrite=args.overwrite)
    except EdgeAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{manifest.manifest_path} written ({manifest.origin or 'anomalib export'}); edit it if you like, "
          "then copy the directory into a models directory")
    return 0


def _cmd_demo_models(args: argparse.Namespace) -> int:
    from edge_agent import demo

    paths = demo.build_demo_models(Path(args.directory), force=args.force)
    for path in paths:
        print(path)
    if args.samples:
        for path in demo.write_demo_samples(Path(args.samples)):
            print(path)
    return 0


def _cmd_package_model(args: argparse.Namespace) -> int:
    from edge_agent.packaging import DEFAULT_AGENT_COMPONENT, package_model

    packaged = package_model(Path(args.directory), Path(args.out), version=args.version, name=args.name,
                             s3_prefix=args.s3_prefix, agent_component=args.agent_component or DEFAULT_AGENT_COMPONENT,
                             agent_requirement=args.agent_version_requirement, publisher=args.publisher)
    if args.json:
        print(json.dumps({"name": packaged.name, "version": packaged.version, "archive": str(packaged.archive),
                          "recipe": str(packaged.recipe), "artifact_uri": packaged.artifact_uri,
                          "archive_sha256": packaged.archive_sha256, "files": list(packaged.files)}, indent=2))
        return 0
    print(f"archive: {packaged.archive} ({len(packaged.files)} files, sha256 {packaged.archive_sha256})")
    print(f"recipe:  {packaged.recipe}")
    print(f"cloud:   upload the archive to {packaged.artifact_uri}, then "
          f"aws greengrassv2 create-component-version --inline-recipe fileb://{packaged.recipe}")
    print(f"local:   sudo /greengrass/v2/bin/greengrass-cli deployment create --recipeDir {packaged.recipe.parent} "
          f"--artifactDir {Path(args.out) / 'artifacts'} --merge {packaged.name}={packaged.version}")
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    import os

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # The serve environment (EDGE_AGENT_SOCKET_PATH) names the socket, so a container's HEALTHCHECK needs no flags.
    target = args.address or os.environ.get("EDGE_AGENT_SOCKET_PATH") or DEFAULT_SOCKET_PATH
    if target.startswith("/"):
        target = f"unix://{target}"
    label = f"{target} service {args.service!r}" if args.service else target
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{label}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{label}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


# -- client commands ----------------------------------------------------------------------------


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from edge_agent.client import AgentClient

    address = args.address or os.environ.get("EDGE_AGENT_SOCKET_PATH") or None
    return AgentClient(address, timeout_s=args.timeout)


def _status_name(value: int) -> str:
    from edge_agent.client import STATUS_NAMES

    return STATUS_NAMES.get(value, str(value))


def _cmd_list(args: argparse.Namespace) -> int:
    models = _client(args).list()
    if args.json:
        print(json.dumps([_model_json(m) for m in models], indent=2))
        return 0
    if not models:
        print("no model components deployed")
    for model in models:
        line = f"{model.model_component:40s} {_status_name(model.status):9s}"
        if model.status_message:
            line += f" {model.status_message}"
        print(line)
    return 0


def _model_json(model) -> dict:  # type: ignore[no-untyped-def]
    return {"model_component": model.model_component, "lookout_vision_model_arn": model.lookout_vision_model_arn,
            "status": _status_name(model.status), "status_message": model.status_message}


def _cmd_describe(args: argparse.Namespace) -> int:
    description = _client(args).describe(args.name)
    if args.json:
        print(json.dumps(_model_json(description), indent=2))
    else:
        for key, value in _model_json(description).items():
            print(f"{key}: {value}")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    client = _client(args)
    print(_status_name(client.start(args.name)))
    if not args.wait:
        return 0
    description = client.wait(args.name, timeout_s=args.wait_timeout)
    print(_status_name(description.status), description.status_message)
    return 0 if description.status == 2 else 1


def _cmd_stop(args: argparse.Namespace) -> int:
    print(_status_name(_client(args).stop(args.name)))
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from PIL import Image

    from edge_agent.client import load_rgb

    client = _client(args)
    results = []
    failures = 0
    for index, image_path in enumerate(args.images):
        try:
            image = load_rgb(Path(image_path))
            outcome = client.detect(args.name, image, shared_memory=args.shared_memory)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                raise
            failures += 1
            print(f"{image_path}: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            continue
        except (OSError, ValueError) as exc:  # unreadable or not an image
            failures += 1
            print(f"{image_path}: error: {exc}", file=sys.stderr)
            continue
        result = outcome.result
        entry = {
            "image": str(image_path),
            "is_anomalous": result.is_anomalous,
            "confidence": round(result.confidence, 6),
            "anomalies": [{"name": a.name, "area": round(a.pixel_anomaly.total_percentage_area, 6),
                           "color": a.pixel_anomaly.hex_color} for a in result.anomalies],
            "seconds": round(outcome.seconds, 4),
        }
        if args.mask_out and outcome.mask is not None:
            mask_path = Path(args.mask_out)
            if len(args.images) > 1:
                mask_path = mask_path.with_name(f"{mask_path.stem}-{index}{mask_path.suffix or '.png'}")
            Image.fromarray(outcome.mask).save(mask_path)
            entry["mask"] = str(mask_path)
        elif args.mask_out and index == 0:
            print(f"note: model {args.name} returns no mask (a classification model); nothing written to "
                  f"{args.mask_out}", file=sys.stderr)
        results.append(entry)
        if not args.json:
            verdict = "ANOMALOUS" if result.is_anomalous else "normal"
            print(f"{image_path}: {verdict} (confidence {result.confidence:.3f}, {outcome.seconds * 1000:.1f} ms)")
            for anomaly in entry["anomalies"]:
                print(f"    {anomaly['name']:20s} {anomaly['area'] * 100:7.3f}% {anomaly['color']}")
            if "mask" in entry:
                print(f"    mask written to {entry['mask']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0


# -- argument parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Serve anomaly-detection models over the Lookout for Vision Edge Agent gRPC API.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    # Logging options are accepted before or after the command (serve --log-format json).
    logging_options = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (logging_options, argparse.SUPPRESS)):
        target.add_argument("--log-level", default=default, choices=["debug", "info", "warning", "error"],
                            help="debug adds one line per request (default info)")
        target.add_argument("--log-format", default=default, choices=["text", "json"],
                            help="json: one object per line, for log shippers (default text)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = commands.add_parser

    def add_command(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return add_parser(name, parents=[logging_options], **kwargs)  # type: ignore[arg-type]

    commands.add_parser = add_command  # type: ignore[method-assign]

    serve = commands.add_parser("serve", help="run the agent in the foreground")
    serve.add_argument("--socket", help=f"unix socket path (default {DEFAULT_SOCKET_PATH})")
    serve.add_argument("--socket-group", metavar="GROUP",
                       help="group that owns the socket; its members may connect (mode 0660)")
    serve.add_argument("--tcp", metavar="[HOST:]PORT",
                       help="also listen on TCP (off by default; a bare PORT binds loopback only)")
    serve.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain for the TCP listener")
    serve.add_argument("--tls-key", metavar="PEM", help="TLS private key for the TCP listener")
    serve.add_argument("--tls-client-ca", metavar="PEM",
                       help="require TCP clients to present a certificate signed by this CA")
    serve.add_argument("--models-dir", action="append", metavar="DIR",
                       help="directory of model components (repeatable; default: the demo models)")
    serve.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime"],
                       help="inference engine (default auto: TensorRT when it and a GPU are usable)")
    serve.add_argument("--cache-dir", metavar="DIR", help="TensorRT engine cache (default ~/.cache/edge-agent/engines)")
    serve.add_argument("--fake-gpu-memory", metavar="SIZE",
                       help="run the TensorRT path on a fake GPU of this size (e.g. 512MiB), for trying it without one")
    serve.add_argument("--memory-headroom", metavar="SIZE",
                       help="device memory StartModel keeps free for the rest of the system (e.g. 256MiB)")
    serve.add_argument("--prebuild", action=argparse.BooleanOptionalAction, default=None,
                       help="build missing TensorRT engines in the background as components are discovered "
                            "(default: on with a real GPU)")
    serve.add_argument("--workers", type=int, help="gRPC worker threads (default 16)")
    serve.add_argument("--max-concurrent-rpcs", type=int,
                       help="calls served at once; more get RESOURCE_EXHAUSTED at once (default 64)")
    serve.add_argument("--max-requests-per-model", type=int,
                       help="DetectAnomalies calls in flight per model; more get RESOURCE_EXHAUSTED (default 32)")
    serve.add_argument("--ort-spinning", action=argparse.BooleanOptionalAction, default=None,
                       help="keep ONNX Runtime's threads spin-waiting after each inference, as it does by "
                            "default: a little lower latency on a dedicated machine, for a core kept busy between "
                            "frames (default: off, they stop when an inference returns)")
    serve.add_argument("--image-threads", type=int, default=None, metavar="N",
                       help="threads one call's resize and mask are split across, its own included: shorter "
                            "calls on large frames while cores are idle (default 0: min(4, usable cores); 1 "
                            "turns the split off)")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="Prometheus metrics port (default 9464; 0 turns metrics off)")
    serve.add_argument("--metrics-address", default=None, help="address the metrics endpoint binds (default 0.0.0.0)")
    serve.set_defaults(func=_cmd_serve)

    build = commands.add_parser("build-engines", help="build the TensorRT engine of every component for this GPU")
    build.add_argument("--models-dir", action="append", metavar="DIR",
                       help="directory of model components (repeatable)")
    build.add_argument("--cache-dir", metavar="DIR", help="TensorRT engine cache (default ~/.cache/edge-agent/engines)")
    build.add_argument("--fake-gpu-memory", metavar="SIZE", help="build for the fake GPU (for trying without one)")
    build.set_defaults(func=_cmd_build_engines)

    convert = commands.add_parser("convert-anomalib",
                                  help="turn an anomalib export into a component directory with a full manifest")
    convert.add_argument("export_dir", metavar="EXPORT_DIR", help="anomalib's export root, or the folder of model.onnx")
    convert.add_argument("component_dir", metavar="COMPONENT_DIR", help="the component directory to write")
    convert.add_argument("--arn", help="lookout_vision_model_arn to report in ListModels/DescribeModel")
    convert.add_argument("--description", help="a description for the manifest")
    convert.add_argument("--color", default="#FF0000", help="mask colour of the 'anomaly' type (default #FF0000)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty COMPONENT_DIR")
    convert.set_defaults(func=_cmd_convert_anomalib)

    demo = commands.add_parser("demo-models", help="build the demo model components into DIR")
    demo.add_argument("directory", metavar="DIR")
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.add_argument("--samples", metavar="DIR", help="also write sample images (good and defective) there")
    demo.set_defaults(func=_cmd_demo_models)

    package = commands.add_parser("package-model", help="turn a model component directory into a Greengrass "
                                  "v2 component (archive and recipe)")
    package.add_argument("directory", metavar="DIR", help="model component directory (manifest.json and model)")
    package.add_argument("--version", required=True, help="component version, MAJOR.MINOR.PATCH")
    package.add_argument("--name", help="component name, the model_component clients pass (default: DIR's name)")
    package.add_argument("--out", required=True, metavar="OUT", help="writes OUT/recipes and OUT/artifacts")
    package.add_argument("--s3-prefix", metavar="s3://BUCKET/PREFIX", help="where the archive will be uploaded")
    package.add_argument("--agent-component", help="the agent's Greengrass component (default edgeagent.EdgeAgent)")
    package.add_argument("--agent-version-requirement", metavar="RANGE",
                         help="agent versions the model needs (default: this version up to the next major)")
    package.add_argument("--publisher", default="edge-agent package-model", help="the recipe's ComponentPublisher")
    package.add_argument("--json", action="store_true", help="print what was written as JSON")
    package.set_defaults(func=_cmd_package_model)

    health = commands.add_parser("health", help="ask a running agent's gRPC health service; exit 0 when SERVING")
    health.add_argument("--address", default=None, help="unix:PATH, a socket path or HOST:PORT (default "
                        f"$EDGE_AGENT_SOCKET_PATH, else {DEFAULT_SOCKET_PATH})")
    health.add_argument("--service", default="", help="a model component's name; empty: the agent itself")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds")
    health.set_defaults(func=_cmd_health)

    def client_command(name: str, help_text: str):  # type: ignore[no-untyped-def]
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--address", default=None,
                         help=f"agent address: unix:PATH, a socket path or HOST:PORT (default {DEFAULT_SOCKET_PATH})")
        sub.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
        sub.add_argument("--json", action="store_true", help="print JSON")
        return sub

    client_command("list", "list the model components").set_defaults(func=_cmd_list)
    sub = client_command("describe", "describe one model component")
    sub.add_argument("name")
    sub.set_defaults(func=_cmd_describe)
    sub = client_command("start", "start a model")
    sub.add_argument("name")
    sub.add_argument("--wait", action="store_true", help="wait until RUNNING or FAILED")
    sub.add_argument("--wait-timeout", type=float, default=180.0)
    sub.set_defaults(func=_cmd_start)
    sub = client_command("stop", "stop a model")
    sub.add_argument("name")
    sub.set_defaults(func=_cmd_stop)
    sub = client_command("detect", "run images through a RUNNING model")
    sub.add_argument("name")
    sub.add_argument("images", nargs="+", metavar="IMAGE")
    sub.add_argument("--mask-out", metavar="FILE.png", help="write the anomaly mask as PNG")
    sub.add_argument("--shared-memory", action="store_true", help="send the image and get the mask by shared memory")
    sub.set_defaults(func=_cmd_detect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from edge_agent import logs

    args = build_parser().parse_args(argv)
    log_format = args.log_format or os.environ.get("EDGE_AGENT_LOG_FORMAT", "text")
    logs.configure(args.log_level or "info", "json" if log_format == "json" else "text")
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into head and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except EdgeAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code is grpc.StatusCode.UNAVAILABLE:
            details = f"{details}. Is the agent running? Start it with 'edge-agent serve'."
        print(f"error: {code.name if code else 'RPC failed'}: {details}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
