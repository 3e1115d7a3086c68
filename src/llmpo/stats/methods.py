"""The procedures by name, as ``llmpo bench`` and the experiment runner know them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmpo.errors import InputError
from llmpo.stats.baselines import Elimination, Knockout, Uniform
from llmpo.stats.bounds import assume_bound, verify_bound
from llmpo.stats.divergence import kl_delta
from llmpo.stats.instances import Instance
from llmpo.stats.procedure import Procedure
from llmpo.stats.sampling import LLMPO, Oracle

Factory = Callable[[Instance, float, int], Procedure]


def _oracle(instance: Instance, delta: float, seed: int) -> Procedure:
    if instance.condorcet_winner is None:
        raise InputError(
            f"method 'oracle' on instance {instance.name!r}: it has no Condorcet "
            "winner, expected an instance with one"
        )
    return Oracle(instance.n_policies, delta, instance.condorcet_winner)


UNSTRUCTURED: dict[str, Factory] = {
    "llmpo": lambda inst, delta, seed: LLMPO(inst.n_policies, delta, seed=seed),
    "llmpo-assume": lambda inst, delta, seed: LLMPO(
        inst.n_policies, delta, "assume-winner", seed=seed
    ),
    "uniform": lambda inst, delta, seed: Uniform(inst.n_policies, delta),
    "elimination": lambda inst, delta, seed: Elimination(inst.n_policies, delta),
    "knockout": lambda inst, delta, seed: Knockout(inst.n_policies, delta, seed=seed),
    "oracle": _oracle,
}


def structured_features(instance: Instance) -> np.ndarray:
    """The features structured methods model ``instance`` with: its own for a
    ``bt`` instance, one-hot (plain Bradley-Terry) for a ``matrix`` instance,
    whose preferences need not follow that model."""
    if instance.features is None:
        return np.eye(instance.n_policies)
    return instance.features


def _structured(method: str, rule: str) -> Factory:
    def factory(instance: Instance, delta: float, seed: int) -> Procedure:
        from llmpo.stats.structured import StructuredLLMPO

        return StructuredLLMPO(structured_features(instance), delta, rule=rule,
                               seed=seed)

    return factory


def _g_optimal(instance: Instance, delta: float, seed: int) -> Procedure:
    from llmpo.stats.structured import GOptimalDesign

    return GOptimalDesign(structured_features(instance), delta, seed=seed)


STRUCTURED: dict[str, Factory] = {
    "llmpo-structured": _structured("llmpo-structured", "guaranteed"),
    "llmpo-structured-glr": _structured("llmpo-structured-glr", "glr"),
    "g-optimal": _g_optimal,
}


def methods() -> dict[str, Factory]:
    """Every known method name and its factory ``(instance, delta, seed)``."""
    return {**UNSTRUCTURED, **STRUCTURED}


def make_procedure(method: str, instance: Instance, delta: float, seed: int) -> Procedure:
    """Build the procedure ``method`` for ``instance``.

    Raises
    ------
    InputError
        For an unknown method, naming the known ones.
    """
    known = methods()
    if method not in known:
        raise InputError(
            f"method: got {method!r}, expected one of {', '.join(sorted(known))}"
        )
    return known[method](instance, delta, seed)


def bound_family(method: str) -> str:
    """The model class a method's lower bound comes from: ``"structured"``,
    ``"assume-winner"`` or ``"verify"``."""
    if method in STRUCTURED:
        return "structured"
    return "assume-winner" if method == "llmpo-assume" else "verify"


def tstar(method: str, instance: Instance) -> float | None:
    """``T*`` of the model class the method is held to, or ``None`` when it does
    not apply (no Condorcet winner, or a structured method without features)."""
    family = bound_family(method)
    if family == "structured":
        value = _structured_tstar(instance)
    elif family == "assume-winner":
        value = assume_bound(instance.preference).tstar
    else:
        value = verify_bound(instance.preference).tstar
    if value is None or not np.isfinite(value):
        return None
    return float(value)


def lower_bound(method: str, instance: Instance, delta: float) -> float | None:
    """``T* kl(delta, 1-delta)`` for the model class the method is held to, or
    ``None`` when it does not apply."""
    value = tstar(method, instance)
    return None if value is None else value * kl_delta(delta)


def _structured_tstar(instance: Instance) -> float | None:
    if instance.features is None:
        return None
    from llmpo.stats.structured_bound import structured_lower_bound

    value, _ = structured_lower_bound(instance.features, instance.theta)
    return float(value)
