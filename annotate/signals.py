"""Points where higher layers join a live session without annotate importing them.

annotate sits below labeling (labeling's tags point at annotate's turns), yet a study may want
every reply tagged before the vote, a finished reply gets tag suggestions, and the session page
shows the tag bar. labeling connects receivers to these signals in its AppConfig.ready().
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent inside `services.comparison_record`, with the conversation row locked, before anything is
# written; kwargs: conversation, rater, candidates. A receiver refuses by raising ActionRefused.
vote_requested = Signal()

# Sent by `generation.turn_generate` once a reply is stored as done; kwargs: turn_id.
# Receivers must not raise: the reply is already finished.
turn_finished = Signal()

# Sent while the session page is rendered; kwargs: conversation, turns (the lived path and the
# current candidates). Each receiver returns a dict merged into the template context.
session_rendering = Signal()
