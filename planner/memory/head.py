"""The LM head and the loss on a Tape: final norm, lm_head, Gemma-2 soft-capping, cross-entropy.

transformers' ForCausalLMLoss (loss/loss_utils.py) upcasts the logits with `.float()`, pads and shifts
the labels, and calls cross_entropy = log_softmax (fp32 output saved) + nll_loss. The compute-dtype
logits stay referenced by the model output until the training step drops it (HF Trainer's
compute_loss returns only the loss). Liger's fused linear cross-entropy
(liger_kernel/ops/fused_linear_cross_entropy.py) never materializes the logits: it runs the head in
chunks of ~T*h/V rows, writes d(input) during the forward and keeps only that for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.memory.ops import Saved, const, pgrad, tk
from planner.memory.recipes import linear_bwd, norm_bwd, norm_fwd
from planner.memory.shape import Proj, Shape
from planner.memory.tape import Tape
from planner.memory.terms import Lin


@dataclass
class HeadRun:
    norm: Saved
    lm_head: Saved
    loss: Saved
    lm_dtype: int
    tanh: str | None = None


def head_fwd(t: Tape, S: Shape, x: str, norm_wt: bool, head_wt: bool) -> HeadRun:
    """From the last layer's output to the loss. Leaves the live total as at the end of forward."""
    V, cl = S.vocab, S.cl
    n, nsv = norm_fwd(t, S, x, S.cr, True, norm_wt, True)
    t.drop(x)
    xd = S.cr if (S.gemma or S.olmo_norm) else S.cn
    lm = Saved()
    loss = Saved()
    if S.liger:
        # FLCE: grad_input (input dtype) computed chunk by chunk in forward; chunk logits + their grad
        lm.put(t, "x", n, head_wt)
        # chunk rows = next_power_of_2(ceil(T / ceil(V / h))): ~T*h/V rows of V logits, i.e. about one
        # hidden-sized tensor, up to twice that from the power-of-2 rounding (taken here as the bound)
        gin = t.new("flce_grad_input", tk(xd * S.h))
        loss_1d = t.new("flce_loss_1d", tk(4))
        chunk = t.new("chunk_logits", tk(2 * cl * S.h))
        t.drop(chunk, loss_1d)
        loss.put(t, "grad_input", gin)
        t.drop(gin, n)
        labels = t.new("labels_shift", tk(8))
        loss.put(t, "labels", labels)
        t.drop(labels)
        return HeadRun(nsv, lm, loss, cl)
    if S.amp:
        from planner.memory.recipes import _autocast_mm

        logits = _autocast_mm(t, S, lm, "base", n, xd, S.h, V, head_wt, True, True)
    else:
        logits = t.new("logits", tk(cl * V))
        lm.put(t, "x", n, head_wt)
    # n stays referenced by `hidden_states` / outputs.last_hidden_state until the forward returns
    if S.multipliers:  # Granite: logits / logits_scaling (a scalar: nothing saved)
        scaled = t.new("logits_scaled", tk(cl * V))
        t.drop(logits)
        logits = scaled
    tanh = None
    if S.final_softcap:  # logits / cap; tanh (saved); * cap
        d = t.new("logits_div", tk(cl * V))
        t.drop(logits)
        tanh = t.new("logits_tanh", tk(cl * V))
        t.drop(d)
        logits = t.new("logits_capped", tk(cl * V))
    lf = t.new("logits_fp32", tk(4 * V)) if cl != 4 else logits
    if cl == 4:
        t.hold(lf)
    padded = t.new("labels_pad", tk(8))
    shifted = t.new("labels_shift", tk(8))
    t.drop(padded)
    lsm = t.new("log_softmax", tk(4 * V))
    loss.put(t, "lsm", lsm)
    loss.put(t, "labels", shifted)
    t.drop(lsm, lf, shifted)
    t.drop(logits, n)  # the model output (logits) is released when the training step drops it
    return HeadRun(nsv, lm, loss, cl, tanh)


