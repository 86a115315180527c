"""The adapter decides how WeCom members become Django users (built out in issue 4)."""


class DefaultWeComAdapter:
    """Default policy: username from userid, name and email from WeCom."""
