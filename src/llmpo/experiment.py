"""The experiment file: what a run compares, on which tasks, judged how, to what end.

An experiment is written in YAML and validated in full before anything runs. The
one idea of this module: validation turns every problem into a single line that
names the field path, the value given and what was expected, so the file can be
fixed from the message alone. Files the experiment refers to (tasks, rubric,
simulated instance) are read at load time and inlined, so the resolved experiment
(:meth:`Experiment.to_json`) reproduces a run without the original files. Secrets
are never part of an experiment: a policy names the environment variable that
holds its API key, never the key.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmpo.errors import InputError
from llmpo.policy import Policy, Task

if TYPE_CHECKING:
    from llmpo.stats.instances import Instance

logger = logging.getLogger(__name__)

BACKENDS = ("local", "openai", "none")
JUDGE_KINDS = ("llm", "rule", "human", "simulated")
CHECKLISTS = ("support",)
SPACES = ("verify", "assume-winner", "structured")
TASK_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z_]\w*$")
_MAX_SHOWN = 60


# ---------------------------------------------------------------------------
# Field types and the one kind of error validators raise


def _refused(field: str, detail: str) -> PydanticCustomError:
    """A validation error for ``field`` (relative to where it is raised).

    ``detail`` is the whole explanation, such as ``"got 3, expected 4"``; the
    conversion to :class:`InputError` prefixes it with the full field path.
    """
    return PydanticCustomError("llmpo", "{detail}", {"field": field, "detail": detail})


def _shown(value: Any) -> str:
    """``value`` as it appears after "got" in a message, cut to a readable length."""
    text = repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return text


def _not_bool(value: Any) -> Any:
    # YAML reads yes/no/on/off as booleans; a number field must not take them
    # silently as 1 and 0.
    if isinstance(value, bool):
        raise PydanticCustomError("llmpo_not_number", "expected a number")
    return value


Number = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
Integer = Annotated[int, BeforeValidator(_not_bool)]


class _Strict(BaseModel):
    """Base of every experiment model: unknown keys are refused by name."""

    model_config = ConfigDict(extra="forbid", validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in known:
                    raise _refused(
                        str(key),
                        "unknown key, expected one of " + ", ".join(known),
                    )
        return data


def _context(info: ValidationInfo) -> tuple[Path, bool]:
    """Directory relative paths start from, and whether files are already inlined."""
    context = info.context or {}
    return Path(context.get("base_dir", ".")), bool(context.get("resolved", False))


def _env_name(value: str | None) -> str | None:
    """Check that ``value`` is the name of an environment variable."""
    if value is not None and not _ENV_NAME.match(value):
        # The value is not echoed: it may be the secret pasted by mistake.
        raise _refused(
            "",
            "got a value that is not a variable name, expected the NAME of the "
            "environment variable holding the key (such as OPENAI_API_KEY)",
        )
    return value


def _check_backend_options(spec: BaseModel) -> None:
    """Refuse ``openai`` settings on another backend and ``openai`` without a model."""
    if spec.backend == "openai":
        if not spec.model:
            raise _refused(
                "model", "missing, expected a model name for backend 'openai'"
            )
        return
    for key in ("base_url", "api_key_env", "timeout"):
        value = getattr(spec, key)
        if value is not None:
            shown = "a value" if key == "api_key_env" else _shown(value)
            raise _refused(
                key,
                f"got {shown}, expected it only with backend 'openai' "
                f"(the backend here is {spec.backend!r})",
            )


def _existing_file(value: str, base_dir: Path, what: str) -> Path:
    """Resolve ``value`` against ``base_dir`` and check that it is a file."""
    path = (base_dir / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise _refused(
            "", f"got {value!r}, expected an existing {what} (looked at {path})"
        )
    return path


# ---------------------------------------------------------------------------
# Policies


class PolicySpec(_Strict):
    """One candidate policy as written in the experiment file.

    ``model`` is a model name for ``openai`` (required there) and a GGUF path
    for ``local``, relative to the experiment file (omitted: the embedded
    SmolLM2 model). ``temperature``, ``top_p``, ``max_tokens`` and ``seed`` (a
    fixed generation seed; omitted: each duel's seed) become
    :attr:`llmpo.policy.Policy.params`; ``base_url``, ``api_key_env`` (the NAME
    of the variable holding the key) and ``timeout`` (seconds) apply to the
    ``openai`` backend only and become ``backend_options``. ``features`` is the
    policy's vector for the structured space.
    """

    name: str = Field(min_length=1)
    backend: Literal["local", "openai", "none"] = "local"
    model: str | None = None
    system_prompt: str = ""
    temperature: Number = Field(0.7, ge=0)
    top_p: Number = Field(1.0, gt=0, le=1)
    max_tokens: Integer = Field(128, ge=1)
    seed: Integer | None = None
    features: list[Number] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    timeout: Number | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _name_has_text(cls, value: str) -> str:
        if not value.strip():
            raise _refused("", f"got {value!r}, expected a non-empty name")
        return value.strip()

    @field_validator("api_key_env")
    @classmethod
    def _api_key_env_is_a_name(cls, value: str | None) -> str | None:
        return _env_name(value)

    @field_validator("model")
    @classmethod
    def _model_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        base_dir, resolved = _context(info)
        if value is None or resolved or info.data.get("backend") != "local":
            return value
        return str(_existing_file(value, base_dir, "GGUF model file"))

    @model_validator(mode="after")
    def _backend_options(self) -> PolicySpec:
        _check_backend_options(self)
        return self

    def to_policy(self) -> Policy:
        """The :class:`llmpo.policy.Policy` value this entry describes."""
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            params["seed"] = self.seed
        options = {
            key: getattr(self, key)
            for key in ("base_url", "api_key_env", "timeout")
            if getattr(self, key) is not None
        }
        return Policy(
            name=self.name,
            backend=self.backend,
            model=self.model,
            system_prompt=self.system_prompt,
            params=params,
            features=None if self.features is None else tuple(self.features),
            backend_options=options,
        )


# ---------------------------------------------------------------------------
# Tasks


class TaskSpec(_Strict):
    """One task: a prompt, an optional id (its position when omitted), facts."""

    id: str | None = None
    prompt: str
    facts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # Ids written as numbers in JSONL or YAML are the same ids as text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise _refused("", f"got {value!r}, expected a non-empty prompt")
        return value


def _read_task_records(path: Path, shown_name: str) -> list[dict[str, Any]]:
    """Records of a JSONL, JSON (list) or CSV task file, as plain dicts."""
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = reader.fieldnames or []
        if "prompt" not in columns:
            raise _refused(
                "",
                f"got columns {columns} in {shown_name!r}, expected a 'prompt' column",
            )
        records = []
        for row in reader:
            # Empty cells are facts the task does not have, not empty facts.
            facts = {
                key: value
                for key, value in row.items()
                if key not in ("id", "prompt", None) and value not in ("", None)
            }
            record: dict[str, Any] = {"prompt": row["prompt"] or "", "facts": facts}
            if row.get("id"):
                record["id"] = row["id"]
            records.append(record)
        return records
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise _refused(
                "",
                f"{shown_name!r} is not valid JSON ({error}), expected a list of tasks",
            ) from None
        if not isinstance(data, list):
            raise _refused(
                "", f"{shown_name!r} holds {type(data).__name__}, expected a list"
            )
        return data
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise _refused(
                "",
                f"line {number} of {shown_name!r} is not valid JSON ({error.msg}), "
                "expected one JSON object per line",
            ) from None
    return records


def _task_pool(value: Any, info: ValidationInfo) -> Any:
    """Turn a task file path into its records; pass inline lists through."""
    if value is None or isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise _refused(
            "", f"got {_shown(value)}, expected a list of tasks or a task file name"
        )
    base_dir, _ = _context(info)
    path = _existing_file(value, base_dir, "task file (.jsonl or .csv)")
    if path.suffix.lower() not in TASK_FILE_SUFFIXES:
        raise _refused(
            "", f"got {value!r}, expected a task file ending in .jsonl, .json or .csv"
        )
    records = _read_task_records(path, value)
    logger.debug("read %d tasks from %s", len(records), path)
    return records


def _check_task_pool(tasks: list[TaskSpec]) -> list[TaskSpec]:
    """Refuse an empty pool, number unnamed tasks and refuse duplicate ids."""
    if not tasks:
        raise _refused("", "got an empty list, expected at least one task")
    seen: dict[str, int] = {}
    named = []
    for index, task in enumerate(tasks):
        task_id = task.id if task.id is not None else str(index)
        if task_id in seen:
            raise _refused(
                f"{index}.id",
                f"got {task_id!r}, expected a unique id "
                f"(already used by task {seen[task_id]})",
            )
        seen[task_id] = index
        if task.id is None:
            task = task.model_copy(update={"id": task_id})
        named.append(task)
    return named


# ---------------------------------------------------------------------------
# Judges


class LlmJudgeSpec(_Strict):
    """An LLM judge: a rubric prompt, shown one random order or both orders.

    ``rubric`` is the rubric text, or ``rubric_file`` a file holding it (read at
    load time into ``rubric``); neither means the judge's built-in rubric.
    """

    kind: Literal["llm"]
    backend: Literal["local", "openai"] = "local"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    timeout: Number | None = Field(None, gt=0)
    rubric: str | None = None
    rubric_file: str | None = None
    order: Literal["random", "both"] = "random"
    ties: bool = True
    max_attempts: Integer = Field(3, ge=1)

    @field_validator("api_key_env")
    @classmethod
    def _api_key_env_is_a_name(cls, value: str | None) -> str | None:
        return _env_name(value)

    @field_validator("model")
    @classmethod
    def _model_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        base_dir, resolved = _context(info)
        if value is None or resolved or info.data.get("backend") != "local":
            return value
        return str(_existing_file(value, base_dir, "GGUF model file"))

    @field_validator("rubric_file")
    @classmethod
    def _rubric_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        base_dir, resolved = _context(info)
        if value is None or resolved:
            return value
        if info.data.get("rubric") is not None:
            raise _refused("", "got both rubric and rubric_file, expected one of them")
        return str(_existing_file(value, base_dir, "rubric file"))

    @model_validator(mode="after")
    def _resolve(self) -> LlmJudgeSpec:
        _check_backend_options(self)
        if self.rubric_file is not None and self.rubric is None:
            self.rubric = Path(self.rubric_file).read_text(encoding="utf-8")
        if self.rubric is not None and not self.rubric.strip():
            raise _refused("rubric", "got an empty rubric, expected its text")
        return self


class RuleJudgeSpec(_Strict):
    """A rule judge: a built-in ``checklist`` or a Python ``callable``.

    ``callable`` is ``"module:function"`` (an importable module) or
    ``"file.py:function"`` (a path relative to the experiment file).
    """

    kind: Literal["rule"]
    checklist: str | None = None
    callable: str | None = None

    @field_validator("checklist")
    @classmethod
    def _known_checklist(cls, value: str | None) -> str | None:
        if value is not None and value not in CHECKLISTS:
            expected = ", ".join(repr(name) for name in CHECKLISTS)
            raise _refused("", f"got {value!r}, expected one of {expected}")
        return value

    @field_validator("callable")
    @classmethod
    def _callable_reference(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        source, _, function = value.rpartition(":")
        if not source or not _FUNCTION_NAME.match(function):
            raise _refused(
                "", f"got {value!r}, expected 'module:function' or 'file.py:function'"
            )
        if source.endswith(".py"):
            base_dir, resolved = _context(info)
            if resolved:
                return value
            path = _existing_file(source, base_dir, "Python file")
            return f"{path}:{function}"
        if not _MODULE_NAME.match(source):
            raise _refused(
                "", f"got {value!r}, expected 'module:function' or 'file.py:function'"
            )
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> RuleJudgeSpec:
        if (self.checklist is None) == (self.callable is None):
            raise _refused(
                "checklist",
                "expected exactly one of checklist (such as 'support') or callable",
            )
        return self


class HumanJudgeSpec(_Strict):
    """A person gives each verdict in the terminal."""

    kind: Literal["human"]


class SimulatedJudgeSpec(_Strict):
    """A simulated judge drawing verdicts from a known instance.

    ``instance_file`` is a JSON instances file (see
    :func:`llmpo.stats.instances.load_instances`) and ``instance`` the name of
    one of its instances (optional when the file holds one). The chosen record
    is inlined as ``instance_record`` at load time.
    """

    kind: Literal["simulated"]
    instance_file: str | None = None
    instance: str | None = None
    instance_record: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> SimulatedJudgeSpec:
        base_dir, resolved = _context(info)
        inline = self.instance_record is not None
        if inline and (resolved or self.instance_file is None):
            self._checked_instance()
            return self
        if self.instance_file is None:
            raise _refused("instance_file", "missing, expected a JSON instances file")
        try:
            path = _existing_file(self.instance_file, base_dir, "instances file")
        except PydanticCustomError as error:
            raise _refused("instance_file", error.context["detail"]) from None
        self.instance_file = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _refused(
                "instance_file",
                f"{path} is not valid JSON ({error}), expected instances",
            ) from None
        records = data.get("instances") if isinstance(data, dict) else data
        if not isinstance(records, list) or not records:
            raise _refused(
                "instance_file", f"{path} holds no instances, expected a non-empty list"
            )
        names = [
            str(record.get("name", f"instance-{k}"))
            if isinstance(record, dict)
            else f"instance-{k}"
            for k, record in enumerate(records)
        ]
        if self.instance is None:
            if len(records) != 1:
                raise _refused(
                    "instance",
                    f"missing, expected one of {', '.join(names)} "
                    f"(the file holds {len(records)} instances)",
                )
            chosen = 0
        elif self.instance in names:
            chosen = names.index(self.instance)
        else:
            raise _refused(
                "instance", f"got {self.instance!r}, expected one of {', '.join(names)}"
            )
        self.instance = names[chosen]
        self.instance_record = dict(records[chosen], name=names[chosen])
        self._checked_instance()
        return self

    def load_instance(self) -> Instance:
        """The :class:`llmpo.stats.instances.Instance` this judge draws from.

        Raises
        ------
        InputError
            When the record is not a valid instance.
        """
        from llmpo.stats.instances import instance_from_dict

        return instance_from_dict(self.instance_record or {})

    def _checked_instance(self) -> Instance:
        try:
            return self.load_instance()
        except InputError as error:
            raise _refused("instance", str(error)) from None


JudgeSpec = Annotated[
    Union[LlmJudgeSpec, RuleJudgeSpec, HumanJudgeSpec, SimulatedJudgeSpec],
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------------
# Budget and the experiment


class Price(_Strict):
    """Price of one model, in currency units per million tokens."""

    input: Number = Field(ge=0)
    output: Number = Field(ge=0)


class Budget(_Strict):
    """Limits of a run; the run stops undecided when one is reached.

    ``duels`` counts completed duels, ``tokens`` generation and judge tokens,
    ``money`` the cost computed from ``prices``: per million tokens, keyed by the
    model name a backend reports (:attr:`llmpo.backends.base.Generation.model`).
    ``None`` means no limit.
    """

    duels: Integer | None = Field(None, gt=0)
    tokens: Integer | None = Field(None, gt=0)
    money: Number | None = Field(None, gt=0)
    prices: dict[str, Price] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _money_needs_prices(self) -> Budget:
        if self.money is not None and not self.prices:
            raise _refused(
                "prices",
                "missing, expected prices per million tokens by model when "
                "budget.money is set (without them every cost is 0)",
            )
        return self


class Experiment(_Strict):
    """A whole experiment: policies, tasks, judge, confidence, space and budget.

    Build it with :func:`load_experiment` (from YAML) or :meth:`from_json` (from
    a run store). Tasks, rubric and instance are inlined once loaded.

    Attributes
    ----------
    name : str or None
        A label for reports.
    policies : list of PolicySpec
        At least two, with unique names; their order gives the policy indices.
    tasks : list of TaskSpec
        The task pool duels draw from: inline, or a ``.jsonl``/``.json``/``.csv``
        file name relative to the experiment file (CSV: columns ``id``,
        ``prompt``, every other column a fact).
    heldout : list of TaskSpec or None
        Tasks kept out of the run, for the after-run comparison.
    default_policy : str or None
        Name of the plain baseline policy the leader is compared with on
        ``heldout``.
    judge : LlmJudgeSpec, RuleJudgeSpec, HumanJudgeSpec or SimulatedJudgeSpec
        Chosen by its ``kind``.
    delta : float
        Error probability allowed for the decision, in (0, 1).
    space : str
        ``verify`` (certify the Condorcet winner), ``assume-winner`` (assume one
        exists) or ``structured`` (Bradley-Terry on policy features).
    evidence : str
        Stopping rule of the structured space: ``guaranteed`` (a mixture
        likelihood over the best fit of each alternative, valid when the model
        holds) or ``glr`` (the
        generalized likelihood ratio against ``ln((1 + ln t)/delta)``, a
        heuristic threshold that carries no proof).
    budget : Budget
        Duels, tokens and money the run may spend.
    concurrency : int
        Duels in flight at once.
    batch : int or None
        Duels proposed per round of the sampler (``None``: the executor's
        choice, typically ``concurrency``).
    seed : int
        Seed of every random choice of the run.
    """

    name: str | None = None
    policies: list[PolicySpec]
    tasks: list[TaskSpec]
    heldout: list[TaskSpec] | None = None
    default_policy: str | None = None
    judge: JudgeSpec
    delta: Number = 0.05
    space: Literal["verify", "assume-winner", "structured"] = "verify"
    evidence: Literal["guaranteed", "glr"] = "guaranteed"
    budget: Budget = Field(default_factory=Budget)
    concurrency: Integer = Field(4, ge=1)
    batch: Integer | None = Field(None, ge=1)
    seed: Integer = Field(0, ge=0)

    @field_validator("tasks", "heldout", mode="before")
    @classmethod
    def _read_pool(cls, value: Any, info: ValidationInfo) -> Any:
        return _task_pool(value, info)

    @field_validator("tasks", "heldout")
    @classmethod
    def _pool(cls, value: list[TaskSpec] | None) -> list[TaskSpec] | None:
        return None if value is None else _check_task_pool(value)

    @field_validator("delta")
    @classmethod
    def _delta_in_unit_interval(cls, value: float) -> float:
        if not 0 < value < 1:
            raise _refused("", f"got {value!r}, expected a number in (0, 1)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        self._check_policies()
        self._check_features()
        default = self.default_policy
        if default is not None and default not in self.policy_names:
            raise _refused(
                "default_policy",
                f"got {default!r}, expected one of the policy names "
                f"({', '.join(self.policy_names)})",
            )
        if self.judge.kind == "simulated":
            n = self.judge._checked_instance().n_policies
            if n != len(self.policies):
                raise _refused(
                    "judge.instance",
                    f"got an instance of {n} policies, expected {len(self.policies)} "
                    "(one per policy, in order)",
                )
        else:
            for index, policy in enumerate(self.policies):
                if policy.backend == "none":
                    raise _refused(
                        f"policies.{index}.backend",
                        f"got 'none', expected 'local' or 'openai' with a "
                        f"{self.judge.kind} judge (only a simulated judge needs no "
                        "responses)",
                    )
        return self

    def _check_policies(self) -> None:
        if len(self.policies) < 2:
            raise _refused(
                "policies",
                f"got {len(self.policies)} policy, expected at least 2 to compare",
            )
        seen: dict[str, int] = {}
        for index, policy in enumerate(self.policies):
            if policy.name in seen:
                raise _refused(
                    f"policies.{index}.name",
                    f"got {policy.name!r}, expected a unique name "
                    f"(already used by policies[{seen[policy.name]}])",
                )
            seen[policy.name] = index

    def _check_features(self) -> None:
        first: int | None = None
        for index, policy in enumerate(self.policies):
            if policy.features is None:
                if self.space == "structured":
                    raise _refused(
                        f"policies.{index}.features",
                        "missing, expected a list of numbers for every policy "
                        "when space is 'structured'",
                    )
                continue
            if not policy.features:
                raise _refused(
                    f"policies.{index}.features",
                    "got an empty list, expected at least one number",
                )
            if first is None:
                first = index
            elif len(policy.features) != len(self.policies[first].features):
                raise _refused(
                    f"policies.{index}.features",
                    f"got {len(policy.features)} numbers, expected "
                    f"{len(self.policies[first].features)} like policies[{first}]",
                )

    # -- views used by the rest of the library ------------------------------

    @property
    def policy_names(self) -> list[str]:
        """Policy names in experiment order (the order of policy indices)."""
        return [policy.name for policy in self.policies]

    @property
    def default_policy_index(self) -> int | None:
        """Index of ``default_policy``, or ``None`` when there is none."""
        if self.default_policy is None:
            return None
        return self.policy_names.index(self.default_policy)

    def policy_objects(self) -> list[Policy]:
        """The policies as :class:`llmpo.policy.Policy` values, in order."""
        return [spec.to_policy() for spec in self.policies]

    def task_objects(self) -> list[Task]:
        """The task pool as :class:`llmpo.policy.Task` values."""
        return [Task(id=t.id, prompt=t.prompt, facts=dict(t.facts)) for t in self.tasks]

    def heldout_objects(self) -> list[Task]:
        """The held-out tasks (empty when the experiment has none)."""
        return [
            Task(id=t.id, prompt=t.prompt, facts=dict(t.facts))
            for t in self.heldout or []
        ]

    def to_json(self) -> str:
        """The resolved experiment as JSON, with tasks, rubric and instance inline.

        It holds no secret: only names of environment variables.
        """
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Experiment:
        """Rebuild an experiment from :meth:`to_json` output, reading no file.

        Raises
        ------
        InputError
            When the text is not a valid resolved experiment.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"experiment JSON: not valid JSON ({error})") from None
        return _validate(data, base_dir=Path("."), resolved=True)


