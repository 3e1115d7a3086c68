"""Example experiments bundled with llmpo, runnable with no file of one's own."""

from __future__ import annotations

from pathlib import Path

from llmpo.errors import InputError

_HERE = Path(__file__).resolve().parent


def example_names() -> list[str]:
    """Names of the bundled examples (folders holding an ``experiment.yaml``)."""
    return sorted(p.parent.name for p in _HERE.glob("*/experiment.yaml"))


def example_path(name: str = "support") -> Path:
    """Path of the ``experiment.yaml`` of the bundled example ``name``.

    Parameters
    ----------
    name : str
        Example name; ``"support"`` is the customer-support replies example that
        ``llmpo run`` uses when given no experiment.

    Returns
    -------
    Path
        The example's experiment file; its task files sit beside it.

    Raises
    ------
    InputError
        When no bundled example has that name.
    """
    path = _HERE / name / "experiment.yaml"
    if not path.is_file():
        known = ", ".join(example_names()) or "none"
        raise InputError(f"example: got {name!r}, expected one of {known}")
    return path
