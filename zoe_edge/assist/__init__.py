"""Home Assistant Assist turns for small local models.

Home Assistant always offers its tools, so their presence says nothing about what the person
asked. This package reads what the request itself holds (the exposed entities HA lists in its
system prompt, the live states a ``GetLiveContext`` result returns, the intent results) and
decides, as pure functions returning data plus a reason, what the local model is asked to do:

* :mod:`.house`: the entities, areas and domains a request names, and the states its tool
  results report;
* :mod:`.utterance`: what the last user utterance is (command, state question, chit-chat,
  memory) and which of the house's names it mentions;
* :mod:`.turn`: the turn plan: one narrowed, forced call for a command; the live-context call
  first for a state question; no tools for chit-chat; and after a tool result an answer built
  on that result, so a turn can never loop and never states what no result supports.

Nothing here names a house or a model; a request without Home Assistant's tools passes through
unchanged.
"""

from zoe_edge.assist.turn import TurnPlan, plan_turn

__all__ = ["TurnPlan", "plan_turn"]