# ---------------------------------------------------------------------------
# Loading


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file.

    Parameters
    ----------
    path : str or Path
        The YAML file, or a directory holding ``experiment.yaml``. Relative file
        names inside it (tasks, rubric, instances, callables, GGUF models) are
        resolved against the file's directory.

    Returns
    -------
    Experiment
        The validated experiment, with task files and rubric inlined.

    Raises
    ------
    InputError
        One line naming the field path, the value and what was expected; or the
        line and column of a YAML syntax error; or the missing file.
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / "experiment.yaml").is_file():
        path = path / "experiment.yaml"
    if not path.is_file():
        raise InputError(
            f"experiment file: got {str(path)!r}, expected an existing file"
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = error.problem or error.context or "invalid YAML"
        raise InputError(
            f"experiment file {str(path)!r}: YAML syntax error at {where}: {problem}"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(
            f"experiment file {str(path)!r}: not readable YAML ({error})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"experiment file {str(path)!r}: got {type(data).__name__}, expected a "
            "mapping of keys (policies, tasks, judge, ...)"
        )
    experiment = _validate(data, base_dir=path.resolve().parent, resolved=False)
    logger.info(
        "loaded experiment %s: %d policies, %d tasks, judge %s",
        experiment.name or path.name,
        len(experiment.policies),
        len(experiment.tasks),
        experiment.judge.kind,
    )
    return experiment


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} given twice in one mapping",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _validate(data: dict, *, base_dir: Path, resolved: bool) -> Experiment:
    """Validate ``data`` and turn the first validation error into an InputError."""
    try:
        return Experiment.model_validate(
            data, context={"base_dir": base_dir, "resolved": resolved}
        )
    except ValidationError as error:
        raise InputError(_message(error.errors()[0])) from None
    except OSError as error:
        raise InputError(
            f"experiment: a referenced file could not be read ({error})"
        ) from None


_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "llmpo_not_number": "a number",
    "finite_number": "a finite number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "string_too_short": "a non-empty string",
}

