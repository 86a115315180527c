"""Pagination of every list of the API: DRF's page-number envelope, whatever the site's default."""

from __future__ import annotations

from rest_framework.pagination import PageNumberPagination


class WeComSyncPagination(PageNumberPagination):
    """``{"count", "next", "previous", "results"}``; ``?page=N`` and ``?page_size=N`` (at most 500)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
