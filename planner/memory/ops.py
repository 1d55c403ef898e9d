"""The Tape's vocabulary shared by the layer recipes (planner.memory.recipes, head, layer, dora): sizes as
`Lin` terms, a parameter's gradient, and the set of tensors a node saved for backward."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.memory.shape import Shape
from planner.memory.tape import Tape
from planner.memory.terms import Lin


def tk(x: float) -> Lin:
    return Lin(tok=float(x))


def sq(x: float) -> Lin:
    return Lin(tok_s=float(x))


def const(x: float) -> Lin:
    return Lin(const=float(x))


def pgrad(t: Tape, S: Shape, nbytes: float) -> None:
    """A parameter's gradient from backward. ZeRO-2/3 keeps only this rank's partition (`grad_scale`);
    with gradient accumulation the .grad already exists and AccumulateGrad adds the new one in place,
    so it is a transient."""
    key = t.new("pgrad", const(nbytes * S.grad_scale))
    if S.grads_resident:
        t.drop(key)


@dataclass
class Saved:
    """Keys a node (or a module) saved for backward, released together after its backward."""

    keys: dict[str, str | None] = field(default_factory=dict)

    def put(self, tape: Tape, name: str, key: str | None, save: bool = True) -> None:
        if save and key is not None:
            tape.hold(key)
            self.keys[name] = key

    def get(self, name: str) -> str | None:
        return self.keys.get(name)

    def release(self, tape: Tape, *names: str) -> None:
        for n in names or tuple(self.keys):
            tape.drop(self.keys.pop(n, None))
