"""Wall time and duels of the executor at concurrency 1 and 16, on a fake server.

Not a test: run it by hand, ``python tests/measure_concurrency.py [DUELS]
[LATENCY_S]``. Four policies behind :class:`fake_openai.FakeOpenAIServer` (one
better), the support checklist judge, the same seed and budget at both levels;
it prints, per level, the status, duels counted, duels counted when the decision
was taken, and wall time (the first seconds are the client's start-up). The
default budget of 3000 duels is far above what the stopping rule needs, so both
levels end decided and their duel counts can be compared.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml
from fake_openai import FakeOpenAIServer

from llmpo.examples import example_path
from llmpo.runner import start_run


def experiment(folder: Path, base_url: str, concurrency: int, duels: int) -> Path:
    def policy(name, prompt):
        return {"name": name, "backend": "openai", "model": "fake",
                "base_url": base_url, "system_prompt": prompt, "max_tokens": 40}
    data = {
        "name": f"concurrency-{concurrency}",
        "policies": [policy("good", "GOOD agent"), policy("one", "agent one"),
                     policy("two", "agent two"), policy("three", "agent three")],
        "tasks": str(example_path().parent / "tasks.jsonl"),
        "judge": {"kind": "rule", "checklist": "support"},
        "budget": {"duels": duels},
        "concurrency": concurrency,
        "seed": 0,
    }
    path = folder / f"experiment-{concurrency}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main(duels: int = 3000, latency_s: float = 0.2) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llmpo-concurrency-"))
    with FakeOpenAIServer(latency_s=latency_s, good_rate=0.7, bad_rate=0.4) as fake:
        for concurrency in (1, 16):
            path = experiment(folder, fake.base_url, concurrency, duels)
            begin = time.perf_counter()
            outcome = start_run(path, folder / f"run-{concurrency}.sqlite")
            wall = time.perf_counter() - begin
            print(
                f"concurrency {concurrency:2d}: {outcome.status}, "
                f"{outcome.summary['counted']} duels counted, decision on "
                f"{outcome.decision['n_duels']}, wall {wall:.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main(*(int(sys.argv[1]),) if len(sys.argv) > 1 else (),
         **({"latency_s": float(sys.argv[2])} if len(sys.argv) > 2 else {}))
