"""The single model slot and the planner that decides what may be loaded."""

from zoe_edge.supervisor.slot import Supervisor
from zoe_edge.supervisor.state import InvalidTransition, SlotState

__all__ = ["InvalidTransition", "SlotState", "Supervisor"]
