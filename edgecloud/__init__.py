"""edgecloud's command line (``edgecloud``, or ``python -m edgecloud``).

The system itself lives in the top-level packages beside this one: ``shared``
(what every part uses), ``edge`` (the device daemon), ``cloud`` (the reasoning
service), ``edgecloud.fleet`` (the fleet manager) and ``edgecloud.modelkit`` (the
model kit). This package sits above all of them.
"""
