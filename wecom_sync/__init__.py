"""Keep a Django site's users and departments in step with a WeCom directory."""

__version__ = "0.1.0"
