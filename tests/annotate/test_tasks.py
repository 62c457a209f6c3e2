"""A real Celery worker (Redis broker) samples the candidates of a user message."""

from __future__ import annotations

from annotate import services
from annotate.models import Turn
from tests.processes import wait_until


def test_message_is_sampled_by_a_real_worker(start_worker, tiny_config, make_study, make_conversation):
    # Given a study whose pool is a tiny local model, and a worker on Redis
    config_a, config_b = (
        tiny_config(max_new_tokens=24, min_new_tokens=24),
        tiny_config(max_new_tokens=12, min_new_tokens=4),
    )
    study = make_study(configs=[config_a, config_b])
    conversation = make_conversation(study=study)
    start_worker(concurrency=2)

    # When the rater sends a message
    user_turn = services.message_send(conversation=conversation, text="Hello there")

    # Then both candidates are generated, once each, with what was used recorded
    candidates = Turn.objects.filter(parent=user_turn).order_by("position")
    wait_until(lambda: all(t.status == Turn.Status.DONE for t in candidates.all()))
    for turn in candidates:
        assert turn.attempt == 1
        assert turn.completion_tokens and turn.completion_tokens <= turn.params["max_new_tokens"]
        assert turn.prompt_tokens and turn.prompt_tokens > len("Hello there")
        assert turn.first_token_at is not None and turn.finished_at >= turn.first_token_at
        assert turn.seed is not None
    assert {t.model_config_id for t in candidates} == {config_a.pk, config_b.pk}
