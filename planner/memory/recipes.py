"""What one decoder layer allocates, saves and frees in forward and backward, replayed on a Tape.

Each recipe follows the transformers 5 modeling code (models/llama, qwen2, gemma2: RMSNorm, rotary,
eager_attention_forward / sdpa_attention_forward, gated MLP), peft's LoRA Linear.forward
(tuners/lora/layer.py: the input is cast to the adapter dtype, `result + lora_B(lora_A(dropout(x))) *
scaling`, cast back) and PyTorch autograd's rules: a node saves an input only when the gradient of
another input needs it, saved tensors are released right after the node's backward, and a gradient
arriving from two consumers is summed out of place. Sizes are bytes per token (`Lin.tok`) or per token
per position (`Lin.tok_s`, eager attention scores); parameter gradients are constants (`Lin.const`).
Checked op by op against the tensor-accounting oracle (tests/runner/test_gates.py).
"""

from __future__ import annotations

from planner.memory.dora import dora_bwd, dora_fwd
from planner.memory.ops import Saved, const, pgrad, tk
from planner.memory.shape import Proj, Shape
from planner.memory.tape import Tape

# --- RMSNorm ---------------------------------------------------------------------------------------

def norm_fwd(t: Tape, S: Shape, x: str, x_dtype: int, x_rg: bool, wt: bool, save: bool,
             width: int = 0, rows: int = 1) -> tuple[str, Saved]:
    """Llama/Qwen2 RMSNorm (`weight * (x.float() * rsqrt(mean(x^2) + eps)).to(dtype)`), or Gemma-2's
    `(x.float() * rsqrt(...) * (1 + weight.float())).type_as(x)`. Returns (output key, saved).
    width/rows: a per-head norm (Qwen3 q_norm/k_norm) normalizes `rows` vectors of `width` per token."""
    h, sv = width or S.h, Saved()
    if S.liger:  # liger_kernel.ops.rms_norm: saves X (no copy) and fp32 rstd per row; Y is the only output
        out = t.new("norm_out", tk(x_dtype * h))
        sv.put(t, "x", x, save and (x_rg or wt))
        r = t.new("rstd", tk(4 * rows))
        sv.put(t, "rstd", r, save and (x_rg or wt))
        t.drop(r)
        return out, sv
    if x_dtype != 4:
        x32 = t.new("x32", tk(4 * h))
    else:
        x32 = x
        t.hold(x32)
    sqr = t.new("sq", tk(4 * h))
    var = t.new("var", tk(4 * rows))
    t.drop(sqr)
    ve = t.new("var_eps", tk(4 * rows))
    t.drop(var)
    r = t.new("rstd", tk(4 * rows))
    t.drop(ve)
    n = t.new("normed", tk(4 * h))
    sv.put(t, "x32", x32, save and x_rg)
    sv.put(t, "rstd", r, save and x_rg)
    t.drop(r, x32)
    if S.gemma or S.olmo_norm:
        # Gemma: x_hat * (1.0 + self.weight.float()), the (1 + w) copy saved by the mul; OLMo-2:
        # self.weight * x_hat, promoted to fp32 (the weight itself is saved: no new tensor)
        scale = t.new("one_plus_w", const(4 * h)) if S.gemma else None
        sv.put(t, "scale", scale, save and x_rg)
        sv.put(t, "normed", n, save and wt)
        y = t.new("scaled", tk(4 * h))
        t.drop(n, scale)
        if x_dtype != 4:
            out = t.new("norm_out", tk(x_dtype * h))
            t.drop(y)
        else:
            out = y
        return out, sv
    if x_dtype != 4:
        n16 = t.new("normed16", tk(x_dtype * h))
        t.drop(n)
    else:
        n16 = n
    out = t.new("norm_out", tk(S.cn * h))
    sv.put(t, "normed", n16, save and wt)
    t.drop(n16)
    return out, sv


