"""llmpo: choose the best LLM policy by an adaptive experiment of pairwise duels.

The package has two layers. ``llmpo.stats`` holds the statistics (preference
estimates, lower bounds, proportions, evidence, sampling and stopping, baselines,
simulated judges) and works on arrays alone. Everything else (policies, backends,
judges, executor, run store, CLI, report) is the product, which calls the
statistics and is never called by them.
"""

__version__ = "0.1.0"
