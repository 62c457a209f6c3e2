from __future__ import annotations

from django.urls import path

from labeling.views import dashboard, leaderboard, qualify, review, tags

app_name = "labeling"
urlpatterns = [
    path("tags/", tags.tag_add, name="tag_add"),
    path("tags/<int:pk>/delete/", tags.tag_remove, name="tag_remove"),
    path("tags/<int:pk>/decide/", tags.suggestion_decide, name="suggestion_decide"),
    path("review/", review.review_home, name="review_home"),
    path("review/studies/<slug:slug>/next/", review.review_next, name="review_next"),
    path("review/studies/<slug:slug>/check/", review.review_check, name="review_check"),
    path("review/<int:pk>/", review.review_detail, name="review_detail"),
    path("review/<int:pk>/done/", review.review_done, name="review_done"),
    path("review/<int:pk>/vote/", review.review_vote, name="review_vote"),
    path("studies/<slug:slug>/dashboard/", dashboard.study_dashboard, name="dashboard"),
    path("studies/<slug:slug>/dashboard/refresh/", dashboard.dashboard_refresh, name="dashboard_refresh"),
    path("studies/<slug:slug>/qualify/", qualify.qualify, name="qualify"),
]
urlpatterns += [
    path("studies/<slug:slug>/leaderboard/", leaderboard.leaderboard, name="leaderboard"),
    path("studies/<slug:slug>/leaderboard/refresh/", leaderboard.leaderboard_refresh, name="leaderboard_refresh"),
]
