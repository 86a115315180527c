from django.urls import include, path

from . import views

app_name = "wecom_sync"

urlpatterns = [
    path("callback/<slug:slug>/", views.CallbackView.as_view(), name="callback"),
    path("api/", include("wecom_sync.api.urls")),
]
