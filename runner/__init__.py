"""vramplan's torch side: building and training models, and measuring what their steps hold.

- runner.build: the one model builder (`--apply`, the oracles, the GPU benchmarks): the model a run trains,
  its batches; runner.quantize its bitsandbytes k-bit weights
- runner.step: one optimizer step as HF Trainer runs it, with phase marks
- runner.accounting: oracle 1, live tensor bytes of real CPU steps by category
- runner.simulate: oracle 2, the same accounting on full-size models with fake tensors

Heavy imports (torch, transformers, peft) happen inside functions: importing runner costs nothing.
"""

from planner.model.generic import use_torch_side as _use_torch_side
from runner.side import RunnerSide as _RunnerSide

# The planner core never imports runner/: this hands it the torch side its generic path asks for.
_use_torch_side(_RunnerSide())
