"""The model-file contract: round trips, and errors that name the offending key."""

from __future__ import annotations

import json
import math

import pytest

from odetoode.modelfile import Box, Golden, ModelDescription, ModelFormatError, Normalization


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
        training={"seed": 1, "metrics": {"reward": 350.0}},
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
