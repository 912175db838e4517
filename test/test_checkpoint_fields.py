"""Every malformed field of a model card or training state is refused at load, in one line that
names the file and the field, by every tool: no traceback, a non-zero exit."""
import contextlib
import dataclasses
import io
import json
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dfanet_model.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    ModelCard,
    read_checkpoint,
    save_model,
    save_training_state,
)
from dfanet_model.classes import CAMVID
from dfanet_model.network import build_dfanet
from dfanet_tools.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def camvid_card(**kw) -> ModelCard:
    return ModelCard("B", CAMVID.num_classes, list(CAMVID.names),
                     [list(c) for c in CAMVID.colors], ignore_index=CAMVID.ignore_index,
                     dataset="camvid",
                     metrics={"val": {"miou": 0.5, "iou": [0.5] * 11, "pixel_acc": 0.8,
                                      "iteration": 5}},
                     provenance={"created": "2026-01-01T00:00:00Z", "iterations": 5,
                                 "train_seconds": 9.5, "package_version": "0.1.0"}, **kw)


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return build_dfanet("B", CAMVID.num_classes).eval()


@pytest.fixture(scope="module")
def tensors(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_model(path, weights, camvid_card())
    return load_file(str(path))


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_refusal(code: int, err: str, path, field: str | None = None) -> None:
    assert code != 0, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    err.encode("utf-8")  # printable: no lone surrogate echoed back
    assert f"checkpoint {path}: " in err, err
    if field is not None:
        assert f"{path}: {field}" in err, err


# Text includes lone surrogates (JSON's "\\ud800" escape decodes to one), which no file or
# terminal can encode.
texts = st.text(max_size=8) | st.text(st.characters(categories=["Cs", "Ll"]), max_size=4)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=True, allow_infinity=True) | texts,
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=16)
fields = st.sampled_from(sorted(json.loads(camvid_card().to_json())))


def _mutations():
    """(dotted path into the card, new value): whole fields, or one item inside one."""
    nested = st.sampled_from(["metrics.val", "metrics.val.iou", "metrics.val.miou",
                              "provenance.train_seconds", "provenance.iterations",
                              "provenance.created", "class_colors.0", "class_names.3",
                              "input_size.0", "std.1", "mean.2"])
    return st.tuples(fields | nested, json_values | st.builds(Deep, st.integers(1, 100_000)))


@dataclasses.dataclass(frozen=True)
class Deep:
    """A value written as ``depth`` nested JSON lists (json.dumps itself would recurse)."""

    depth: int

    @staticmethod
    def dumps(card: dict) -> str:
        text = json.dumps(card, default=lambda v: f"__nested_{v.depth}__")
        return re.sub(r'"__nested_(\d+)__"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), text)


def _set(card: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = card
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations())
@pytest.mark.slow
def test_any_mutated_card_field_loads_or_is_one_line(tmp_path_factory, tensors, mutation):
    dotted, value = mutation
    card = json.loads(camvid_card().to_json())
    _set(card, dotted, value)
    path = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: Deep.dumps(card)})
    code, out, err = run_main(["checkpoint", "inspect", str(path)])
    if code == 0:  # accepted: then it reads back as a card that every tool can use
        assert err == "" and "DFANet B" in out
        out.encode("utf-8")
        ModelCard.from_json(Deep.dumps(card))
    else:
        deep = isinstance(value, Deep) and "card: JSON nested too deeply" in err
        assert_one_line_refusal(code, err, path, field="card" if deep else dotted.split(".")[0])


