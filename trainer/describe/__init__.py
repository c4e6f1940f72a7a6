"""Describe a policy trained elsewhere: an ONNX file -> a servable, self-describing odetoode policy (arch ``external``).

A network from Stable-Baselines3, CleanRL or one's own PyTorch, exported with ``torch.onnx.export``, has its own
input and output names, often several outputs (SB3: actions, values, log_prob) and its observation normalization
outside the graph (VecNormalize). ``describe_policy`` rebuilds it into the policy contract of
``odetoode.modelfile``:

    observation [batch, d] float32 -> (obs - mean) / std, clipped to +-clip   (only with a normalization: baked in)
                                   -> the original graph, names prefixed "policy/", unused outputs pruned
                                   -> Box:      the chosen output, clipped to the action bounds -> action [batch, m]
                                      Discrete: logits [batch, n] -> ArgMax -> action [batch] int64, plus logits

A discrete graph that already outputs the index (an integer tensor [batch] or [batch, 1], as SB3's deterministic
``predict`` exports) keeps it as ``action``; its ``logits`` are then the one-hot of that index (1 at the chosen
action, 0 elsewhere), which keeps the contract (``action`` is the argmax of ``logits``) and says nothing more.

The result is checked before it is written: ONNX Runtime runs it on in-space observations one at a time and as a
batch (a graph exported with a fixed batch size fails here), the outputs must have the shapes of the spaces, and the
written metadata must parse as ``ModelDescription`` with the golden pairs reproduced. No Lipschitz bound is claimed:
nothing is certified for an arbitrary network. No torch here: ``onnx``, ``onnxruntime`` and ``gymnasium``.

The package, one module per concern: ``spaces`` (the spaces and normalization the user tells) and ``options`` (the
command's options that state them), ``graph`` (rebuilding the graph), ``checks`` (running it with ONNX Runtime),
``described`` (``describe_policy``: all of it into a ``DescribedPolicy``), ``repository`` (writing the version and
its model card); ``errors`` holds the two errors every step raises.
"""

from __future__ import annotations

from trainer.describe.checks import sample_observations
from trainer.describe.described import DescribedPolicy, describe_file, describe_policy
from trainer.describe.errors import DescribeError, OptionsError
from trainer.describe.options import NormalizationOptions, SpaceOptions
from trainer.describe.repository import describe_to_repository, model_card, summary, write_described
from trainer.describe.spaces import (
    VECNORMALIZE_CLIP,
    VECNORMALIZE_EPSILON,
    PolicySpaces,
    box_of,
    normalization_from_stats,
    read_statistics,
    spaces_of_env,
)

__all__ = [
    "VECNORMALIZE_CLIP",
    "VECNORMALIZE_EPSILON",
    "DescribeError",
    "DescribedPolicy",
    "NormalizationOptions",
    "OptionsError",
    "PolicySpaces",
    "SpaceOptions",
    "box_of",
    "describe_file",
    "describe_policy",
    "describe_to_repository",
    "model_card",
    "normalization_from_stats",
    "read_statistics",
    "sample_observations",
    "spaces_of_env",
    "summary",
    "write_described",
]