def norm_bwd(t: Tape, S: Shape, g: str, sv: Saved, x_dtype: int, out_dtype: int, x_rg: bool,
             wt: bool, width: int = 0, rows: int = 1) -> str | None:
    """Backward of norm_fwd; consumes g, returns the input's gradient (or None)."""
    h = width or S.h
    if g is None:
        sv.release(t)
        return None
    if S.liger:  # one kernel: dX (input dtype) and, if trainable, a per-program fp32 dW partial sum
        if wt:
            pgrad(t, S, S.w * h)
        gx = t.new("g_norm_in", tk(x_dtype * h)) if x_rg else None
        t.drop(g)
        sv.release(t)
        return gx
    if wt:
        tmp = t.new("gw_tmp", tk(out_dtype * h))
        pgrad(t, S, S.w * h)
        t.drop(tmp)
    if S.gemma or S.olmo_norm:
        if x_dtype != 4:
            g_in = t.new("g32", tk(4 * h))  # .type_as(x) / .to(dtype) backward
            t.drop(g)
        else:
            g_in = g
        gn = t.new("g_normed", tk(4 * h))  # * (1 + w)
        t.drop(g_in)
        sv.release(t, "scale", "normed")
    else:
        gn = t.new("g_normed", tk(out_dtype * h))  # weight * n16 backward
        t.drop(g)
        sv.release(t, "normed")
        if out_dtype != 4 and x_rg:
            g32 = t.new("g32", tk(4 * h))  # .to(input_dtype) backward
            t.drop(gn)
            gn = g32
    if not x_rg:
        t.drop(gn)
        sv.release(t)
        return None
    # x32 * rstd backward: d(x32) = g * rstd; d(rstd) = sum(g * x32)
    gxa = t.new("g_x32_a", tk(4 * h))
    tmp = t.new("g_x_r", tk(4 * h))
    gr = t.new("g_rstd", tk(4 * rows))
    t.drop(tmp, gn)
    # rsqrt, add, mean backward (per-row scalars), then pow backward: grad * 2 * x32.pow(1)
    r3 = t.new("r3", tk(4 * rows))
    gve = t.new("g_var", tk(4 * rows))
    t.drop(r3, gr)
    sv.release(t, "rstd")
    gsq = t.new("g_sq", tk(4 * h))
    t.drop(gve)
    # pow_backward is one C++ expression, grad * (self.pow(1) * 2): both temporaries live until the
    # product exists (fake-tensor trace of OLMo-2's post-norm backward, where it sets the peak)
    p1 = t.new("x_pow1", tk(4 * h))
    two = t.new("x_times2", tk(4 * h))
    gpow = t.new("g_pow", tk(4 * h))
    t.drop(p1, two, gsq)
    gx32 = t.new("g_x32", tk(4 * h))
    t.drop(gxa, gpow)
    sv.release(t)
    if x_dtype != 4:
        gx = t.new("g_norm_in", tk(x_dtype * h))
        t.drop(gx32)
        return gx
    return gx32


# --- Linear (optionally LoRA-wrapped) --------------------------------------------------------------

def linear_fwd(t: Tape, S: Shape, p: Proj, x: str, x_dtype: int, x_rg: bool, wt: bool,
               save: bool) -> tuple[str, Saved, int]:
    """nn.Linear or peft lora.Linear. Returns (output key, saved, output dtype bytes)."""
    if S.amp:
        return _amp_linear_fwd(t, S, p, x, x_dtype, x_rg, wt, save)
    sv = Saved()
    cb = x_dtype if x_dtype == 4 and S.c == 4 else S.c
    y = t.new("y", tk(cb * p.n_out))
    sv.put(t, "x", x, save and wt)
    if not p.lora:
        return y, sv, cb
    a = S.a
    if x_dtype != a:
        xa = t.new("x_cast", tk(a * p.n_in))
    else:
        xa = x
        t.hold(xa)
    if S.dropout:
        if S.device == "cpu":  # at::dropout on CPU: input * (bernoulli noise / (1 - p)), noise saved
            m = t.new("noise", tk(a * p.n_in))
            xd = t.new("x_drop", tk(a * p.n_in))
        else:  # native_dropout: output and a bool mask
            xd = t.new("x_drop", tk(a * p.n_in))
            m = t.new("mask", tk(1 * p.n_in))
        sv.put(t, "mask", m, save and x_rg)
        t.drop(m, xa)
        xa = xd
    if S.dora:
        s = dora_fwd(t, S, p, y, xa, sv, save)
        out = t.new("lora_out", tk(cb * p.n_out)) if cb != 4 else s
        if cb != 4:
            t.drop(s)
        t.drop(xa)
        return out, sv, cb
    la = t.new("lora_a_out", tk(a * S.rank))
    sv.put(t, "xa", xa, save)
    lb = t.new("lora_b_out", tk(a * p.n_out))
    sv.put(t, "la", la, save)
    t.drop(la)
    sc = t.new("scaled", tk(a * p.n_out))
    t.drop(lb)
    pr = max(cb, a)
    s = t.new("sum", tk(pr * p.n_out))
    t.drop(y, sc)
    if pr != cb:
        out = t.new("lora_out", tk(cb * p.n_out))
        t.drop(s)
    else:
        out = s
    t.drop(xa)
    return out, sv, cb


