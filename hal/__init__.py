"""The hardware abstraction layer: the only code that touches a device.

Issue 4 builds it here: the HAL actor, typed device descriptions, safety
limits. It may import `drivers` and `protocol`, never `actors`.
"""
