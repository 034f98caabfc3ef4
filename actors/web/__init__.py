"""The web actor: the lab's one HTTP port (decision 0015 §1).

`WebActor` (factory ``actors.web:WebActor``) serves, with Starlette on
Hypercorn's trio worker inside its own trio loop, the probes (``/livez``,
``/readyz``), the Prometheus metrics the actors report on their heartbeats
(``/metrics``), the lab page's state (``/api/state``, ``/events``) and a
job's result (``/api/jobs/{id}/result``), and the lab page itself from
``static/`` when it is there.
"""

from ._actor import WebActor as WebActor
from ._actor import WebConfig as WebConfig

__all__ = [name for name in dir() if not name.startswith("_")]
