"""What the benchmark scripts share; nothing here is a benchmark, and none of it runs on its own.

* :mod:`.cloud` -- a real Reasoner server on a loopback port, a real edge service sending traffic
  to it, unique test problems and machine facts (the cloud and learning-loop benchmarks, the
  cascade probe);
* :mod:`.fleet_devices` -- the simulated devices ``fleet_scale.py`` runs in a process of their own;
* :mod:`.machine` -- the machine a run measured, as ``run_all.py`` records it in ``run.json``.
"""
