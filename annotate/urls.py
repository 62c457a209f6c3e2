from __future__ import annotations

from django.urls import path

from annotate import panel_views, views

app_name = "annotate"
urlpatterns = [
    path("", views.home, name="home"),
    path("studies/<slug:slug>/start/", views.study_start, name="study_start"),
    path("c/<int:pk>/", views.conversation_detail, name="conversation"),
    path("c/<int:pk>/messages/", views.message_send, name="message_send"),
    path("c/<int:pk>/vote/", views.vote, name="vote"),
    path("c/<int:pk>/turns/<int:turn_id>/retry/", views.turn_retry, name="turn_retry"),
    path("c/<int:pk>/finish/", views.conversation_finish, name="finish"),
    path("c/<int:pk>/stream/", views.stream, name="stream"),
    path("c/<int:pk>/transcript/", views.transcript, name="transcript"),
    # A panel participant's way in and out (docs/crowd-studies.md)
    path("p/<slug:slug>/", panel_views.enter, name="panel_enter"),
    path("p/<slug:slug>/consent/", panel_views.consent, name="panel_consent"),
    path("p/<slug:slug>/work/", panel_views.work, name="panel_work"),
    path("p/<slug:slug>/done/", panel_views.done, name="panel_done"),
]