_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _path(loc: tuple) -> str:
    """``("policies", 1, "temperature")`` -> ``"policies[1].temperature"``."""
    text = ""
    parts = list(loc)
    for position, part in enumerate(parts):
        # A discriminated union adds the tag (the judge kind) to the location.
        if position and parts[position - 1] == "judge" and part in JUDGE_KINDS:
            continue
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _message(error: dict) -> str:
    """One line for one pydantic error: field path, value given, what was expected."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = tuple(error["loc"])
    if kind == "llmpo":
        extra = tuple(part for part in ctx["field"].split(".") if part)
        path = _path(loc + extra) or "experiment"
        return f"{path}: {ctx['detail']}"
    path = _path(loc) or "experiment"
    value = error.get("input")
    if kind == "missing":
        return f"{path}: missing, expected a value (this key is required)"
    if kind == "union_tag_invalid":
        expected = ctx.get("expected_tags")
        return f"{path}.kind: got {ctx.get('tag')!r}, expected one of {expected}"
    if kind == "union_tag_not_found":
        kinds = ", ".join(repr(kind) for kind in JUDGE_KINDS)
        return f"{path}.kind: missing, expected one of {kinds}"
    if kind == "literal_error":
        return f"{path}: got {_shown(value)}, expected {ctx.get('expected')}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        if isinstance(bound, (int, float)):
            bound = f"{bound:g}"
        return f"{path}: got {_shown(value)}, expected a number {_BOUNDS[kind]} {bound}"
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    expected = _EXPECTED.get(kind)
    if expected is None:
        expected = error.get("msg", "a valid value")
    if path.endswith("api_key_env"):
        return f"{path}: got a value of the wrong type, expected {expected}"
    if isinstance(value, float) and math.isnan(value):
        return f"{path}: got nan, expected {expected}"
    return f"{path}: got {_shown(value)}, expected {expected}"
