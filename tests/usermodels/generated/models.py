"""A column the database computes from others (Django >= 5.0)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models.functions import Concat


class GeneratedUser(AbstractUser):
    display_name = models.GeneratedField(
        expression=Concat("first_name", models.Value(" "), "last_name"),
        output_field=models.CharField(max_length=301),
        db_persist=True,
    )
