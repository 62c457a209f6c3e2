from __future__ import annotations

from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Labeling"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from annotate import signals
        from labeling import receivers, selectors
        from labeling.models import Label, Taxonomy

        for model in (Label, Taxonomy):
            for changed in (post_save, post_delete):
                changed.connect(selectors.labels_forget, sender=model, dispatch_uid=f"labeling.forget.{model.__name__}")

        signals.vote_requested.connect(receivers.refuse_untagged_vote, dispatch_uid="labeling.untagged_vote")
        signals.turn_finished.connect(receivers.suggest_on_finished_reply, dispatch_uid="labeling.suggest")
        signals.session_rendering.connect(receivers.session_tagging, dispatch_uid="labeling.session_tags")
        signals.work_requested.connect(
            receivers.refuse_work_before_qualification, dispatch_uid="labeling.qualification_first"
        )
        signals.home_rendering.connect(receivers.home_qualification, dispatch_uid="labeling.home_qualification")
        signals.participant_step.connect(receivers.panel_qualification_step, dispatch_uid="labeling.panel_step")
