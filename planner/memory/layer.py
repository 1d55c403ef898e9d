"""One decoder layer (attention + gated MLP + norms) forward and backward on a Tape.

See planner.memory.recipes for the conventions. `LayerRun` carries what the forward saved so that the
backward can release it in the order autograd does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.memory.ops import Saved, sq, tk
from planner.memory.recipes import linear_bwd, linear_fwd, norm_bwd, norm_fwd
from planner.memory.shape import Shape
from planner.memory.tape import Tape


@dataclass
class LayerRun:
    saved: dict[str, Saved] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    keep: str | None = None  # a tensor the layer's forward holds in a local until it returns


def _rope_fwd(t: Tape, n: int, c: int, x: str, rc: int) -> str:
    # (x * cos) + (rotate_half(x) * sin); rotate_half = cat(-x2, x1). cos/sin are held globally; the
    # products have dtype rc (fp32 under autocast: type promotion with fp32 cos/sin).
    a = t.new("x_cos", tk(rc * n))
    neg = t.new("neg", tk(c * n / 2))
    cat = t.new("rot", tk(c * n))
    t.drop(neg)
    b = t.new("rot_sin", tk(rc * n))
    t.drop(cat)
    out = t.new("rope_out", tk(rc * n))
    t.drop(a, b, x)
    return out


def _rope_bwd(t: Tape, n: int, c: int, g: str) -> str:
    # grad * cos + rotate_half^T(grad * sin): mul, neg of a half, two slice_backward, adds
    gs = t.new("g_sin", tk(c * n))
    neg = t.new("g_neg", tk(c * n / 2))
    s1 = t.new("g_slice1", tk(c * n))
    s2 = t.new("g_slice2", tk(c * n))
    t.drop(neg)
    rs = t.new("g_rot", tk(c * n))
    t.drop(s1, s2, gs)
    gc = t.new("g_cos", tk(c * n))
    out = t.new("g_rope_in", tk(c * n))
    t.drop(rs, gc, g)
    return out


def attention_fwd(t: Tape, S: Shape, run: LayerRun, x: str, x_dtype: int, x_rg: bool, wt: bool,
                  save: bool) -> str:
    """Projections, rotary, attention core, o_proj. Returns the o_proj output key."""
    c, H = S.c, S.heads
    projs = S.attn_projs
    outs = []
    for p in projs[:-1]:
        y, sv, cb = linear_fwd(t, S, p, x, x_dtype, x_rg, wt, save)
        run.saved[p.role], run.dtypes[p.role] = sv, cb
        outs.append(y)
    if len(outs) == 1:  # fused qkv: q, k, v are views of one output, which lives while any of them does
        qh = kh = vh = outs[0]
        t.hold(qh, qh)
    else:
        qh, kh, vh = outs
    if S.qk_norm:  # Qwen3: q_norm / k_norm over head_dim (saved like any RMSNorm), then the rotary
        qrg = x_rg or wt or projs[0].lora
        krg = x_rg or wt or projs[1].lora
        # OLMo-2 normalizes the whole projection (one row per token), Qwen3 / Gemma-3 each head
        qrows, krows = (1, 1) if S.qk_norm_full else (H, S.kv_heads)
        qn, run.saved["q_norm"] = norm_fwd(t, S, qh, c, qrg, wt, save, width=S.q, rows=qrows)
        kn, run.saved["k_norm"] = norm_fwd(t, S, kh, c, krg, wt, save, width=S.kv, rows=krows)
        t.drop(qh, kh)
        qh, kh = qn, kn
        run.dtypes["q_rg"], run.dtypes["k_rg"] = int(qrg), int(krg)
    # under autocast, q * cos promotes to the fp32 of cos/sin (computed in the embeddings' dtype);
    # OLMo-2 keeps cos/sin in fp32 and casts the rotated q/k back (`q_embed.to(q_type)`)
    rc = 4 if S.amp or S.rope_fp32 else c
    qr = _rope_fwd(t, S.q, c, qh, rc)
    kr = _rope_fwd(t, S.kv, c, kh, rc)
    if S.rope_fp32:
        q16, k16 = t.new("q_cast", tk(c * S.q)), t.new("k_cast", tk(c * S.kv))
        t.drop(qr, kr)
        qr, kr = q16, k16
    core = Saved()
    # autograd records the attention only when q, k or v requires grad
    core_rg = x_rg or wt or any(p.lora for p in projs[:-1])
    run.dtypes["core_rg"] = int(core_rg)
    save_core = save and core_rg
    if S.attn in ("eager", "math"):  # math: CUDA SDPA's fallback kernel (shape.sdpa_falls_back_to_math)
        grouped = S.kv_heads < H
        if grouped:  # repeat_kv materializes k and v at num_heads
            ke = t.new("k_rep", tk(c * S.q))
            ve = t.new("v_rep", tk(c * S.q))
        else:
            ke, ve = kr, vh
            t.hold(ke, ve)
        core.put(t, "q", qr, save_core)
        core.put(t, "k", ke, save_core)
        sc = t.new("scores", sq(c * H))
        sc2 = t.new("scores_scaled", sq(c * H))
        t.drop(sc)
        if S.attn_softcap:  # Gemma-2: tanh(scores / cap) * cap, tanh output saved
            d = t.new("div", sq(c * H))
            t.drop(sc2)
            th = t.new("tanh", sq(c * H))
            core.put(t, "tanh", th, save_core)
            t.drop(d)
            sc2 = t.new("capped", sq(c * H))
            t.drop(th)
        masked = t.new("masked", sq(c * H))
        up = None
        if S.device == "cpu" and c != 4:
            # softmax(x, dtype=float32): the CPU kernel casts the input first; CUDA's _softmax reads 16-bit
            # input directly (half_to_float)
            up = t.new("masked_fp32", sq(4 * H))
        t.drop(sc2)
        sm = t.new("softmax", sq(4 * H))
        core.put(t, "softmax", sm, save_core)
        t.drop(up, masked)
        if c != 4:
            w = t.new("probs", sq(c * H))
            t.drop(sm)
        else:
            w = sm
        core.put(t, "probs", w, save_core)
        core.put(t, "v", ve, save_core)
        o = t.new("attn_out", tk(c * S.q))
        t.drop(ke, ve, qr, kr, vh)
        oc = t.new("attn_out_t", tk(c * S.q))  # transpose(1, 2).contiguous()
        t.drop(o)
        run.keep = w  # attn_weights are returned to the layer (`hidden_states, _ = self.self_attn(...)`)
    else:
        # sdpa / flash: saves q, k, v (at num_kv_heads: GQA inside the kernel), output and fp32 logsumexp.
        # The CPU oracle runs _scaled_dot_product_flash_attention_for_cpu, which saves the same set as
        # CUDA flash (plus a few bytes of RNG state there). Not modeled: CUDA mem-efficient attention pads
        # the logsumexp to 32 rows. fp32 + GQA on CUDA runs the math kernel: S.attn == "math" above.
        if S.amp and not S.rope_fp32:  # autocast casts the fp32 rotary outputs back to the compute dtype
            q16, k16 = t.new("q_cast", tk(c * S.q)), t.new("k_cast", tk(c * S.kv))
            t.drop(qr, kr)
            qr, kr = q16, k16
        oc = t.new("attn_out", tk(c * S.q))
        lse = t.new("lse", tk(4 * H))
        for name, key in (("q", qr), ("k", kr), ("v", vh), ("out", oc), ("lse", lse)):
            core.put(t, name, key, save_core)
        t.drop(lse, qr, kr, vh)
    run.saved["core"] = core
    o_proj = projs[-1]
    y, sv, cb = linear_fwd(t, S, o_proj, oc, c, core_rg, wt, save)
    run.saved["o"], run.dtypes["o"] = sv, cb
    t.drop(oc)
    return y


def attention_bwd(t: Tape, S: Shape, run: LayerRun, g: str, x_dtype: int, x_rg: bool, wt: bool) -> str | None:
    c, H = S.c, S.heads
    projs = S.attn_projs
    core_rg = bool(run.dtypes["core_rg"])
    go = linear_bwd(t, S, projs[-1], g, run.saved["o"], c, run.dtypes["o"], core_rg, wt)
    core = run.saved["core"]
    if not core_rg:
        core.release(t)
        return None
    if S.attn in ("eager", "math"):
        gp = t.new("g_probs", sq(c * H))
        gv = t.new("g_v", tk(c * S.q))
        t.drop(go)
        core.release(t, "probs", "v")
        if c != 4:
            g32 = t.new("g_probs32", sq(4 * H))
            t.drop(gp)
            gp = g32
        gm = t.new("g_masked", sq(4 * H))
        if S.attn == "math":
            # one more fp32 s x s x heads tensor in the softmax backward than eager's recipe has: fitted to
            # the H200 measurements of Llama-3.1-8B QLoRA (peft upcast), 3,312-12,288 tokens, where the
            # gap to the eager recipe was 124.7 +- 0.3 bytes per token^2 = 3.9 bytes per head element
            extra = t.new("math_softmax_bwd_extra", sq(4 * H))
            t.drop(extra)
        t.drop(gp)
        core.release(t, "softmax")
        if c != 4:
            g16 = t.new("g_masked16", sq(c * H))
            t.drop(gm)
            gm = g16
        if S.attn_softcap:
            for step in ("g_cap", "g_tanh", "g_div"):
                nxt = t.new(step, sq(c * H))
                t.drop(gm)
                gm = nxt
            core.release(t, "tanh")
        gsc = t.new("g_scores", sq(c * H))
        t.drop(gm)
        gq = t.new("g_q", tk(c * S.q))
        gk = t.new("g_k", tk(c * S.q))
        t.drop(gsc)
        core.release(t)
        if S.kv_heads < H:
            gk2 = t.new("g_k_sum", tk(c * S.kv))
            gv2 = t.new("g_v_sum", tk(c * S.kv))
            t.drop(gk, gv)
            gk, gv = gk2, gv2
    else:
        gq = t.new("g_q", tk(c * S.q))
        gk = t.new("g_k", tk(c * S.kv))
        gv = t.new("g_v", tk(c * S.kv))
        t.drop(go)
        core.release(t)
    rope32 = S.amp or S.rope_fp32
    if rope32:  # back through the casts to the fp32 rotary outputs
        gq32, gk32 = t.new("g_q32", tk(4 * S.q)), t.new("g_k32", tk(4 * S.kv))
        t.drop(gq, gk)
        gq, gk = gq32, gk32
    rc = 4 if rope32 else c
    gk = _rope_bwd(t, S.kv, rc, gk)
    gq = _rope_bwd(t, S.q, rc, gq)
    if rope32:
        gq16, gk16 = t.new("g_q16", tk(c * S.q)), t.new("g_k16", tk(c * S.kv))
        t.drop(gq, gk)
        gq, gk = gq16, gk16
    if S.qk_norm:
        qrows, krows = (1, 1) if S.qk_norm_full else (H, S.kv_heads)
        gq = norm_bwd(t, S, gq, run.saved["q_norm"], c, S.cn, bool(run.dtypes["q_rg"]), wt, width=S.q,
                      rows=qrows)
        gk = norm_bwd(t, S, gk, run.saved["k_norm"], c, S.cn, bool(run.dtypes["k_rg"]), wt, width=S.kv,
                      rows=krows)
    grads = []
    if len(projs) == 2:  # fused qkv: one gradient of the fused output (cat of the three)
        gqkv = t.new("g_qkv", tk(c * (S.q + 2 * S.kv)))
        t.drop(gq, gk, gv)
        gx = linear_bwd(t, S, projs[0], gqkv, run.saved[projs[0].role], x_dtype, run.dtypes[projs[0].role],
                        x_rg, wt)
        return gx
    # the engine runs v_proj, k_proj, q_proj backward in that order, summing into the input's grad
    for p, gp_ in ((projs[2], gv), (projs[1], gk), (projs[0], gq)):
        gi = linear_bwd(t, S, p, gp_, run.saved[p.role], x_dtype, run.dtypes[p.role], x_rg, wt)
        grads.append(gi)
        if len(grads) == 2 and grads[0] is not None:
            s = t.new("g_acc", tk(x_dtype * S.h))
            t.drop(*grads)
            grads = [s]
    return grads[0] if grads else None


def mlp_fwd(t: Tape, S: Shape, run: LayerRun, x: str, x_dtype: int, x_rg: bool, wt: bool, save: bool) -> str:
    c, i = S.c, S.i
    projs = S.mlp_projs
    act_sv, mul_sv = Saved(), Saved()
    m_rg = x_rg or wt or any(p.lora for p in projs[:-1])  # gate/up outputs require grad
    run.dtypes["m_rg"] = int(m_rg)
    save_m = save and m_rg
    if S.fused_gate_up:
        gu, sv, cb = linear_fwd(t, S, projs[0], x, x_dtype, x_rg, wt, save)
        run.saved["gate_up"], run.dtypes["gate_up"] = sv, cb
        gate = up = gu
        t.hold(gu)
    else:
        gate, sv, cb = linear_fwd(t, S, projs[0], x, x_dtype, x_rg, wt, save)
        run.saved["gate"], run.dtypes["gate"] = sv, cb
    if S.liger:  # LigerSiLUMulFunction: saves a and b, recomputes silu in backward
        if not S.fused_gate_up:
            up, sv, cb = linear_fwd(t, S, projs[1], x, x_dtype, x_rg, wt, save)
            run.saved["up"], run.dtypes["up"] = sv, cb
        m = t.new("swiglu", tk(c * i))
        mul_sv.put(t, "gate", gate, save_m)
        mul_sv.put(t, "up", up, save_m)
        t.drop(gate, up)
    else:
        act = t.new("act", tk(c * i))
        act_sv.put(t, "in", gate, save_m)
        t.drop(gate)
        if not S.fused_gate_up:
            up, sv, cb = linear_fwd(t, S, projs[1], x, x_dtype, x_rg, wt, save)
            run.saved["up"], run.dtypes["up"] = sv, cb
        m = t.new("act_mul", tk(c * i))
        mul_sv.put(t, "act", act, save_m)
        mul_sv.put(t, "up", up, save_m)
        t.drop(act, up)
    run.saved["act"], run.saved["mul"] = act_sv, mul_sv
    y, sv, cb = linear_fwd(t, S, projs[-1], m, c, m_rg, wt, save)
    run.saved["down"], run.dtypes["down"] = sv, cb
    t.drop(m)
    return y


def mlp_bwd(t: Tape, S: Shape, run: LayerRun, g: str, x_dtype: int, x_rg: bool, wt: bool) -> str | None:
    c, i = S.c, S.i
    projs = S.mlp_projs
    m_rg = bool(run.dtypes["m_rg"])
    gm = linear_bwd(t, S, projs[-1], g, run.saved["down"], c, run.dtypes["down"], m_rg, wt)
    if not m_rg:
        run.saved["mul"].release(t)
        run.saved["act"].release(t)
        return None
    if S.liger:  # one kernel writes d(gate) and d(up) (recomputing silu in registers)
        ga = t.new("g_gate", tk(c * i))
        gu = t.new("g_up", tk(c * i))
        t.drop(gm)
        run.saved["mul"].release(t)
    else:
        ga = t.new("g_act", tk(c * i))
        gu = t.new("g_up", tk(c * i))
        t.drop(gm)
        run.saved["mul"].release(t)
    if S.fused_gate_up:
        if not S.liger:
            g2 = t.new("g_gate", tk(c * i))
            t.drop(ga)
            run.saved["act"].release(t)
            ga = g2
        gcat = t.new("g_gate_up", tk(2 * c * i))
        t.drop(ga, gu)
        return linear_bwd(t, S, projs[0], gcat, run.saved["gate_up"], x_dtype, run.dtypes["gate_up"], x_rg, wt)
    gx_up = linear_bwd(t, S, projs[1], gu, run.saved["up"], x_dtype, run.dtypes["up"], x_rg, wt)
    if not S.liger:
        g2 = t.new("g_gate", tk(c * i))  # silu_backward / gelu_backward
        t.drop(ga)
        run.saved["act"].release(t)
        ga = g2
    gx_gate = linear_bwd(t, S, projs[0], ga, run.saved["gate"], x_dtype, run.dtypes["gate"], x_rg, wt)
    if gx_up is None:
        return None
    gx = t.new("g_mlp_in", tk(x_dtype * S.h))
    t.drop(gx_up, gx_gate)
    return gx


def _proj_in_dtype(S: Shape) -> int:
    """Dtype of what the projections read: a Llama norm's output (S.cn), a Gemma/OLMo norm's output
    (type_as its input: the residual stream), or the residual stream itself (OLMo-2: no input norms)."""
    return S.cn if S.pre_norms and not (S.gemma or S.olmo_norm) else S.cr


def _branch_out(t: Tape, S: Shape, run: LayerRun, y: str, y_rg: bool, wt: bool, save: bool, name: str) -> str:
    """What a branch adds to the residual stream: the post norm (Gemma-2/3, OLMo-2) and Granite's
    residual multiplier (`hidden_states * residual_multiplier`, a new tensor; a scalar saves nothing)."""
    if S.post_norms:
        p, run.saved[name] = norm_fwd(t, S, y, S.c, y_rg, wt, save)
        t.drop(y)
        y = p
    if S.multipliers:
        m = t.new("resid_scaled", tk(S.c * S.h))
        t.drop(y)
        y = m
    return y


def _branch_bwd(t: Tape, S: Shape, run: LayerRun, g: str, y_rg: bool, wt: bool, name: str) -> str | None:
    """Backward of _branch_out: consumes g (the residual's gradient, held by the caller)."""
    if S.multipliers:
        gm = t.new("g_resid_scaled", tk(S.cr * S.h))
        t.drop(g)
        g = gm
    if S.post_norms:
        g = norm_bwd(t, S, g, run.saved[name], S.c, S.c, y_rg, wt)
    return g


def layer_fwd(t: Tape, S: Shape, x: str, x_rg: bool, wt: bool, save: bool) -> tuple[str, LayerRun]:
    """Decoder layer forward from input x (residual dtype). Returns (output key, run).

    Requires-grad flows as autograd sees it: a norm's output needs grad when its input or weight does,
    a projection's output when its input does, its weight trains or a LoRA adapter wraps it."""
    run = LayerRun()
    rg = run.dtypes
    cr = S.cr
    xd = _proj_in_dtype(S)
    if S.pre_norms:
        n1, run.saved["ln1"] = norm_fwd(t, S, x, cr, x_rg, wt, save)
        rg["n1_rg"] = int(x_rg or wt)
    else:  # OLMo-2: attention reads the residual stream
        n1 = x
        t.hold(n1)
        rg["n1_rg"] = int(x_rg)
    a = attention_fwd(t, S, run, n1, xd, bool(rg["n1_rg"]), wt, save)
    t.drop(n1)
    a_rg = bool(rg["core_rg"]) or S.attn_projs[-1].lora or wt
    a = _branch_out(t, S, run, a, a_rg, wt, save, "ln_post_attn")
    rg["a_rg"] = int(a_rg)
    h1 = t.new("resid1", tk(cr * S.h))
    t.drop(a)
    rg["h1_rg"] = int(x_rg or a_rg)
    if S.pre_norms:
        n2, run.saved["ln2"] = norm_fwd(t, S, h1, cr, bool(rg["h1_rg"]), wt, save)
        m_in_rg = bool(rg["h1_rg"]) or wt
    else:
        n2 = h1
        t.hold(n2)
        m_in_rg = bool(rg["h1_rg"])
    rg["m_in_rg"] = int(m_in_rg)
    m = mlp_fwd(t, S, run, n2, xd, m_in_rg, wt, save)
    t.drop(n2)
    rg["mo_rg"] = int(bool(rg["m_rg"]) or S.mlp_projs[-1].lora or wt)
    m = _branch_out(t, S, run, m, bool(rg["mo_rg"]), wt, save, "ln_post_ff")
    out = t.new("resid2", tk(cr * S.h))
    t.drop(m, h1, run.keep)
    return out, run


def layer_bwd(t: Tape, S: Shape, run: LayerRun, g: str, x_rg: bool, wt: bool) -> str | None:
    """Backward of layer_fwd; consumes g (the output's gradient). Returns the input's gradient."""
    cr = S.cr
    rg = run.dtypes
    xd = _proj_in_dtype(S)
    t.hold(g)  # the residual path passes g on while the MLP branch runs
    gb = _branch_bwd(t, S, run, g, bool(rg["mo_rg"]), wt, "ln_post_ff")
    gm = mlp_bwd(t, S, run, gb, xd, bool(rg["m_in_rg"]), wt)
    if S.pre_norms:
        gn2 = norm_bwd(t, S, gm, run.saved["ln2"], cr, xd, bool(rg["h1_rg"]), wt)
    else:
        gn2 = gm
    if gn2 is not None:  # two gradients reach h1: summed out of place
        gh1 = t.new("g_resid1", tk(cr * S.h))
        t.drop(gn2, g)
    else:
        gh1 = g
    t.hold(gh1)
    ga = _branch_bwd(t, S, run, gh1, bool(rg["a_rg"]), wt, "ln_post_attn")
    gx1 = attention_bwd(t, S, run, ga, xd, bool(rg["n1_rg"]), wt)
    if S.pre_norms:
        gx = norm_bwd(t, S, gx1, run.saved["ln1"], cr, xd, x_rg, wt)
    else:
        gx = gx1
    if not x_rg:
        t.drop(gx, gh1)
        return None
    if gx is None:
        return gh1
    out = t.new("g_layer_in", tk(cr * S.h))
    t.drop(gx, gh1)
    return out
