"""The REST API of wecom_sync (Django REST framework): sources, runs, events, health and the OpenAPI schema.

Included by ``wecom_sync.urls`` under ``api/``. Authentication is whatever the site configures for DRF;
permissions are the admin's model permissions (see ``permissions``).
"""
