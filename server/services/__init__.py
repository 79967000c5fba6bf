"""The workflows the HTTP routes run, one service per concern (docs/architecture.md, "Layers").

A route parses the request, calls one service method and answers with its typed result; it never
reaches the store, runs SQL or reads a row's columns. A service receives its collaborators (the
store's repositories, the instance service, the clock, the secrets) in its constructor, once, in
``server/app.py``, which registers each under its own ``AppKey`` (``server/routes/common.py``).

- ``orgs.OrgService``              orgs, keys, members and invitations
- ``machines.MachineService``      machines, versions, migrations, uploads, the index query
- ``instance_admin.InstanceAdmin`` an instance's creation at a version, lists, history, admin view,
                                   desired version, status, deletion, the state a subscriber starts from
- ``providers.ProviderService``    identity providers, token providers, token exchange
- ``logs.LogService``              the log lines of ``GET /logs``
"""

from __future__ import annotations

from .instance_admin import InstanceAdmin
from .logs import LogService
from .machines import MachineService
from .orgs import OrgService
from .providers import ProviderService

__all__ = ["InstanceAdmin", "LogService", "MachineService", "OrgService", "ProviderService"]
