"""The torch side the planner's generic path asks (planner.model.generic.TorchSide), installed by `import runner`.

Each method imports torch only when called, so installing it costs nothing; a missing package surfaces as
ImportError, which the planner turns into one install message.
"""

from __future__ import annotations

from typing import Any


class RunnerSide:
    def check(self) -> None:
        import runner.generic  # noqa: F401 - torch, transformers and peft, or ImportError

    def inspect_config(self, config: dict[str, Any], *, where: str, trust_remote_code: bool,
                       source_dir: str | None) -> dict[str, Any]:
        from runner.generic import inspect_config

        return inspect_config(config, where=where, trust_remote_code=trust_remote_code, source_dir=source_dir)

    def fit_activations(self, config: dict[str, Any], facts, key: dict[str, Any]) -> dict[str, Any]:
        from runner.generic_trace import fit_activations

        return fit_activations(config, facts, key)

    def vision_facts(self, config: dict[str, Any], *, where: str) -> dict[str, Any]:
        from runner.generic import vision_facts

        return vision_facts(config, where=where)
