"""The scheduler: circuits in, execution plans out, a queue that loses no accepted job.

`compile_circuit` validates a circuit against a device and plans it;
`validate_plan` checks every invariant of a plan; `SchedulerActor` (factory
``actors.scheduler:SchedulerActor``) runs the queue on the message bus.

Its modules, one concept each:

* the actor: `_actor` (its handlers, from submission to a job's end),
  `_config`, `_queue` (the queue, and each job's `JobPhase`), `_plans` (the
  plan cache), `_strategy` (static and dynamic plans), `_limits`;
* the compiler: `_compile` (the steps in order), `_analyse`, `_components`,
  `_pack`, `_assemble`, `_unitary`, `_branches`, with `_ops`; and `_validate`,
  which checks a plan however it was made.
"""

from ._actor import SchedulerActor as SchedulerActor
from ._analyse import analyse as analyse
from ._compile import compile_circuit as compile_circuit
from ._config import SchedulerConfig as SchedulerConfig
from ._limits import Health as Health
from ._limits import Limits as Limits
from ._strategy import Feedback as Feedback
from ._strategy import apply_strategy as apply_strategy
from ._strategy import combined_health as combined_health
from ._validate import PlanInvalid as PlanInvalid
from ._validate import plan_problems as plan_problems
from ._validate import validate_plan as validate_plan

__all__ = [name for name in dir() if not name.startswith("_")]
