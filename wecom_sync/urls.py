from django.urls import path

from . import views

app_name = "wecom_sync"

urlpatterns = [
    path("callback/<slug:slug>/", views.CallbackView.as_view(), name="callback"),
]
