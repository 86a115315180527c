"""The OpenAPI schema of the API, built by DRF's own generator without optional packages.

DRF's ``AutoSchema`` needs ``uritemplate`` for path parameters and ``inflection`` for list operation ids;
this subclass does both in a few lines, so the schema needs no dependency beyond Django REST framework.
It is served as JSON (YAML would need PyYAML).
"""

from __future__ import annotations

import re
from typing import Any

from django.urls import reverse
from django.utils.encoding import force_str
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONOpenAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.schemas.openapi import AutoSchema, SchemaGenerator
from rest_framework.views import APIView

import wecom_sync

PATH_VARIABLE = re.compile(r"{([^{}/]+)}")


class WeComSyncAutoSchema(AutoSchema):
    """DRF's AutoSchema, with path parameters and plural operation ids computed here."""

    def get_path_parameters(self, path: str, method: str) -> list[dict[str, Any]]:
        model = getattr(getattr(self.view, "queryset", None), "model", None)
        parameters = []
        for name in PATH_VARIABLE.findall(path):
            description = ""
            if model is not None and name != "pk":
                field = next((f for f in model._meta.fields if f.name == name), None)
                description = force_str(getattr(field, "help_text", "") or "")
            schema_type = "integer" if name in ("pk", "id") else "string"
            parameters.append({"name": name, "in": "path", "required": True, "description": description,
                               "schema": {"type": schema_type}})
        return parameters

    def get_operation_id_base(self, path: str, method: str, action: str) -> str:
        if action == "list":
            base = self.operation_id_base or self.view.__class__.__name__
            return base if base.endswith("s") else f"{base}s"
        return super().get_operation_id_base(path, method, action)


class SchemaView(APIView):
    """``GET api/schema/``: the OpenAPI 3 document of the API (JSON), for any signed-in user."""

    permission_classes = [IsAuthenticated]
    renderer_classes = [JSONOpenAPIRenderer, JSONRenderer]
    schema = None  # not part of its own document

    def get(self, request: Request) -> Response:
        from .urls import api_urlpatterns

        generator = SchemaGenerator(
            title="wecom_sync API",
            version=wecom_sync.__version__,
            description="Sources, runs, callback events and health of wecom_sync.",
            patterns=api_urlpatterns,
            url=reverse("wecom_sync:api-root"),
        )
        return Response(generator.get_schema(request=None, public=True))
