"""The plan cache: a plan is made once, then found again in memory or in the store.

A plan's id says what it was made from (`PlanTerms.key`: the circuit, the device
as it is and its health, the calibration version, the strategy and the
feedback it used), so the id is the key of the cache and of the stored plans:
a plan made for an earlier job, or by this scheduler before a restart, is
read back, never compiled again. A circuit is compiled where that is
cheapest: a small one at once, a larger one in a thread, the largest in a
worker process.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from protocol import ErrorCode
from protocol.circuit import Circuit, circuit_hash
from protocol.memory import GetPlan, PutPlan
from protocol.photonica import DeviceDescription
from protocol.plan import Plan
from protocol.scheduler import StrategyConfig
from runtime import Actor, RemoteError

from ._compile import compile_circuit, device_key, plan_id
from ._config import SchedulerConfig
from ._limits import Health
from ._ops import count_ops
from ._strategy import Feedback, apply_strategy, combined_health
from ._validate import validate_plan

INLINE_OPS = 200
"""Circuits this small are analysed and compiled in the actor's own task (a millisecond or less)."""


@dataclass(frozen=True, eq=False)
class PlanTerms:
    """What a plan is made for: the device as it is now, its calibration, the strategy and its feedback."""

    device: DeviceDescription
    calibration: int | None
    health: Health
    strategy: StrategyConfig
    feedback: Feedback

    def key(self, circuit: Circuit) -> tuple[str, Health]:
        """The id the circuit's plan has under these terms (the cache's key), and the health it is planned for."""
        health = combined_health(self.health, self.strategy, self.feedback)
        strategy = (
            "static"
            if self.strategy.kind == "static" or self.feedback.empty
            else msgspec.json.encode(self.strategy).decode() + self.feedback.key()
        )
        return plan_id(circuit_hash(circuit), device_key(self.device, health), self.calibration, strategy), health


class PlanCache:
    """The plans made and stored so far, by id; how many were compiled and how many found again.

    Args:
        actor: The scheduler, which asks the memory actor for stored plans and stores new ones.
        config: Where the memory actor is, the device's name, the limits, the worker processes.
    """

    def __init__(self, actor: Actor, config: SchedulerConfig) -> None:
        self._actor = actor
        self._config = config
        self.plans: dict[str, Plan] = {}
        self.stored: set[str] = set()
        """Ids of the plans the store holds."""
        self.compiled = 0
        self.hits = 0
        self._making: dict[str, trio.Event] = {}
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def at_hand(self, circuit: Circuit, terms: PlanTerms) -> Plan | None:
        """The circuit's plan under ``terms`` if it was made and stored before."""
        key, _ = terms.key(circuit)
        return self.plans.get(key) if key in self.stored else None

    async def get(self, circuit: Circuit, terms: PlanTerms) -> tuple[Plan, bool]:
        """The circuit's plan under ``terms``, and whether it was made before.

        From memory, else from the store, else compiled now. While it is being
        made for one job, another job wanting the same plan waits for it.
        """
        key, health = terms.key(circuit)
        while key in self._making:
            await self._making[key].wait()
        if key in self.plans:
            self.hits += 1
            return self.plans[key], True
        self._making[key] = trio.Event()  # claimed before the first await: one job makes it, others wait
        try:
            try:
                stored = await self._actor.request(self._config.memory, GetPlan(plan=key))
            except RemoteError as exc:
                if exc.code != ErrorCode.NOT_FOUND:
                    raise
            else:
                plan = stored.body
                self.plans[key] = plan
                self.stored.add(key)
                self.hits += 1
                return plan, True
            plan = await self._compile(circuit, terms.device, terms.calibration, health)
            return self._finish(plan, key, terms), False
        finally:
            self._making.pop(key).set()

    def make_now(self, circuit: Circuit, terms: PlanTerms) -> tuple[Plan, bool] | None:
        """A small circuit's plan (at most `INLINE_OPS` ops), made here and now; whether it was made before.
        None if the planner is making it now.

        No store lookup: compiling a small circuit takes less than asking the store, and the plan's
        id names what it was made from, so storing it again (`store`) changes nothing.

        Raises:
            CircuitError: every problem of the circuit on the device.
        """
        key, health = terms.key(circuit)
        if key in self.plans:
            return self.plans[key], True  # counted a hit by whoever uses it
        if key in self._making:
            return None  # the planner is making it (reading the store): the job waits for it there
        plan = compile_circuit(circuit, terms.device, **self._compile_kwargs(terms.calibration, health))
        return self._finish(plan, key, terms), False

    def _finish(self, plan: Plan, key: str, terms: PlanTerms) -> Plan:
        """A compiled plan under the strategy, checked, kept under its key."""
        plan = msgspec.structs.replace(apply_strategy(plan, terms.strategy, terms.feedback), id=key)
        validate_plan(plan, terms.device)
        self.compiled += 1
        self.plans[key] = plan
        return plan

    def _compile_kwargs(self, calibration: int | None, health: Health) -> dict[str, Any]:
        return {
            "device_name": self._config.device,
            "calibration": calibration,
            "limits": self._config.limits,
            "health": health,
        }

    async def _compile(
        self, circuit: Circuit, device: DeviceDescription, calibration: int | None, health: Health
    ) -> Plan:
        kwargs = self._compile_kwargs(calibration, health)
        ops = count_ops(circuit.ops)
        if self._config.plan_workers > 0 and ops > self._config.process_threshold_ops:
            future = self._worker_pool().submit(_plan_in_process, circuit, device, kwargs)
            return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        compile_it = functools.partial(compile_circuit, circuit, device, **kwargs)
        return compile_it() if ops <= INLINE_OPS else await trio.to_thread.run_sync(compile_it)

    def _worker_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self._config.plan_workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def store(self, plan: Plan, job: str) -> None:
        """Store the plan (made for ``job``): a restarted scheduler, and the executor, read it back."""
        await self._actor.request(self._config.memory, self.put(plan, job))
        self.stored.add(plan.id)

    def put(self, plan: Plan, job: str) -> PutPlan:
        """The request that stores the plan (made for ``job``): alone, or with the job (`PutJob.with_plan`)."""
        return PutPlan(
            plan=plan.id,
            job=job,
            device=self._config.device,
            calibration=plan.calibration,
            body=plan,
            metrics={
                "total_duration_s": plan.metrics.total_duration_s,
                "phases": plan.metrics.phases,
                "compile_s": plan.metrics.compile_s,
                "min_slack_ns": plan.metrics.min_slack_ns if plan.metrics.min_slack_ns is not None else -1.0,
            },
        )

    def close(self) -> None:
        """Stop the worker processes (a plan being made in one is given up)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _plan_in_process(circuit: Circuit, device: DeviceDescription, kwargs: dict[str, Any]) -> Plan:
    return compile_circuit(circuit, device, **kwargs)
