"""``alps serve``: the flow as a deployment on a Prefect server, its runs started from the Prefect UI."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from alps_client.config import BackendConfig, PipelineConfig
from flows.console import fail, show_library_warnings
from flows.exits import EXIT_OK, exit_surely_on_sigterm
from flows.review_cli import a_path
from flows.run_arguments import config_part, in_flag_words, triton_urls


def cmd_serve(args: argparse.Namespace) -> int:
    """``alps serve``: register the deployment on a running Prefect server and execute its runs."""
    from flows.prefect_api import PrefectApiError, check_reachable, configured_api_url

    try:  # the flags first: a mistake in them is said without waiting on a server
        # Absolute: the deployment's default (shown in the UI) names the folder it means, not one relative
        # to a process's folder that the UI does not show.
        repository = str(Path(args.model_repository or BackendConfig.model_repository).resolve())
        urls, urls_from = triton_urls(vars(args))
        try:
            config = PipelineConfig(backend=config_part(BackendConfig, {
                "kind": args.kind, "model_repository": repository, "triton_urls": urls, "protocol": args.protocol,
                "shared_memory": args.shared_memory}))
        except ValueError as err:
            raise ValueError(in_flag_words(str(err)).replace("--triton-url", urls_from)) from None
        url = configured_api_url()
        if not url:
            return fail("alps serve needs a Prefect server that outlives it: start one (`make server`) and "
                        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
        check_reachable(url, temporary_one=False)
    except (PrefectApiError, ValueError) as err:
        return fail(str(err))
    show_library_warnings()
    for line in serve_default_warnings(args.dataset, config.backend):
        print(f"alps: {line}", file=sys.stderr)
    from flows.alps_flow import alps_flow

    # A run's partial `config` is laid over this one field by field (flows/deployment_config.py), so a run
    # that sets only `amg` keeps this backend: Prefect alone would replace the whole parameter.
    # Stored as JSON with the tile overlap left to follow the tile (3/7 of it): stored as resolved, 384, a run
    # that set only `inputs.tile` kept 384, and any tile of 384 px or less failed as "overlap must lie in [0, tile)".
    default = config.to_dict()
    default["inputs"]["overlap"] = None
    if urls is None:  # the same for Triton's port, which follows the protocol (a run's `backend.protocol`)
        default["backend"]["triton_urls"] = None
    parameters: dict[str, Any] = {"config": default}
    parameters.update({name: os.path.abspath(value) for name, value in (("dataset", args.dataset), ("out", args.out))
                       if value})
    print(f"alps serve: deployment alps-label-dataset/{args.name} on {url}; Ctrl-C stops it")
    exit_surely_on_sigterm()
    try:
        alps_flow.serve(name=args.name, tags=["alps"], parameters=parameters, limit=args.limit)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def serve_default_warnings(dataset: str | None, backend: BackendConfig) -> list[str]:
    """Lines on what ``alps serve``'s defaults lack: every run that keeps a default that is not there fails.

    Not refused: the folder may come later (a mount, an export), a Triton server may start later (compose's
    order), and a run may give its own.
    """
    from alps_client.backends.triton import accepts_connections

    model_repository = backend.model_repository
    lines = []
    if backend.kind == "triton":
        for url in backend.triton_urls or ():
            if not accepts_connections(url, 2.0):
                lines.append(f"no Triton server answers at {url} (yet): runs on this backend will fail until one does")
    if dataset and not Path(dataset).exists():
        lines.append(f"--dataset {os.path.abspath(dataset)} does not exist (yet): runs that keep this default "
                     "will fail until it does")
    if not (Path(model_repository) / "manifest.json").is_file():
        lines.append(f"no model repository at {os.path.abspath(model_repository)} (no manifest.json; "
                     "--model-repository): runs that keep this default will fail until export/export_sam.py "
                     "writes one there")
    return lines


def _deployment_name(value: str) -> str:
    """A deployment name that Prefect registers as given.

    `--name ""` became `alps-label-dataset/alps-label-dataset`, `a/b` a traceback after the "deployment ..." line.
    """
    if not value.strip() or value != value.strip() or any(c in value for c in "/%"):
        raise argparse.ArgumentTypeError(f"expected a name without '/', '%' or spaces around it, got {value!r}")
    return value


def _runs_at_once(value: str) -> int:
    """At least one: `--limit 0` served runs that stayed Late for ever, `-1` a traceback after "is being served"."""
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs >= 1, got {value!r}")
    return limit


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """``alps serve``'s parser, in ``alps``' commands."""
    serve = sub.add_parser("serve", help="register a deployment (flow.serve) to start runs from the Prefect UI")
    serve.add_argument("--name", type=_deployment_name, default="alps",
                       help="the deployment's name: alps-label-dataset/NAME (alps)")
    serve.add_argument("--dataset", help="default dataset parameter of the runs started in the UI")
    serve.add_argument("--out", type=a_path, help="default output parameter of the runs started in the UI")
    serve.add_argument("--limit", type=_runs_at_once, default=1, help="runs executed at once (1)")
    serve.add_argument("--backend", dest="kind", choices=["embedded", "triton"], help="the runs' backend (embedded)")
    serve.add_argument("--model-repository", type=a_path, help="the runs' model repository (model_repository)")
    serve.add_argument("--triton-url", dest="triton_urls", action="append", metavar="HOST:PORT",
                       help="Triton host:port of the runs (repeatable; default $ALPS_TRITON_URL, else 127.0.0.1:8001 "
                            "for gRPC, 127.0.0.1:8000 for HTTP)")
    serve.add_argument("--protocol", choices=["grpc", "http"], help="the runs' Triton protocol (grpc)")
    serve.add_argument("--shared-memory", action="store_true", default=None,
                       help="the runs send images through Triton's system shared memory (same host)")
    serve.set_defaults(func=cmd_serve)
