"""DoRA (peft tuners/lora/dora.py DoraLinearLayer.forward, variants.py DoraLinearVariant) on a Tape.

Per call it rebuilds the adapter's dense weight through `lora_B(lora_A(eye(in)))` and the column norm
of `W + scaling * BA` in fp32 (in x in and out x in temporaries, independent of the batch), then
`(m / ||W + sBA|| - 1) * base_result + m / ||.|| * lora_B(lora_A(x)) * scaling`, which keeps the base
result and the LoRA result for the magnitude's gradient.
"""

from __future__ import annotations

from planner.memory.ops import Saved, const, pgrad, tk
from planner.memory.shape import Proj, Shape
from planner.memory.tape import Tape


def dora_fwd(t: Tape, S: Shape, p: Proj, y: str, xa: str, sv: Saved, save: bool) -> str:
    """Given the base output y (compute dtype) and the adapter input xa, return the fp32 sum
    `result + result_dora`."""
    a, r, n_in, n_out = S.a, S.rank, p.n_in, p.n_out
    eye = t.new("dora_eye", const(a * n_in * n_in))
    ea = t.new("dora_eye_a", const(a * n_in * r))
    lw = t.new("dora_lora_weight", const(a * n_in * n_out))  # its graph keeps eye and ea until it dies
    w32 = t.new("dora_weight", const(a * n_in * n_out))  # weight.to(x.dtype)
    slw = t.new("dora_scaled", const(a * n_in * n_out))
    wsum = t.new("dora_weight_sum", const(a * n_in * n_out))
    t.drop(slw)
    wn = t.new("dora_norm", const(a * n_out))
    t.drop(wsum)
    mns = t.new("dora_mag_scale", const(a * n_out))
    la = t.new("lora_a_out", tk(a * r))
    sv.put(t, "xa", xa, save)
    lb = t.new("lora_b_out", tk(a * n_out))
    sv.put(t, "la", la, save)
    t.drop(la)
    m1 = t.new("dora_m_minus_1", const(a * n_out))
    t1 = t.new("dora_base_term", tk(a * n_out))
    sv.put(t, "base_result", y, save)
    t2 = t.new("dora_lora_term", tk(a * n_out))
    sv.put(t, "lora_result", lb, save)
    t.drop(lb)
    t3 = t.new("dora_lora_scaled", tk(a * n_out))
    t.drop(t2)
    rd = t.new("dora_result", tk(a * n_out))
    t.drop(t1, t3, m1, mns, wn, w32, lw, ea, eye)
    out = t.new("sum", tk(a * n_out))
    t.drop(rd, y)
    return out


def dora_bwd(t: Tape, S: Shape, p: Proj, g32: str, sv: Saved, cb: int) -> tuple[str, str]:
    """From the fp32 gradient of `result + result_dora`: (gradient of the base output y in its dtype,
    gradient of the LoRA path input xa... returned as the lora_A-output gradient's successor) ->
    returns (g_y, g_lora_a_out)."""
    a, r, n_out = S.a, S.rank, p.n_out
    gy_direct = t.new("g_base", tk(cb * n_out))
    gs = t.new("g_scaled", tk(a * n_out))  # * scaling
    glb = t.new("g_lora_result", tk(a * n_out))  # * m / ||.||
    tmp = t.new("g_mag_tmp", tk(a * n_out))
    t.drop(tmp, gs)
    pgrad(t, S, a * n_out)  # magnitude
    sv.release(t, "lora_result")
    gyt = t.new("g_base_term", tk(a * n_out))  # * (m / ||.|| - 1)
    tmp = t.new("g_m1_tmp", tk(a * n_out))
    t.drop(tmp)
    sv.release(t, "base_result")
    gy16 = t.new("g_base_term16", tk(cb * n_out))
    t.drop(gyt, g32)
    gy = t.new("g_base_sum", tk(cb * n_out))
    t.drop(gy_direct, gy16)
    pgrad(t, S, a * r * n_out)
    ga = t.new("g_lora_a_out", tk(a * r))
    t.drop(glb)
    sv.release(t, "la")
    return gy, ga
