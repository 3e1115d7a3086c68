"""Build the judge an experiment names, from its validated judge spec.

The experiment file says *which* judge (``kind`` and its settings); this module
turns that into the object with ``async judge(...)``. An LLM judge generates
through the run's own :class:`llmpo.backends.registry.Backends`, so its calls
share the embedded model, the clients and the price table with the policies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from llmpo.errors import InputError
from llmpo.judges.base import Judge
from llmpo.judges.human import HumanJudge
from llmpo.judges.llm import LLMJudge
from llmpo.judges.rule import CHECKLISTS, CallableJudge
from llmpo.judges.simulated import SimulatedJudge

logger = logging.getLogger(__name__)


def build_judge(spec: Any, backends: Any) -> Judge:
    """Return the judge described by ``spec``.

    Parameters
    ----------
    spec : LlmJudgeSpec, RuleJudgeSpec, HumanJudgeSpec or SimulatedJudgeSpec
        The ``judge`` entry of a loaded :class:`llmpo.experiment.Experiment`
        (files already resolved: rubric inlined, callable path absolute,
        instance inlined).
    backends : Backends
        Where an ``llm`` judge sends its requests; unused by other kinds.

    Returns
    -------
    Judge

    Raises
    ------
    InputError
        When the kind is unknown, a checklist is not built in, or a callable
        cannot be imported.
    """
    kind = getattr(spec, "kind", None)
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise InputError(
            f"judge.kind: got {kind!r}, expected one of {', '.join(_BUILDERS)}"
        )
    judge = builder(spec, backends)
    logger.debug("judge %s built", kind)
    return judge


def _llm(spec: Any, backends: Any) -> Judge:
    options = {
        key: getattr(spec, key)
        for key in ("base_url", "api_key_env", "timeout")
        if getattr(spec, key) is not None
    }
    return LLMJudge(
        backends,
        spec.rubric,
        backend_name=spec.backend,
        model=spec.model,
        order=spec.order,
        ties=spec.ties,
        max_attempts=spec.max_attempts,
        backend_options=options,
    )


def _rule(spec: Any, backends: Any) -> Judge:
    if spec.callable is not None:
        return CallableJudge.from_spec(spec.callable)
    checklist = CHECKLISTS.get(spec.checklist)
    if checklist is None:
        raise InputError(
            f"judge.checklist: got {spec.checklist!r}, expected one of "
            f"{', '.join(CHECKLISTS)}"
        )
    return checklist()


def _human(spec: Any, backends: Any) -> Judge:
    return HumanJudge()


def _simulated(spec: Any, backends: Any) -> Judge:
    return SimulatedJudge(spec.load_instance())


_BUILDERS: dict[str, Callable[[Any, Any], Judge]] = {
    "llm": _llm,
    "rule": _rule,
    "human": _human,
    "simulated": _simulated,
}
