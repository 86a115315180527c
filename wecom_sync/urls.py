from django.urls import include, path

from . import login_views, views

app_name = "wecom_sync"

urlpatterns = [
    path("callback/<slug:slug>/", views.CallbackView.as_view(), name="callback"),
    path("api/", include("wecom_sync.api.urls")),
    path("login/<slug:slug>/", login_views.login_start, name="login"),
    path("login/<slug:slug>/callback/", login_views.login_callback, name="login_callback"),
]
