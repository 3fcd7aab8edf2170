"""Test harness only: let accelerate run FSDP on CPU processes, so the FSDP path of recover runs here.

accelerate 1.x builds the FSDP plugin from the launch configuration but selects
``DistributedType.FSDP`` only on accelerator devices (``AcceleratorState.__init__``
sets it in its ``MULTI_GPU`` / ``MULTI_XPU`` / ... branch, never for ``MULTI_CPU``),
so a CPU launch trains as DDP. torch's FSDP1 and FSDP2 themselves run on CPU with
gloo. With ``DEPGRAPH_TEST_CPU_FSDP=1`` this file, put on ``PYTHONPATH`` by the
test, changes two things after accelerate has set its state up: the distributed
type becomes FSDP (with the plugin accelerate built), and the device becomes plain
``cpu`` (accelerate's ``cpu:N`` fails FSDP1's device check against CPU parameters).
Everything else (the wrapping, the sharded steps, ``get_state_dict``) is
accelerate's and torch's own. It prints ``cpu-fsdp: prepared <class>`` for each
prepared model so the test can see the wrapping happened.
"""

import os
import sys

if os.environ.get("DEPGRAPH_TEST_CPU_FSDP") == "1":
    import torch
    from accelerate import Accelerator
    from accelerate import state as _state
    from accelerate.utils import DistributedType

    _init = _state.AcceleratorState.__init__
    _prepare = Accelerator.prepare

    def _init_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            # PartialState's shared dict is copied into every later AcceleratorState: change both
            _state.PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
            _state.PartialState._shared_state["device"] = self.device = torch.device("cpu")
            self.fsdp_plugin = fsdp_plugin

    def _prepare_reported(self, *args, **kwargs):
        prepared = _prepare(self, *args, **kwargs)
        for obj in prepared if isinstance(prepared, (tuple, list)) else (prepared,):
            if isinstance(obj, torch.nn.Module):
                print(f"cpu-fsdp: prepared {type(obj).__name__}", file=sys.stderr, flush=True)
        return prepared

    _state.AcceleratorState.__init__ = _init_fsdp_on_cpu
    Accelerator.prepare = _prepare_reported
