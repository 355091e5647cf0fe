"""The module panel's processing states and what each one shows (one table, tested without Qt).

PREPARING covers the dependency check and any PyTorch/pip installation: nothing can stop it, so
Cancel is shown but disabled. RUNNING covers the worker process and the import of its results:
Cancel is enabled and kills the worker at once (there is no "cancelling" wait). Both start with an
empty, busy progress bar, so the previous run's 100 % is never shown while the next one prepares.
"""

import enum
from dataclasses import dataclass


class ProcessingState(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class PanelState:
    controlsEnabled: bool  # input, output and advanced sections
    buttonIsCancel: bool  # the apply button reads "Cancel"
    cancelEnabled: bool  # only meaningful when buttonIsCancel
    progressVisible: bool
    resetProgress: bool  # entering the state empties the bar and makes it busy (no percentage yet)


_BUSY = {ProcessingState.PREPARING, ProcessingState.RUNNING}


def panelState(state: ProcessingState) -> PanelState:
    busy = state in _BUSY
    return PanelState(controlsEnabled=not busy, buttonIsCancel=busy, cancelEnabled=state == ProcessingState.RUNNING,
                      progressVisible=busy,
                      resetProgress=state in (ProcessingState.PREPARING, ProcessingState.RUNNING))
