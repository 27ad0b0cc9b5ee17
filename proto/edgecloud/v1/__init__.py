"""Stubs of package ``edgecloud.v1``, generated from the ``.proto`` files here.

They are build output (``python -m edgecloud.proto.build``); a missing or stale stub is
generated on first import, so a checkout works without a separate step.
"""

from edgecloud.proto.build import ensure_generated

ensure_generated()
