"""Scale-out on Ray: the numerical study's replications across a cluster.

Work is cut into chunks whose results depend only on their seeds, so a study
spread over Ray gives the same figures as one run in local processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from llmpo.errors import InputError

logger = logging.getLogger(__name__)


def ray_map(function: Callable[[Any], Any], items: Iterable[Any],
            *, address: str | None = None) -> Iterator[Any]:
    """Apply ``function`` to every item on Ray workers, yielding results as
    they complete.

    Parameters
    ----------
    function : callable
        A picklable top-level function.
    items : iterable
        Its arguments, one task each.
    address : str, optional
        A running cluster's address; by default Ray starts (or joins) a local
        one.

    Raises
    ------
    InputError
        When Ray is not installed (``pip install 'llmpo[ray]'``).
    """
    try:
        import ray
    except ImportError:
        raise InputError(
            "--ray: Ray is not installed, expected `pip install 'llmpo[ray]'`"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        logger.info("Ray started with %s CPUs", ray.cluster_resources().get("CPU"))
    remote = ray.remote(function)
    pending = [remote.remote(item) for item in items]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()
