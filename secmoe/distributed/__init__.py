"""Scale-out of the server's HE work (issue 17): expert-parallel workers for the encrypted
selection, in this process (:class:`LocalPool`) or as Ray actors (:class:`RayPool`, Ray imported
only when one is created). See :mod:`secmoe.distributed.pool`."""

from .pool import DEFAULT_TIMEOUT, ExpertPool, LocalPool, PoolSession, RayPool, WorkerLost
from .worker import OverBudget

__all__ = [
    "DEFAULT_TIMEOUT",
    "ExpertPool",
    "LocalPool",
    "OverBudget",
    "PoolSession",
    "RayPool",
    "WorkerLost",
]
