"""edgecloud's command line (``edgecloud``, or ``python -m edgecloud``).

The system itself lives in the top-level packages beside this one: ``shared``
(what every part uses), ``edge`` (the device daemon), ``cloud`` (the reasoning
service), ``cloud.fleet`` (the fleet manager) and ``cloud.modelkit`` (the
model kit). This package sits above all of them.
"""
