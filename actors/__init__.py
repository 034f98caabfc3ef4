"""The five actors of a lab: scheduler, executor, calibration, memory and the HAL.

Each is a package (or module) of its own, built on the generic actor runtime
(`runtime`), and talks to the others only by messages (`protocol`); none
imports another. A system file names them by factory, e.g.
``actors.scheduler:SchedulerActor``.
"""
