"""The hands-free loop (`rbi loop`): ideas in, optimised strategies and a summary out; state in the store."""

from rbi.loop.ideas import Idea, parse_ideas, read_ideas
from rbi.loop.runner import IdeaLoop, IdeaState, LoopAborted, LoopSettings, LoopSummary

__all__ = ["Idea", "IdeaLoop", "IdeaState", "LoopAborted", "LoopSettings", "LoopSummary", "parse_ideas",
           "read_ideas"]
