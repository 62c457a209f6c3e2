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

# Sent by `services.conversation_start` before new work is handed out (not when an active conversation
# is resumed); kwargs: study, rater. A receiver refuses by raising ActionRefused (labeling: a rater who
# has to pass the study's qualification first, or whose work was excluded).
work_requested = Signal()

# Sent while the home page is rendered; kwargs: user, studies (the open studies listed). Each receiver
# returns a dict merged into the template context (labeling: the studies whose qualification the user
# still has to take, `qualify_study_ids`).
home_rendering = Signal()

# Sent by `panel.participant_next_step` for a panel participant who has consented, before work is handed
# out; kwargs: participant. A receiver returns the URL of a step the participant must take first (labeling:
# the study's qualification, while they have not passed it) or None. After that step, send them to
# `panel.participant_next_step(participant)`; on failing it, `panel.participant_screen_out(participant, reason)`.
participant_step = Signal()
