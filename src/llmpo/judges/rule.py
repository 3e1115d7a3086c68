"""Rule judges: a built-in checklist for customer-support replies, and user functions.

The checklist judge scores each response against the reference facts of its task
and compares the two scores; it costs nothing and gives the same verdict every
time, which makes it the judge of the bundled example. The facts of a task, all
optional:

``order_id`` (str)
    The customer's order number; a reply must repeat it.
``refund_allowed`` (bool, default false)
    Whether a reply may offer a refund.
``credit_allowed`` (bool, default false)
    Whether a reply may offer a discount, coupon, voucher, credit or other
    compensation.
``amounts`` (list of str or number, default empty)
    Money amounts and percentages a reply may state (an order total the customer
    gave, an allowed refund); any other amount counts as invented.
``next_step`` (list of str)
    Phrases (lower case, matched as substrings, so ``"replac"`` covers
    "replace" and "replacement") of which a reply must contain at least one to
    state the correct next step.
``max_words`` (int, default 150)
    Length limit of a reply, in words.

A callable judge wraps a user function ``judge(task, response_a, response_b)``
that returns the probability-like score of ``response_a`` winning, in [0, 1].
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import math
import numbers
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmpo.errors import InputError, JudgeError
from llmpo.judges.base import Verdict
from llmpo.policy import Task

logger = logging.getLogger(__name__)

DEFAULT_MAX_WORDS = 150

DEFAULT_WEIGHTS: dict[str, float] = {
    "order_number": 2.0,
    "next_step": 2.0,
    "no_invented_offer": 3.0,
    "within_length": 1.0,
    "acknowledges": 0.5,
    "no_placeholder": 1.0,
}
"""Weight of each check in a response's score; inventing an offer costs most,
because a reply that promises money the company did not allow is worse than a
reply that is merely unhelpful."""

_WORD = re.compile(r"\S+")
_SENTENCE = re.compile(r"[^.!?\n]+")

_REFUND_TERMS = re.compile(r"\b(?:refund|reimburs|money back)", re.IGNORECASE)
_CREDIT_TERMS = re.compile(
    r"\b(?:discount|coupon|voucher|promo(?:tional)? code|gift card|store credit"
    r"|account credit|a credit|credit of|compensat|goodwill|free of charge"
    r"|at no (?:extra )?cost|free (?:shipping|upgrade|month)|\d+\s*% off)",
    re.IGNORECASE,
)
# Mentions of an offer that promise nothing: the customer's own request, or the
# policy as a topic.
_NOT_AN_OFFER = re.compile(
    r"\b(?:refund|discount|compensation)\s+(?:request|policy|policies|question)s?\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(
    r"\b(?:not|no|cannot|can't|can not|unable|won't|isn't|aren't|don't|doesn't"
    r"|unfortunately|neither|nor|without)\b",
    re.IGNORECASE,
)
# A currency sign or word next to a number, or a percentage.
_AMOUNT = re.compile(
    r"(?:[$€£]\s*(\d[\d,]*(?:\.\d+)?))"
    r"|(?:(\d[\d,]*(?:\.\d+)?)\s*(?:%|percent\b|dollars?\b|euros?\b|pounds?\b"
    r"|usd\b|eur\b|gbp\b|[$€£]))",
    re.IGNORECASE,
)
_ACKNOWLEDGEMENT = re.compile(
    r"\b(?:sorry|apologi[sz]e|apologies|thank you|thanks|i understand"
    r"|we understand|i see that|i can see|frustrating|inconvenience)",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(
    r"\[[^\]\n]{1,40}\]|\{\{?[^}\n]{1,40}\}\}?|<[A-Za-z ]{1,30}>"
    r"|\byour name\b|\bcompany name\b|\binsert\s+\w+|\bX{3,}\b",
    re.IGNORECASE,
)


def checklist(task: Task, response: str) -> dict[str, bool]:
    """Check one response against the facts of its task.

    Parameters
    ----------
    task : Task
        The task; its ``facts`` follow the schema of this module's docstring.
    response : str
        The reply to check.

    Returns
    -------
    dict of str to bool
        ``order_number`` (only when the facts have an ``order_id``): the reply
        repeats it. ``next_step`` (only when the facts list next-step phrases):
        the reply contains one of them. ``no_invented_offer``: no refund,
        compensation or amount beyond what the facts allow. ``within_length``:
        at most ``max_words`` words. ``acknowledges``: thanks, apologises or
        acknowledges the problem. ``no_placeholder``: no template text such as
        ``[Your Name]``.

    Raises
    ------
    InputError
        When a fact has the wrong type.
    """
    facts = _checked_facts(task)
    text = " ".join(response.split())
    lowered = text.lower()
    checks: dict[str, bool] = {}
    if facts["order_id"]:
        checks["order_number"] = _alnum(facts["order_id"]) in _alnum(text)
    if facts["next_step"]:
        checks["next_step"] = any(phrase in lowered for phrase in facts["next_step"])
    checks["no_invented_offer"] = not _invents_offer(text, facts)
    checks["within_length"] = 0 < len(_WORD.findall(text)) <= facts["max_words"]
    checks["acknowledges"] = bool(_ACKNOWLEDGEMENT.search(text))
    checks["no_placeholder"] = not _PLACEHOLDER.search(text)
    return checks


def score(checks: dict[str, bool], weights: dict[str, float] | None = None) -> float:
    """Weighted number of checks passed: ``sum_k w_k * [check k passed]``."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    return float(sum(weights.get(name, 0.0) for name, ok in checks.items() if ok))


