"""The executor: runs plans on the device through the HAL, frame by frame, and journals them.

It pulls work from the scheduler (``sched.next_job``). For each job it pins
the calibration version the plan was made with, allocates the job's slots in
the memory actor (`protocol.results`: one histogram per register per phase,
and a journal in the state buffer: phases done, shots done in the current
phase), and for each phase from where the journal says: converts target
phases to volts, sets the heaters, inputs, delay lines and feed-forward rules,
waits for the heaters to settle, and fires the phase's shots in batches. Each
batch is one frame, committed with the journal before the next: after a
crash or ``kill -9`` the job resumes at the first uncommitted batch, nothing
lost and nothing counted twice.

Faults: transient errors (link, timeout, device errors) are retried with
exponential backoff and jitter; a device that keeps failing opens a circuit
breaker that fails new work fast until a probe succeeds; phase and job
timeouts; an interlock fails the job at once; an actor the job needs that
dies interrupts it until the actor is back (decision 0012). Whatever happens,
the job ends completed, cancelled or failed with a reason, its committed
results kept (partial unless completed), and the device is left safe when a
job fails.

Where to read on:

- `_actor.py`: `ExecutorActor`, the work loop, the circuit breaker, abort and status.
- `_run.py`: `JobRun`, one job from allocation to its end, step by step, and
  the interruption and resume protocol.
- `_device.py`: the device as the executor set it (only what differs is
  sent, every change carrying the HAL's state version), and the retry policy.
- `_volts.py`: target phases to heater voltages through the plan's calibration.
- `_faults.py`: how a run stops short (failed, interrupted, not accepted).

Configured in the system file::

    [[actor]]
    name = "executor"
    factory = "actors.executor:ExecutorActor"
    config = { device = "chip", batch_shots = 50000 }
"""

from ._actor import ExecutorActor as ExecutorActor
from ._config import ExecutorConfig as ExecutorConfig

__all__ = [name for name in dir() if not name.startswith("_")]
