"""layerq's benchmark against the queues users would otherwise pick: ``python -m bench.run``.

Never imported by the test suite. See bench/README.md for what each workload measures.
"""