@pytest.mark.parametrize("field, value, text", [
    ("variant", 1, "variant: must be a string, got int 1"),
    ("class_names", list(range(11)), "class_names[0]: must be a string, got int 0"),
    ("metrics", {"val": 5}, "metrics.val: must be an object, got int 5"),
    ("metrics", {"val": {"iou": [0.5]}}, "metrics.val.iou: must hold 11 values, got 1"),
    ("provenance", "yesterday", "provenance: must be an object, got str"),
    ("provenance", {"train_seconds": "long"}, "provenance.train_seconds: must be a number"),
    ("std", [0.2, float("nan"), 0.2], "std[1]: must be finite, got nan"),
    ("std", [0.2, 0.0, 0.2], "std: must be positive"),
    ("input_size", [100000, 100000], "input_size height: must be in 1..8192, got 100000"),
    ("input_size", [8192, 8192], "input_size: 8192x8192 is more than 16777216 pixels"),
    ("ignore_index", 300, "ignore_index: must be in 0..255, got 300"),
    ("colour", 3, "colour: unknown field"),
])
def test_each_malformed_card_field_is_named(tmp_path, tensors, field, value, text):
    card = json.loads(camvid_card().to_json())
    card[field] = value
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(card)})
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value) == f"checkpoint {path}: {text}" or \
        str(info.value).startswith(f"checkpoint {path}: {text}"), str(info.value)
    code, _, err = run_main(["checkpoint", "inspect", str(path)])
    assert_one_line_refusal(code, err, path, field)


@pytest.mark.parametrize("change, text", [
    (lambda s: s.update(optimizer=[1, 2]), "optimizer: must be a dict, got list"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"),
     "optimizer.param_groups[0].lr: must be a number, got str"),
    (lambda s: s.update(config="iterations=10"), "config: must be a dict, got str"),
    (lambda s: s.update(model=[torch.zeros(1)]), "model: must be a dict of tensors, got list"),
    (lambda s: s["model"].update(extra=3), "model: entry 'extra' is int, not a tensor"),
    (lambda s: s.update(iteration=2.5), "iteration: must be an integer, got float"),
    (lambda s: s.update(card=7), "card: must be JSON text, got int"),
])
def test_each_malformed_training_state_entry_is_named(tmp_path, weights, change, text):
    opt = torch.optim.SGD(weights.parameters(), lr=0.1, momentum=0.9)
    state = {"model": dict(weights.state_dict()), "optimizer": opt.state_dict(),
             "config": {"iterations": 10}, "iteration": 3, "best_miou": -1.0,
             "best_iteration": -1, "elapsed_s": 1.0, "world_size": 1, "rng": []}
    path = tmp_path / "last.pt"
    save_training_state(path, state, camvid_card())
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(f"checkpoint {path}: {text}"), str(info.value)
    code, _, err = run_main(["checkpoint", "inspect", str(path)])
    assert_one_line_refusal(code, err, path)


def test_pickled_code_is_refused_as_code_never_suggesting_to_run_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(), "card": "{}"}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "refused: the file holds pickled code" in message and "\n" not in message, message
    assert "weights_only" not in message


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


BAD_CARDS = {  # name: (field, value, what the one line says)
    "nan_std": ("std", [0.2, float("nan"), 0.2], "std[1]: must be finite, got nan"),
    "deep": ("metrics", Deep(100_000), "card: JSON nested too deeply"),
    "surrogate": ("dataset", "camvid \ud800", "dataset: not valid text (a lone surrogate: "
                  "camvid \\ud800)"),
}


@pytest.mark.parametrize("card_case", sorted(BAD_CARDS))
@pytest.mark.parametrize("command", ["inspect", "eval", "export"])
@pytest.mark.slow
def test_tools_exit_non_zero_with_one_line(tmp_path, tensors, sample_camvid, command,
                                           card_case):
    """The real executables, as a user runs them: NaN in std, a card nested 100,000 deep, a
    lone surrogate (each once a traceback, or for the surrogate, exit 1 and no message)."""
    field, value, text = BAD_CARDS[card_case]
    card = json.loads(camvid_card().to_json())
    card[field] = value
    bad = tmp_path / f"{card_case}.safetensors"
    save_file(tensors, str(bad), metadata={METADATA_KEY: Deep.dumps(card)})
    argv = {"inspect": ["checkpoint", "inspect", str(bad)],
            "eval": ["eval", str(bad), "--data", str(sample_camvid), "--split", "test"],
            "export": ["export", str(bad), "--format", "onnx", "--out",
                       str(tmp_path / "m.onnx")]}[command]
    proc = subprocess.run([sys.executable, "-m", "dfanet_tools.cli", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert f"checkpoint {bad}: {text}" in proc.stderr, proc.stderr
