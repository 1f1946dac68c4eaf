"""The single model slot and (later) the planner that decides what may be loaded."""

from zoe_edge.supervisor.slot import SlotState, Supervisor

__all__ = ["SlotState", "Supervisor"]