def linear_bwd(t: Tape, S: Shape, p: Proj, g: str, sv: Saved, x_dtype: int, cb: int, x_rg: bool,
               wt: bool) -> str | None:
    """Backward of linear_fwd; consumes g."""
    if S.amp:
        return _amp_linear_bwd(t, S, p, g, sv, x_dtype, x_rg, wt)
    if not p.lora:
        if wt:
            pgrad(t, S, S.w * p.weight_numel)
        gx = t.new("g_lin_in", tk(x_dtype * p.n_in)) if x_rg else None
        t.drop(g)
        sv.release(t)
        return gx
    a, pr = S.a, max(cb, S.a)
    if S.dora:
        g32 = t.new("g_sum", tk(4 * p.n_out)) if cb != 4 else g
        if cb != 4:
            t.drop(g)
        gy, ga = dora_bwd(t, S, p, g32, sv, cb)
        return _lora_a_and_base_bwd(t, S, p, gy, ga, sv, x_dtype, x_rg, wt)
    if pr != cb:
        g32 = t.new("g_sum", tk(pr * p.n_out))  # .to(torch_result_dtype) backward
        t.drop(g)
        gy = t.new("g_base", tk(cb * p.n_out))  # add backward: base branch back to its dtype
    else:
        g32 = gy = g
        t.hold(gy)
    gs = t.new("g_scaled", tk(a * p.n_out))  # * scaling backward
    t.drop(g32)
    pgrad(t, S, a * S.rank * p.n_out)
    ga = t.new("g_lora_a_out", tk(a * S.rank))
    t.drop(gs)
    sv.release(t, "la")
    return _lora_a_and_base_bwd(t, S, p, gy, ga, sv, x_dtype, x_rg, wt)


def _lora_a_and_base_bwd(t: Tape, S: Shape, p: Proj, gy: str, ga: str, sv: Saved, x_dtype: int, x_rg: bool,
                         wt: bool) -> str | None:
    a = S.a
    pgrad(t, S, a * S.rank * p.n_in)
    gxa = t.new("g_lora_in", tk(a * p.n_in)) if x_rg else None
    t.drop(ga)
    sv.release(t, "xa")
    if gxa is not None:
        if S.dropout:
            gd = t.new("g_drop", tk(a * p.n_in))
            t.drop(gxa)
            gxa = gd
        sv.release(t, "mask")
        if x_dtype != a:
            gc = t.new("g_cast", tk(x_dtype * p.n_in))
            t.drop(gxa)
            gxa = gc
    if wt:
        pgrad(t, S, S.w * p.weight_numel)
    gb = t.new("g_lin_in", tk(x_dtype * p.n_in)) if x_rg else None
    t.drop(gy)
    sv.release(t)
    if not x_rg:
        return None
    gx = t.new("g_lin_sum", tk(x_dtype * p.n_in))
    t.drop(gxa, gb)
    return gx


# --- torch.autocast over fp32 weights ----------------------------------------------------------------