class ChecklistJudge:
    """Judge two customer-support replies by their checklists.

    The reply with the higher :func:`score` wins; equal scores are a tie. The
    verdict's ``raw`` is a JSON object with both checklists and scores, so the
    run store shows why.

    Parameters
    ----------
    weights : dict of str to float or None
        Weight per check name; defaults to :data:`DEFAULT_WEIGHTS`.

    Raises
    ------
    InputError
        When a weight names an unknown check or is not a number >= 0.
    """

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        merged = dict(DEFAULT_WEIGHTS)
        for name, weight in (weights or {}).items():
            if name not in DEFAULT_WEIGHTS:
                raise InputError(
                    f"judge.weights.{name}: unknown check, expected one of "
                    f"{', '.join(DEFAULT_WEIGHTS)}"
                )
            if not _is_number(weight) or weight < 0:
                raise InputError(
                    f"judge.weights.{name}: got {weight!r}, expected a number >= 0"
                )
            merged[name] = float(weight)
        self.weights = merged

    async def judge(
        self,
        task: Task,
        i: int,
        j: int,
        response_i: str,
        response_j: str,
        *,
        seed: int,
    ) -> Verdict:
        """Return 1, 0 or 1/2 by comparing the two checklist scores.

        The seed is not used: the checklist has no randomness.
        """
        checks_i = checklist(task, response_i)
        checks_j = checklist(task, response_j)
        score_i = score(checks_i, self.weights)
        score_j = score(checks_j, self.weights)
        outcome = 1.0 if score_i > score_j else 0.0 if score_i < score_j else 0.5
        raw = json.dumps(
            {
                "i": {"score": score_i, "checks": checks_i},
                "j": {"score": score_j, "checks": checks_j},
            },
            separators=(",", ":"),
        )
        return Verdict(outcome=outcome, raw=raw, order="ij")


CHECKLISTS: dict[str, type[ChecklistJudge]] = {"support": ChecklistJudge}
"""Built-in checklists by the name an experiment file gives them."""


class CallableJudge:
    """Judge with a user function ``judge(task, response_a, response_b) -> float``.

    The function is shown ``i``'s response as ``response_a``; its return value is
    the outcome for ``i``, 1 when ``response_a`` is better, 0 when ``response_b``
    is, anything between for a tie or a graded preference. A value that is not a
    number in [0, 1] is recorded as unparsable (outcome ``None``, never
    counted). Synchronous functions run in the event loop, so a slow one holds up
    the other duels in flight and is better written ``async``.

    Parameters
    ----------
    function : callable
        Synchronous or ``async`` function of ``(task, response_a, response_b)``.
    name : str
        How the function is named in messages and in ``raw``.
    """

    def __init__(self, function: Callable[..., Any], *, name: str = "") -> None:
        if not callable(function):
            raise InputError(
                f"judge.function: got {function!r}, expected a callable"
            )
        self.function = function
        self.name = name or getattr(function, "__qualname__", repr(function))

    @classmethod
    def from_spec(
        cls, spec: str, *, base_dir: str | Path | None = None
    ) -> CallableJudge:
        """Load the function named ``"package.module:function"`` or
        ``"path/to/file.py:function"``.

        Parameters
        ----------
        spec : str
            Where the function is.
        base_dir : str or Path or None
            Directory a relative file path is read from (the experiment file's);
            the working directory when ``None``.

        Raises
        ------
        InputError
            When the spec is malformed, the module or file cannot be imported,
            or the name is missing or not callable. The message names the spec.
        """
        return cls(load_function(spec, base_dir=base_dir), name=spec)

    async def judge(
        self,
        task: Task,
        i: int,
        j: int,
        response_i: str,
        response_j: str,
        *,
        seed: int,
    ) -> Verdict:
        """Call the function on ``(task, response_i, response_j)``.

        Raises
        ------
        JudgeError
            When the function raises; the original exception is chained.
        """
        try:
            value = self.function(task, response_i, response_j)
            if inspect.isawaitable(value):
                value = await value
        except Exception as error:
            raise JudgeError(
                f"judge function {self.name!r} raised {type(error).__name__}: {error}"
            ) from error
        if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
            logger.info(
                "task %s: judge function %r returned %r, not a number in [0, 1]",
                task.id, self.name, value,
            )
            return Verdict(
                outcome=None,
                raw=f"{self.name} returned {value!r}, expected a number in [0, 1]",
                order="ij",
            )
        return Verdict(outcome=float(value), raw=f"{self.name} returned {value!r}")


