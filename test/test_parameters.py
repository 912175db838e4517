"""NodeParameters: one typed field per declared parameter, checked as configure needs them."""
from __future__ import annotations

import dataclasses

import pytest

from dfanet_model.resources import DEFAULT_CHECKPOINT
from dfanet_ros.parameters import (
    DYNAMIC_PARAMETERS,
    PARAMETER_NAMES,
    PARAMETERS,
    NodeParameters,
)

DEFAULTS = {name: default for name, default, *_ in PARAMETERS}


def values(**changes):
    return {**DEFAULTS, **changes}


def test_one_field_per_declared_parameter_of_its_type():
    fields = {f.name: f.type for f in dataclasses.fields(NodeParameters)}
    assert tuple(fields) == PARAMETER_NAMES
    params = NodeParameters.from_values(values(checkpoint="model.safetensors"))
    for name, default, *_ in PARAMETERS:
        value = getattr(params, name)
        expected = tuple if isinstance(default, list) else type(default)
        assert type(value) is expected, name
    assert DYNAMIC_PARAMETERS == {"overlay_alpha", "publish_label", "publish_color",
                                  "publish_overlay", "publish_confidence", "publish_info",
                                  "min_mean_confidence"}


def test_defaults_complete_to_what_the_engine_takes():
    params = NodeParameters.from_values(values())
    assert params.checkpoint == str(DEFAULT_CHECKPOINT)  # "": the shipped model
    assert params.camera_topics == ("camera/image_raw",)
    assert params.model_size is None and params.publishes("overlay")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.device = "cuda"  # type: ignore[misc]


@pytest.mark.parametrize("height, width, size", [(0, 0, None), (-1, -1, (0, 0)),
                                                 (360, 480, (360, 480))])
def test_model_size(height, width, size):
    params = NodeParameters.from_values(values(checkpoint="m", model_height=height,
                                               model_width=width))
    assert params.model_size == size


@pytest.mark.parametrize("changes, message", [
    ({"model_height": -1}, "model_height -1 and model_width 0: set both"),
    ({"model_height": 0, "model_width": 5}, "model_height 0 and model_width 5"),
    ({"camera_topics": ["a", "a"]}, "camera_topics must list distinct topics, got ['a', 'a']"),
    ({"camera_topics": ["", ""]}, "camera_topics must list distinct topics"),
    ({"input_reliability": "sometimes"}, "input_reliability must be best_effort or reliable"),
    ({"output_reliability": ""}, "output_reliability must be best_effort or reliable"),
])
def test_bad_values_are_named(changes, message):
    with pytest.raises(ValueError) as e:
        NodeParameters.from_values(values(checkpoint="m", **changes))
    assert message in str(e.value)


def test_empty_topics_are_dropped():
    params = NodeParameters.from_values(values(checkpoint="m", camera_topics=["a", "", "/b"]))
    assert params.camera_topics == ("a", "/b")


def test_only_run_time_parameters_change_before_the_next_configure():
    params = NodeParameters.from_values(values(checkpoint="m"))
    changed = params.with_changes({"overlay_alpha": 0.25, "publish_color": False,
                                   "device": "cuda", "checkpoint": "other", "unknown": 1})
    assert changed.overlay_alpha == 0.25 and not changed.publishes("color")
    assert changed.device == params.device and changed.checkpoint == "m"
    assert params.overlay_alpha == 0.5  # a new value, the old one unchanged
    assert params.with_changes({"device": "cuda"}) is params


@pytest.mark.parametrize(("text", "size"), [("checkpoint", None), ("frame", (0, 0)),
                                            ("240x320", (240, 320))])
def test_one_model_size_from_command_line_to_node_parameters(text, size):
    """The benchmarks' and dfanet eval's spelling of a model size reaches the node as the
    same size: parse_model_size, then model_size_parameters, read back by the node."""
    from dfanet_model.args import parse_model_size
    from dfanet_ros.parameters import PARAMETERS, NodeParameters, model_size_parameters
    assert parse_model_size(text) == size
    values = {name: default for name, default, *_ in PARAMETERS}
    values.update(model_size_parameters(size))
    assert NodeParameters.from_values(values).model_size == size


def test_a_bad_model_size_is_named():
    import argparse

    from dfanet_model.args import parse_model_size
    with pytest.raises(argparse.ArgumentTypeError,
                       match="model size must be checkpoint, frame or HEIGHTxWIDTH, got 'big'"):
        parse_model_size("big")
