"""Built-in tasks: generators that write dataset folders in the model kit's contract.

Each task module (:mod:`~edgecloud.tasks.arithmetic`, :mod:`~edgecloud.tasks.smarthome`) exposes
``generate_rows(n, seed, split, mix=None)`` and ``write(out_dir, *, train, validation, test, seed)``
and is run by ``edgecloud data <task> --out DIR``. Nothing in edge/, cloud/, fleet/ or modelkit/
imports a task: the model kit learns from the folders it writes (:mod:`edgecloud.modelkit.data.datasets`).
"""