def head_bwd(t: Tape, S: Shape, run: HeadRun, norm_wt: bool, head_wt: bool) -> str:
    """Backward from the loss to the last layer's output gradient."""
    V, cl, h = S.vocab, S.cl, S.h
    xd = S.cr if (S.gemma or S.olmo_norm) else S.cn
    if S.liger:
        if head_wt:
            pgrad(t, S, S.w * V * h)
        g = t.new("g_head_in", tk(xd * h))  # grad_input * grad_output
        run.loss.release(t)
    else:
        glsm = t.new("g_log_softmax", tk(4 * V))  # nll_loss_backward
        run.loss.release(t, "labels")
        glf = t.new("g_logits_fp32", tk(4 * V))
        t.drop(glsm)
        run.loss.release(t)
        if cl != 4:
            gl = t.new("g_logits", tk(cl * V))
            t.drop(glf)
        else:
            gl = glf
        if run.tanh is not None:
            for step in ("g_cap", "g_tanh", "g_div"):
                nxt = t.new(step, tk(cl * V))
                t.drop(gl)
                if step == "g_tanh":
                    t.drop(run.tanh)
                gl = nxt
        if S.multipliers:  # the division's backward
            gs = t.new("g_logits_scaled", tk(cl * V))
            t.drop(gl)
            gl = gs
        head = Proj("lm_head", h, V, False)
        g = linear_bwd(t, S, head, gl, run.lm_head, xd, cl, True, head_wt)
    return norm_bwd(t, S, g, run.norm, S.cr, xd, True, norm_wt)


def embedding_fwd(t: Tape, S: Shape, leaf: bool = False) -> str:
    """The embeddings' output (scaled where the family scales it). leaf: the output of the frozen
    embedding is a leaf that requires grad (enable_input_require_grads, LoRA/freeze with checkpointing);
    Granite scales it outside the embedding module, so the graph's AccumulateGrad node keeps the unscaled
    leaf alive until backward reaches it (fake-tensor trace of Granite LoRA with checkpointing)."""
    e = t.new("embeds", tk(S.cr * S.h))
    if leaf and S.multipliers:
        t.hold(e)
        t.cache_leaf = e
    if S.embed_scale:  # Gemma*TextScaledWordEmbedding: * sqrt(hidden_size); Granite: * embedding_multiplier
        e2 = t.new("embeds_scaled", tk(S.cr * S.h))
        t.drop(e)
        e = e2
    return e


def embedding_bwd(t: Tape, S: Shape, g: str | None, trainable: bool, tied: bool) -> None:
    """embedding_dense_backward writes a dense V x h gradient; with tied weights AccumulateGrad adds it to
    the lm_head's .grad out of place (.grad + new, then the old .grad goes): for a moment the weight has
    three V x h gradients (fake-tensor trace of tied Llama full fine-tuning at 16 tokens, where this is
    the backward peak: 2 x the weight dtype x V x h of temporaries)."""
    leaf = getattr(t, "cache_leaf", None)
    if leaf is not None:  # backward reaches the leaf: its .grad, then the graph lets go of it
        lg = t.new("embeds_leaf_grad", tk(S.cr * S.h))
        t.drop(lg, leaf)
        t.cache_leaf = None
    if g is not None and trainable:
        if tied:  # the dense result and the sum that replaces the lm_head's .grad (same size)
            dense = t.new("embed_grad", const(S.w * S.vocab * S.h))
            total = t.new("grad_sum", const(S.w * S.vocab * S.h * S.grad_scale))
            t.drop(dense, total)
        else:
            pgrad(t, S, S.w * S.vocab * S.h)
    t.drop(g)


def rotary_fwd(t: Tape, S: Shape) -> tuple[str, str]:
    """cos and sin (1, s, head_dim) in the embeddings' dtype (position_ids is (1, s) for an unpadded
    batch), shared by every layer's rotary; Gemma 3 computes a pair per layer type, OLMo-2 keeps fp32."""
    b = (4 if S.rope_fp32 else S.cr) * S.rope_pairs
    return t.new("cos", Lin(seq=float(b * S.head_dim))), t.new("sin", Lin(seq=float(b * S.head_dim)))


def eager_mask(S: Shape) -> Lin:
    """The 4-D additive mask eager attention gets (b, 1, s, s) in the embeddings' dtype; Gemma-2/3 build
    a full and a sliding-window mask."""
    return Lin(tok_s=float(S.cr * S.eager_masks))
