"""A deployment run's ``config``: the run's settings laid over the deployment's default, field by field.

Prefect (pinned: see requirements.txt) merges a run's parameters over its deployment's at the top level only:
a run of an ``alps serve --backend triton --model-repository /models`` deployment started from the UI or the
API with ``config = {"amg": {"points_per_side": 16}}`` replaced serve's whole ``config`` and ran on the
built-in backend (embedded, ``./model_repository`` of the serve process's folder) without a word. The run's
recorded parameters still hold what it set; here that raw ``config`` is laid over the deployment's default
with :func:`alps_client.config.overlay_config` (its docstring gives the rule), then validated as Prefect
validates parameters.
"""

from __future__ import annotations

from typing import Any

from alps_client.config import PipelineConfig, overlay_config, set_fields
from flows.run_config import validated_config


def deployment_run_config(config: PipelineConfig | dict[str, Any] | None
                          ) -> tuple[PipelineConfig | dict[str, Any] | None, str]:
    """The config a flow run uses: ``config`` itself, or for a deployment run the overlay described above.

    Args:
        config: the ``config`` parameter as Prefect validated it (a partial one already filled with defaults;
            one that is not a valid config left a mapping: :mod:`flows.run_config`).

    Returns:
        The config to run with, and a line for the run's log saying what the run set ("" outside a deployment
        run, or when the run kept the deployment's default).

    Raises:
        AlpsError: If the overlay is not a valid configuration (e.g. ``--shared-memory`` from the deployment
            with two Triton URLs from the run), naming the field.
    """
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx is not None else None
    if ctx is None or ctx.client is None or flow_run is None or flow_run.deployment_id is None:
        return config, ""  # called as a function (`alps run`): the config given is the whole config
    default = ctx.client.read_deployment(flow_run.deployment_id).parameters.get("config")
    given: Any = flow_run.parameters.get("config", default)  # raw JSON, as the run's creator sent it
    if not isinstance(default, dict) or given == default:
        return config, ""
    # Prefect's own validation of the parameter (pydantic), so that coercion is the same; errors in one line.
    merged = validated_config(overlay_config(default, given), "the run's config laid over the deployment's default")
    what = ", ".join(set_fields(given, default) if isinstance(given, dict) else []) or "no field"
    return merged, (f"config: this run sets {what}; every other setting is the deployment's default config "
                    "(Prefect replaces a whole parameter: alps lays the run's config over it field by field)")
