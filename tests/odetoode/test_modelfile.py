"""The model-file contract: round trips, and errors that name the offending key."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from odetoode.modelfile import (
    ARCHS,
    Box,
    Golden,
    ModelDescription,
    ModelFormatError,
    Normalization,
    TrainingRecord,
)


def policy() -> ModelDescription:
    return ModelDescription(
        kind="policy",
        arch="iso-odetoode",
        steps=25,
        hidden=16,
        golden=Golden(((0.0, 1.0),), ((0.5,),)),
        env_id="Swimmer-v5",
        observation_space=Box((2,), (-math.inf, -1.0), (math.inf, 1.0)),
        action_space=Box((1,), (-1.0,), (1.0,)),
        obs_normalization=Normalization((0.0, 0.1), (1.0, 2.0), 5.0),
        lipschitz_bound=(1 + 1 / 25) ** 25,
        training=TrainingRecord(seed=1, env="Swimmer-v5", metrics={"reward": 350.0}),
    )


def test_round_trip_through_string_metadata() -> None:
    d = policy()
    props = d.to_metadata_props()
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props["odetoode.observation_space"])["low"] == ["-inf", -1.0]  # JSON has no infinity
    assert ModelDescription.from_metadata_props(props) == d


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("odetoode.format", "2", r"odetoode.format: this service reads format 1"),
        ("odetoode.kind", "regressor", r"odetoode.kind: expected one of"),
        ("odetoode.arch", "resnet", r"odetoode.arch: expected one of"),
        ("odetoode.steps", "0", r"odetoode.steps: must be >= 1"),
        ("odetoode.hidden", "sixteen", r"odetoode.hidden: 'sixteen' is not an integer"),
        ("odetoode.golden", "{not json", r"odetoode.golden: not valid JSON"),
        ("odetoode.golden", '{"inputs": [], "outputs": []}', r"odetoode.golden: needs as many"),
        ("odetoode.obs_normalization", '{"mean": [0, 0], "std": [1, 0], "clip": 5}', r"every std must be positive"),
        ("odetoode.action_space", '{"shape": [2], "low": [0], "high": [1]}', r"odetoode.action_space: low/high must"),
        ("odetoode.lipschitz_bound", "NaN", r"odetoode.lipschitz_bound: NaN is not allowed"),
    ],
)
def test_errors_name_the_key(key: str, value: str, message: str) -> None:
    props = policy().to_metadata_props()
    props[key] = value
    with pytest.raises(ModelFormatError, match=message):
        ModelDescription.from_metadata_props(props)


def test_missing_keys_are_reported() -> None:
    props = policy().to_metadata_props()
    del props["odetoode.golden"]
    with pytest.raises(ModelFormatError, match=r"odetoode.golden: missing"):
        ModelDescription.from_metadata_props(props)
    props = policy().to_metadata_props()
    del props["odetoode.action_space"]
    with pytest.raises(ModelFormatError, match=r"odetoode.action_space: required for a policy"):
        ModelDescription.from_metadata_props(props)


def test_classifier_needs_no_spaces() -> None:
    d = ModelDescription(
        kind="classifier", arch="gated-odetoode", steps=100, hidden=128, golden=Golden(((0.0,),), ((1.0,),))
    )
    again = ModelDescription.from_metadata_props(d.to_metadata_props())
    assert again == d
    assert again.input_name == "image" and again.output_names == ("logits", "probabilities")


def test_training_record_serializes_known_fields_in_order_and_leaves_out_the_unset() -> None:
    record = TrainingRecord(note="n", metrics={}, seed=0, command="c", wall_s=1.5)
    assert list(record) == ["command", "seed", "wall_s", "note"]  # declaration order; None and empty metrics left out
    assert dict(record) == {"command": "c", "seed": 0, "wall_s": 1.5, "note": "n"}
    assert TrainingRecord().to_dict() == {} and len(TrainingRecord()) == 0
    assert record == {"command": "c", "seed": 0, "wall_s": 1.5, "note": "n"}  # reads as the mapping it writes
    assert record != {"command": "c"}


def test_training_records_of_older_exports_read_tolerantly_and_round_trip() -> None:
    """What the bundled models and older exporters wrote: unknown keys kept, absent keys None, odd types kept."""
    older = {
        "command": "python -m trainer es --resume True",
        "seed": 0,
        "iterations": 303,
        "env_steps": 62115000,
        "wall_s": 2353,  # an int where a float is declared: a number all the same
        "metrics": {"eval_return": 4913.8},
        "host": "box-7",  # unknown to this version
        "note": ["not", "a", "string"],  # a known key with a value of another type
    }
    props = dataclasses.replace(policy(), training=TrainingRecord()).to_metadata_props()
    props["odetoode.training"] = json.dumps(older)
    d = ModelDescription.from_metadata_props(props)
    record = d.training
    assert isinstance(record, TrainingRecord)
    assert (record.command, record.seed, record.env, record.iterations) == (older["command"], 0, None, 303)
    assert record.wall_s == 2353 and record.metrics == {"eval_return": 4913.8} and record.note is None
    assert record.other == {"host": "box-7", "note": ["not", "a", "string"]}
    assert json.loads(json.dumps(dict(d.training))) == older  # what the server shows: nothing lost
    assert ModelDescription.from_metadata_props(d.to_metadata_props()) == d
    props["odetoode.training"] = "[1, 2]"
    with pytest.raises(ModelFormatError, match=r"odetoode.training: expected an object"):
        ModelDescription.from_metadata_props(props)


def test_every_training_field_has_a_reading_rule_and_arch_names_are_the_literal() -> None:
    from odetoode.modelfile import _TRAINING_TYPES

    assert set(_TRAINING_TYPES) == {f.name for f in dataclasses.fields(TrainingRecord)} - {"other"}
    assert ARCHS[0] == "iso-odetoode" and len(set(ARCHS)) == len(ARCHS) == 8


def test_the_contract_imports_without_torch() -> None:
    code = "import sys, odetoode.modelfile; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
