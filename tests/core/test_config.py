"""The overlay of a run's partial config on a deployment's default (the rule of `alps serve` runs); defaults."""

from __future__ import annotations

import pytest

from alps_client.config import PipelineConfig, overlay_config, set_fields

SERVE = PipelineConfig.from_dict({"backend": {"kind": "triton", "model_repository": "/models",
                                              "triton_urls": ["10.0.0.5:8001"]}}).to_dict()


@pytest.mark.parametrize(
    ("given", "backend", "points_per_side"),
    [
        ({"amg": {"points_per_side": 16}}, ("triton", "/models"), 16),  # the run leaves backend out: serve's
        ({"backend": {"kind": "embedded"}}, ("embedded", "/models"), 32),  # a field it sets wins, the rest stay
        # Set to the built-in default is not the same as left out.
        ({"backend": {"model_repository": "model_repository"}}, ("triton", "model_repository"), 32),
        (None, ("triton", "/models"), 32),  # config: null keeps the deployment's
    ],
)
def test_a_run_config_is_laid_over_the_default_field_by_field(given, backend, points_per_side):
    merged = PipelineConfig.from_dict(overlay_config(SERVE, given))
    assert (merged.backend.kind, merged.backend.model_repository) == backend
    assert merged.backend.triton_urls == ("10.0.0.5:8001",)
    assert merged.amg.points_per_side == points_per_side


def test_overlay_changes_neither_argument_and_replaces_lists_whole():
    base = {"backend": {"triton_urls": ["a:1", "b:1"]}}
    given = {"backend": {"triton_urls": ["c:1"]}}
    assert overlay_config(base, given) == {"backend": {"triton_urls": ["c:1"]}}
    assert base == {"backend": {"triton_urls": ["a:1", "b:1"]}} and given == {"backend": {"triton_urls": ["c:1"]}}
    assert set_fields({"amg": {"points_per_side": 8}, "gate": {"sigma": 0.5}}) == ["amg.points_per_side",
                                                                                  "gate.sigma"]
    # The Prefect UI's run form sends the whole config: the run's log named every field (53) as set by the run.
    default = PipelineConfig().to_dict()
    form = overlay_config(default, {"amg": {"points_per_side": 8}, "inputs": {"tile": 512}})
    assert len(set_fields(form)) > 40
    assert sorted(set_fields(form, default)) == ["amg.points_per_side", "inputs.tile"]


def test_triton_is_reached_on_the_port_of_the_protocol_asked():
    """`--protocol http` without `--triton-url` sent HTTP to 8001, Triton's gRPC port."""
    from alps_client.config import BackendConfig

    assert BackendConfig().triton_urls == ("127.0.0.1:8001",)
    assert BackendConfig(protocol="http").triton_urls == ("127.0.0.1:8000",)
    assert BackendConfig(protocol="http", triton_urls=("h:9000",)).triton_urls == ("h:9000",)
    assert PipelineConfig.from_dict(PipelineConfig(backend=BackendConfig(protocol="http")).to_dict()).backend.triton_urls \
        == ("127.0.0.1:8000",)