def load_function(spec: str, *, base_dir: str | Path | None = None) -> Callable:
    """Import the callable named by ``spec``; see :meth:`CallableJudge.from_spec`."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(
            f"judge.function: got {spec!r}, expected 'package.module:function' "
            "or 'path/to/file.py:function'"
        )
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute.isidentifier():
        raise InputError(
            f"judge.function: got {spec!r}, expected 'package.module:function' "
            "or 'path/to/file.py:function'"
        )
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(spec, where, base_dir)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:
            raise InputError(
                f"judge.function {spec!r}: cannot import module {where!r} "
                f"({type(error).__name__}: {error})"
            ) from None
    function = getattr(module, attribute, None)
    if function is None:
        raise InputError(
            f"judge.function {spec!r}: {where!r} has no attribute {attribute!r}"
        )
    if not callable(function):
        raise InputError(
            f"judge.function {spec!r}: {attribute!r} is a "
            f"{type(function).__name__}, expected a function"
        )
    return function


# -------------------------------------------------------------------- internals


def _import_file(spec: str, where: str, base_dir: str | Path | None):
    """Execute a Python file as a fresh module and return it."""
    path = Path(where)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise InputError(
            f"judge.function {spec!r}: file {str(path)!r} not found, "
            "expected an existing .py file"
        )
    module_name = f"llmpo_user_judge_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise InputError(
            f"judge.function {spec!r}: {str(path)!r} cannot be loaded as Python"
        )
    module = importlib.util.module_from_spec(loader_spec)
    # Registered before execution so that dataclasses and pickling inside the
    # user's file can find their own module.
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise InputError(
            f"judge.function {spec!r}: running {str(path)!r} failed "
            f"({type(error).__name__}: {error})"
        ) from None
    return module


def _checked_facts(task: Task) -> dict[str, Any]:
    """The facts of a task with defaults filled in and types checked."""
    facts = task.facts or {}
    field = f"tasks[{task.id}].facts"
    order_id = facts.get("order_id")
    if order_id is not None and not isinstance(order_id, (str, int)):
        raise InputError(f"{field}.order_id: got {order_id!r}, expected a string")
    for key in ("refund_allowed", "credit_allowed"):
        if not isinstance(facts.get(key, False), bool):
            raise InputError(
                f"{field}.{key}: got {facts[key]!r}, expected true or false"
            )
    next_step = facts.get("next_step", [])
    if isinstance(next_step, str):
        next_step = [next_step]
    if not isinstance(next_step, list) or not all(
        isinstance(p, str) and p.strip() for p in next_step
    ):
        raise InputError(
            f"{field}.next_step: got {next_step!r}, expected a list of phrases"
        )
    amounts = facts.get("amounts", [])
    if not isinstance(amounts, list):
        raise InputError(f"{field}.amounts: got {amounts!r}, expected a list")
    allowed = set()
    for amount in amounts:
        value = _amount_value(str(amount))
        if value is None:
            raise InputError(
                f"{field}.amounts: got {amount!r}, expected an amount such as "
                "'24.99' or '$24.99'"
            )
        allowed.add(value)
    max_words = facts.get("max_words", DEFAULT_MAX_WORDS)
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        raise InputError(
            f"{field}.max_words: got {max_words!r}, expected an integer >= 1"
        )
    return {
        "order_id": None if order_id is None else str(order_id),
        "refund_allowed": facts.get("refund_allowed", False),
        "credit_allowed": facts.get("credit_allowed", False),
        "amounts": allowed,
        "next_step": [" ".join(p.lower().split()) for p in next_step],
        "max_words": max_words,
    }


def _invents_offer(text: str, facts: dict[str, Any]) -> bool:
    """Whether the reply offers a refund, compensation or amount not allowed.

    A heuristic read sentence by sentence: an offer term in a sentence with a
    negation before it ("we cannot refund") is not an offer. It misses offers
    phrased without the listed terms and can be fooled by a negation that
    belongs to another clause of the same sentence.
    """
    for match in _AMOUNT.finditer(text):
        value = _amount_value(match.group(0))
        if value is not None and value not in facts["amounts"]:
            return True
    for sentence in _SENTENCE.findall(_NOT_AN_OFFER.sub(" ", text)):
        terms = []
        if not facts["refund_allowed"]:
            terms.append(_REFUND_TERMS)
        if not facts["credit_allowed"]:
            terms.append(_CREDIT_TERMS)
        for term in terms:
            found = term.search(sentence)
            if found and not _NEGATION.search(sentence[: found.start()]):
                return True
    return False


def _amount_value(text: str) -> float | None:
    """The number in an amount such as ``$24.99``, ``24,99 €`` or ``15%``."""
    match = re.search(r"\d[\d,]*(?:\.\d+)?", text)
    if match is None:
        return None
    digits = match.group(0)
    # "24,99" is a decimal comma; "1,299" groups thousands.
    if re.fullmatch(r"\d+,\d{2}", digits):
        digits = digits.replace(",", ".")
    return round(float(digits.replace(",", "")), 2)


def _alnum(text: str) -> str:
    """Lower-case letters and digits only, so "#A-102" matches "a102"."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _is_number(value: Any) -> bool:
    """A real number, not a boolean and not NaN."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and not math.isnan(float(value))
    )
