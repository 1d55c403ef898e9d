"""One training step's activations and gradients on a Tape: embeddings, L decoder layers, head, loss,
backward, with or without activation checkpointing.

Layers 0, 1 and L-1 are replayed op by op; the identical layers between them are added in bulk (their
per-layer net change is measured on a scratch tape), which is exact because a phase's peak over a run of
identical layers lies at one end of the run.

    >>> act = activation_model(spec, TrainConfig(), "cuda")
    >>> act.backward_layers  # peak candidates, evaluated per batch shape by planner.memory.estimate
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.memory.head import eager_mask, embedding_bwd, embedding_fwd, head_bwd, head_fwd, rotary_fwd
from planner.memory.layer import layer_bwd, layer_fwd
from planner.memory.ops import tk
from planner.memory.shape import Shape, layer_shape
from planner.memory.tape import Tape
from planner.memory.terms import ZERO, Lin
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig, step_key


@dataclass(frozen=True)
class LayerRole:
    active: bool  # autograd records it (a gradient flows through or into it)
    x_rg: bool  # its input requires grad
    wt: bool  # its base weights (and norms) are trainable


@dataclass(frozen=True)
class ActivationModel:
    """Pruned peak candidates per region of the step (bytes above the persistent model states)."""

    forward_layers: tuple[Lin, ...]
    forward_head: tuple[Lin, ...]
    backward_head: tuple[Lin, ...]
    backward_layers: tuple[Lin, ...]
    saved_layers: Lin  # what the layers (and rotary/masks) hold when the head starts
    saved_end_forward: Lin  # everything alive entering backward
    grads_end: Lin  # parameter gradients alive after backward
    backward_head_grads: Lin = ZERO  # part of backward_head that is parameter gradients (traced models)


def layer_roles(spec: ModelSpec, train: TrainConfig) -> tuple[LayerRole, ...]:
    """Per layer: recorded by autograd, input requires grad, base weights trainable."""
    L, gc = spec.num_layers, train.gradient_checkpointing
    if train.finetuning_type == "full":
        return tuple(LayerRole(True, True, True) for _ in range(L))
    if train.finetuning_type == "lora":
        # without checkpointing the embeddings' output does not require grad, so layer 0's input norm
        # saves nothing; transformers' checkpointing calls enable_input_require_grads()
        return tuple(LayerRole(True, gc or j > 0, False) for j in range(L))
    n = train.freeze_trainable_layers
    trainable = set(range(max(0, L - n), L)) if n > 0 else set(range(min(-n, L)))
    first = min(trainable) if trainable else L
    roles = []
    for j in range(L):
        if gc:  # enable_input_require_grads: every layer is recorded, gradients flow to the embeddings
            roles.append(LayerRole(True, True, j in trainable))
        else:
            roles.append(LayerRole(j >= first, j > first, j in trainable))
    return tuple(roles)


def _layer_net(S: Shape, role: LayerRole, gc: bool) -> tuple[Lin, Lin, Lin]:
    """(forward net, backward net, autocast-cached bytes released when the forward ends) of one layer,
    measured on a scratch tape."""
    t = Tape()
    x = t.new("x", tk(S.cr * S.h))
    base = t.cur
    if gc:
        t.hold(x)
    out, run = layer_fwd(t, S, x, role.x_rg, role.wt, save=not gc and role.active)
    t.drop(x)
    fwd = t.cur - base
    before = t.cur
    t.clear_cache()
    cached = before - t.cur
    if not role.active:
        return fwd, ZERO, cached
    g = t.new("g", tk(S.cr * S.h))
    base = t.cur
    if gc:
        r_out, run = layer_fwd(t, S, x, role.x_rg, role.wt, save=True)
        t.clear_cache()
    layer_bwd(t, S, run, g, role.x_rg, role.wt)
    if gc:
        t.drop(x, r_out)
    return fwd, t.cur - base, cached


def activation_model(spec: ModelSpec, train: TrainConfig, device: str, *, grad_scale: float = 1.0,
                     grads_resident: bool = False) -> ActivationModel:
    """Replay one step of `train` on `spec` (batch-shape independent: planner.memory.estimate evaluates its
    candidates per batch shape).

    grad_scale: the fraction of each parameter gradient this rank keeps (ZeRO-2/3); grads_resident:
    gradients exist before backward (gradient accumulation)."""
    key = step_key(train)  # only the fields that change what a step allocates (planner.train_config)
    return _activation_model(spec, key, device, grad_scale, grads_resident)


@lru_cache(maxsize=1024)
def _activation_model(spec: ModelSpec, train: TrainConfig, device: str, grad_scale: float,
                      grads_resident: bool) -> ActivationModel:
    return replay_step(spec, train, device, grad_scale=grad_scale, grads_resident=grads_resident)


def replay_step(spec: ModelSpec, train: TrainConfig, device: str, *, grad_scale: float = 1.0,
                grads_resident: bool = False, log: list | None = None) -> ActivationModel:
    """Replay one step on a fresh Tape (uncached). `log` collects (event, running total) pairs: compare
    them with the tensor-accounting oracle's op log when a recipe disagrees."""
    S = layer_shape(spec, train, device, grad_scale, grads_resident)
    roles = layer_roles(spec, train)
    gc = train.gradient_checkpointing
    full = train.finetuning_type == "full"
    L = len(roles)
    t = Tape(log=log)
    cos, sin = rotary_fwd(t, S)
    mask = eager_mask(S) if S.attn == "eager" else ZERO
    t.bulk(mask)
    x = embedding_fwd(t, S, leaf=L > 0 and roles[0].x_rg and not full)
    # Model.forward keeps `inputs_embeds` and `position_ids` (int64) referenced until it returns
    embeds = x
    t.hold(embeds)
    pos = t.new("position_ids", Lin(seq=8.0))  # arange(s)[None]: one row for the whole batch
    # explicit layers: 0, 1 and the last; the rest in bulk (identical roles, checked below)
    explicit = list(range(L)) if L <= 4 else [0, 1, L - 1]
    bulk_ids = [j for j in range(L) if j not in explicit]
    if bulk_ids and len({roles[j] for j in bulk_ids}) > 1:
        explicit = list(range(L))
        bulk_ids = []
    bulk_fwd = bulk_bwd = bulk_cache = ZERO
    if bulk_ids:
        f, b, k = _layer_net(S, roles[bulk_ids[0]], gc)
        bulk_fwd, bulk_bwd, bulk_cache = f * len(bulk_ids), b * len(bulk_ids), k * len(bulk_ids)
    runs: dict[int, tuple] = {}
    for j in explicit:
        if j == L - 1 and bulk_ids:
            t.bulk(bulk_fwd)
        role = roles[j]
        if gc and role.active:
            t.hold(x)  # the checkpoint keeps its input for the recompute
        out, run = layer_fwd(t, S, x, role.x_rg, role.wt, save=not gc and role.active)
        runs[j] = (x, run)
        t.drop(x)
        x = out
    forward_layers = t.pruned()
    t.drop(embeds, pos)
    if not gc:
        t.bulk(ZERO - mask)  # the mask dies with the model's forward (checkpointing keeps it as an input)
    saved_layers = t.cur
    t.reset_candidates()
    head_wt = full  # lm_head and final norm train only in full fine-tuning
    hr = head_fwd(t, S, x, head_wt, head_wt)
    forward_head = t.pruned()
    t.clear_cache()
    t.bulk(ZERO - bulk_cache)
    saved_end = t.cur
    t.reset_candidates()
    g = head_bwd(t, S, hr, head_wt, head_wt)
    backward_head = t.pruned()
    t.reset_candidates()
    for j in reversed(explicit):
        role = roles[j]
        xin, run = runs[j]
        if not role.active:
            break
        if gc:
            r_out, run = layer_fwd(t, S, xin, role.x_rg, role.wt, save=True)
            t.clear_cache()
        g = layer_bwd(t, S, run, g, role.x_rg, role.wt)
        if gc:
            t.drop(xin, r_out)
        if j == L - 1 and bulk_ids:
            t.bulk(bulk_bwd)
        if g is None:
            break
    if gc:
        t.bulk(ZERO - mask)
    embedding_bwd(t, S, g, trainable=full, tied=spec.tie_word_embeddings)
    t.drop(cos, sin)
    backward_layers = t.pruned()
    return ActivationModel(
        forward_layers=forward_layers, forward_head=forward_head, backward_head=backward_head,
        backward_layers=backward_layers, saved_layers=saved_layers, saved_end_forward=saved_end,
        grads_end=t.cur,
    )
