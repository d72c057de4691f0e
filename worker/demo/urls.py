"""The demo page and its two JSON endpoints."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("jobs/", views.submit, name="submit"),
    path("jobs/<str:job_id>/", views.job_detail, name="job-detail"),
]
