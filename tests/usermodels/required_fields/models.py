"""Extra NOT NULL fields without a default: only the project's adapter knows how to fill them."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class RequiredUser(AbstractUser):
    employee_number = models.PositiveIntegerField(unique=True)
    badge = models.CharField(max_length=40)

    REQUIRED_FIELDS = ["email", "employee_number", "badge"]
