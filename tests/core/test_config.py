"""The overlay of a run's partial config on a deployment's default (the rule of `alps serve` runs); defaults."""

from __future__ import annotations

import json

import pytest

from alps_client.config import (
    AmgConfig,
    BackendConfig,
    ClusterConfig,
    FeatureConfig,
    GateConfig,
    InputConfig,
    PipelineConfig,
    WriterConfig,
    overlay_config,
    set_fields,
)

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


@pytest.mark.parametrize(
    ("make", "message"),
    [  # each was accepted, then failed images inside numpy, gave no mask unsaid, or stopped a run after labelling
        (lambda: AmgConfig(points_per_batch=2.5), "points_per_batch must be an integer or None, got 2.5"),
        (lambda: AmgConfig(crop_n_layers=1.5), "crop_n_layers must be an integer, got 1.5"),
        (lambda: AmgConfig(points_per_side=True), "points_per_side must be an integer or None, got True"),
        (lambda: AmgConfig(mask_threshold=float("nan")), "mask_threshold must be a finite number, got nan"),
        (lambda: AmgConfig(stability_score_offset=-1.0), "stability_score_offset must be >= 0, got -1.0"),
        (lambda: AmgConfig(points_per_side=None, point_grids=((),)), r"point_grids\[0\] must hold at least one"),
        (lambda: AmgConfig(points_per_side=None, point_grids=(((0.5, 1.5),),)), r"each in \[0, 1\].* to 1.5"),
        (lambda: AmgConfig(use_m2m=1), "use_m2m must be true or false, got 1"),
        (lambda: FeatureConfig(feature_size=2.5), "feature_size must be an integer, got 2.5"),
        (lambda: BackendConfig(kind="triton", triton_urls="10.0.0.5:8001"),
         r"triton_urls must be a tuple of strings or None, got '10.0.0.5:8001' \(a string: give a tuple of them\)"),
        (lambda: BackendConfig(timeout_s=float("inf")), "timeout_s must be a finite number, got inf"),
        (lambda: ClusterConfig(seed=-1), "seed must lie in 0..4294967295, got -1"),
        (lambda: WriterConfig(seed=2**32), "seed must lie in 0..4294967295"),
        (lambda: InputConfig(bands=(4, 3, 2.5)), r"bands must be a tuple of integers or None, got \(4, 3, 2.5\)"),
        (lambda: PipelineConfig.from_dict({"amg": [1, 2]}), r"the config's amg must be a mapping of its fields"),
        (lambda: PipelineConfig(gate={"sigma": 0.5}), "gate must be of type GateConfig"),
    ],
)
def test_a_field_of_another_type_is_refused_naming_it(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_scalars_and_lists_become_the_fields_own_types():
    """A count computed with numpy was refused ("must be an integer ... got np.int64(8)"), or went into the
    manifest as a value JSON cannot hold. An int in a float field stays an int: the shard fingerprints of runs
    that recorded it so stay the same."""
    import numpy as np

    config = PipelineConfig(amg=AmgConfig(points_per_side=np.int64(16), stability_score_thresh=np.float32(0.5)),
                            cluster=ClusterConfig(n_clusters=np.int64(8)), gate=GateConfig(sigma=1),
                            features=FeatureConfig(l2_normalize=np.bool_(False)),
                            backend=BackendConfig(triton_urls=["h:8001"]))
    assert type(config.amg.points_per_side) is int and type(config.cluster.n_clusters) is int
    assert type(config.amg.stability_score_thresh) is float and config.amg.stability_score_thresh == 0.5
    assert type(config.gate.sigma) is int and config.features.l2_normalize is False
    assert config.backend.triton_urls == ("h:8001",)
    grid = AmgConfig(points_per_side=None, point_grids=[np.array([[0.25, 0.75], [0.5, 0.5]])])
    assert grid.point_grids == (((0.25, 0.75), (0.5, 0.5)),)
    assert PipelineConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
