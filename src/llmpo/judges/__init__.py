"""Judges: what gives the verdict of a duel."""

from llmpo.judges.base import Judge, Verdict
from llmpo.judges.human import HumanJudge
from llmpo.judges.llm import DEFAULT_RUBRIC, LLMJudge, parse_verdict
from llmpo.judges.rule import CHECKLISTS, CallableJudge, ChecklistJudge, checklist
from llmpo.judges.simulated import SimulatedJudge

__all__ = [
    "CHECKLISTS",
    "DEFAULT_RUBRIC",
    "CallableJudge",
    "ChecklistJudge",
    "HumanJudge",
    "Judge",
    "LLMJudge",
    "SimulatedJudge",
    "Verdict",
    "checklist",
    "parse_verdict",
]
