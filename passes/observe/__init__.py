"""insert_observers: observer modules after every value quantization needs qparams for.

``insert_observers.py`` holds the rules and the entry point; the work is
done by ``analysis.py`` (what the module call graph says of each value),
``placement.py`` (which values get which observer), ``insertion.py``
(putting them in), ``branches.py`` (``if`` continuations moved first) and
``delayed.py`` (observation moved past a relu).
"""

from passes.observe.delayed import DELAYED_OBSERVATION
from passes.observe.insert_observers import insert_observers_in_place

__all__ = ["insert_observers_in_place", "DELAYED_OBSERVATION"]
