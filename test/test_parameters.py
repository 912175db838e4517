"""NodeParameters: the one parameter table, checked as configure needs them, and every place
that repeats it (config/segment.yaml, the README's table) held to it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from dfanet_model.resources import DEFAULT_CHECKPOINT
from dfanet_ros.parameters import (
    DYNAMIC_PARAMETERS,
    PARAMETER_NAMES,
    PARAMETERS,
    NodeParameters,
)
from dfanet_tools import parameter_docs

REPO = Path(__file__).resolve().parent.parent

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


def test_each_field_is_annotated_with_its_defaults_type():
    for f in dataclasses.fields(NodeParameters):
        d = f.default
        expected = (f"tuple[{type(d[0]).__name__}, ...]" if isinstance(d, tuple)
                    else type(d).__name__)
        assert f.type == expected, f"{f.name}: annotated {f.type}, default {d!r}"


def test_generated_files_follow_the_table():
    stale = parameter_docs.stale_files()
    assert not stale, (f"{', '.join(map(str, stale))} differ from dfanet_ros/parameters.py: "
                       "run python -m dfanet_tools.parameter_docs")


def test_params_file_holds_every_default_with_its_type():
    """What the node reads from config/segment.yaml: each name in table order, each value
    equal to the table's default and of its type (0.5 stays a double, 0 an int)."""
    params = yaml.safe_load((REPO / "config" / "segment.yaml").read_text())
    params = params["/**"]["ros__parameters"]
    assert tuple(params) == PARAMETER_NAMES
    for p in PARAMETERS:
        value = params[p.name]
        assert value == p.default and type(value) is type(p.default), \
            f"config/segment.yaml {p.name}: {value!r}, the table says {p.default!r}"


def test_readme_table_states_every_parameter():
    text = (REPO / "README.md").read_text()
    table = text[text.index(parameter_docs.TABLE_BEGIN):text.index(parameter_docs.TABLE_END)]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in table.splitlines()[3:]]
    type_names = {bool: "bool", int: "int", float: "double", str: "string", list: "string[]"}
    assert tuple(row[0].strip("`") for row in rows) == PARAMETER_NAMES
    for p, (_, type_name, default, bounds, run_time, meaning) in zip(PARAMETERS, rows,
                                                                     strict=True):
        assert type_name == type_names[type(p.default)], p.name
        assert yaml.safe_load(default.strip("`")) == p.default, p.name
        got = tuple(float(b) for b in bounds.split("..")) if bounds else None
        assert got == p.bounds, p.name
        assert (run_time == "yes") == p.dynamic and meaning == p.description, p.name


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
