"""HTTP endpoints of wecom_sync. The callback receiver is built in issue 5."""

from django.http import HttpResponse
from rest_framework.views import APIView


class CallbackView(APIView):
    """WeCom callback receiver (placeholder until issue 5 lands: answers 404 for every request)."""

    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request, slug):  # noqa: ANN001, ANN201
        return HttpResponse(status=404)

    post = get
