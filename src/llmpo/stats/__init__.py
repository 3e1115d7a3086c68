"""The statistical layer of llmpo: arrays in, arrays out.

Nothing here imports the product (backends, judges, store, CLI). A procedure
(:class:`llmpo.stats.procedure.Procedure`) proposes which pairs of policies to
duel, folds in outcomes, and says when the evidence names the best policy.
"""
