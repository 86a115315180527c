"""Columns whose default the database computes (Django >= 5.0)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models.functions import Now


class DbDefaultUser(AbstractUser):
    level = models.PositiveSmallIntegerField(db_default=3)
    provisioned_at = models.DateTimeField(db_default=Now())