def _autocast_mm(t: Tape, S: Shape, sv: Saved, tag: str, x: str, x_dtype: int, n_in: int, n_out: int,
                 w_rg: bool, x_rg: bool, save: bool, w_numel: int = 0) -> str:
    """One autocast linear: casts the input and the weight to the autocast dtype (a weight that requires
    grad is cast once per forward and cached; a frozen one on every call) and saves what its backward
    needs: the cast input for the weight's gradient, the cast weight for the input's gradient."""
    c = S.c
    if x_dtype != c:
        xc = t.new(f"{tag}_x_cast", tk(c * n_in))
    else:
        xc = x
        t.hold(xc)
    wc = t.new(f"{tag}_w_cast", const(c * (w_numel or n_in * n_out)))
    if w_rg:  # autocast's weight cache keeps the cast of a leaf that requires grad until the region exits
        t.hold(wc)
        t.cache.append(wc)
    y = t.new(f"{tag}_out", tk(c * n_out))
    sv.put(t, f"{tag}_x", xc, save and w_rg)
    sv.put(t, f"{tag}_w", wc, save and x_rg)
    t.drop(xc, wc)
    return y


def _amp_linear_fwd(t: Tape, S: Shape, p: Proj, x: str, x_dtype: int, x_rg: bool, wt: bool,
                    save: bool) -> tuple[str, Saved, int]:
    sv = Saved()
    c = S.c
    y = _autocast_mm(t, S, sv, "base", x, x_dtype, p.n_in, p.n_out, wt, x_rg, save, p.weight_numel)
    if not p.lora:
        return y, sv, c
    if x_dtype != S.a:  # peft casts the input to the fp32 adapter dtype first
        xa = t.new("x_cast", tk(S.a * p.n_in))
    else:
        xa = x
        t.hold(xa)
    la = _autocast_mm(t, S, sv, "lora_a", xa, S.a, p.n_in, S.rank, True, x_rg, save)
    t.drop(xa)
    lb = _autocast_mm(t, S, sv, "lora_b", la, c, S.rank, p.n_out, True, True, save)
    t.drop(la)
    sc = t.new("scaled", tk(c * p.n_out))
    t.drop(lb)
    out = t.new("sum", tk(c * p.n_out))
    t.drop(y, sc)
    return out, sv, c


def _amp_mm_bwd(t: Tape, S: Shape, sv: Saved, tag: str, g: str, x_dtype: int, n_in: int, n_out: int,
                w_rg: bool, x_rg: bool, w_numel: int = 0) -> str | None:
    c = S.c
    if w_rg:  # grad of the cast weight, then back to the fp32 parameter's dtype
        numel = w_numel or n_in * n_out
        gw = t.new(f"{tag}_gw", const(c * numel))
        pgrad(t, S, 4 * numel)
        t.drop(gw)
    gx = t.new(f"{tag}_gx", tk(c * n_in)) if x_rg else None
    t.drop(g)
    sv.release(t, f"{tag}_x", f"{tag}_w")
    if gx is not None and x_dtype != c:
        g32 = t.new(f"{tag}_gx32", tk(x_dtype * n_in))
        t.drop(gx)
        gx = g32
    return gx


def _amp_linear_bwd(t: Tape, S: Shape, p: Proj, g: str, sv: Saved, x_dtype: int, x_rg: bool,
                    wt: bool) -> str | None:
    if not p.lora:
        return _amp_mm_bwd(t, S, sv, "base", g, x_dtype, p.n_in, p.n_out, wt, x_rg, p.weight_numel)
    c = S.c
    gs = t.new("g_scaled", tk(c * p.n_out))  # the sum passes g on to the base branch too
    ga = _amp_mm_bwd(t, S, sv, "lora_b", gs, c, S.rank, p.n_out, True, True)
    gxa = _amp_mm_bwd(t, S, sv, "lora_a", ga, S.a, p.n_in, S.rank, True, x_rg)
    if gxa is not None and x_dtype != S.a:
        gc = t.new("g_cast", tk(x_dtype * p.n_in))
        t.drop(gxa)
        gxa = gc
    gb = _amp_mm_bwd(t, S, sv, "base", g, x_dtype, p.n_in, p.n_out, wt, x_rg, p.weight_numel)
    if gb is None:
        return None
    gx = t.new("g_lin_sum", tk(x_dtype * p.n_in))
    t.drop(gxa, gb)
    return gx
