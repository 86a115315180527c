"""A WeCom (企业微信) API and callback simulator for tests, demos and benchmarks.

Usage::

    from wecom_sync.simulator import WeComSimulator, generate_organisation

    with WeComSimulator(generate_organisation(users=50, departments=8)) as sim:
        ...  # point a SyncSource's api_base_url at sim.base_url; sim.calls counts requests

Plain Python (no Django import), so users can run it in their own tests.
"""

from .faults import Faults
from .org import RESTRICTED_USER_FIELDS, Organisation, generate_organisation
from .server import SimulatorError, WeComSimulator

__all__ = [
    "RESTRICTED_USER_FIELDS",
    "Faults",
    "Organisation",
    "SimulatorError",
    "WeComSimulator",
    "generate_organisation",
]
