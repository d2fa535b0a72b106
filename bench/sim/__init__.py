"""Routing simulator: a discrete-event model of the fleet, driven by the router's own
scheduling (:mod:`router.scheduling`) and admission (:mod:`router.admission`) code.

Modules, one job each: :mod:`~bench.sim.cluster` (GPUs, nodes, engines from the capacity
table), :mod:`~bench.sim.workload` (requests), :mod:`~bench.sim.agentic` (agents' sessions),
:mod:`~bench.sim.prefix` (prompt caches and the routers' maps of them), :mod:`~bench.sim.nodes`
(the nodes' truth), :mod:`~bench.sim.routers` (router replicas), :mod:`~bench.sim.clairvoyant`
(the reference router), :mod:`~bench.sim.run` (the event loop), :mod:`~bench.sim.metrics`
(figures), :mod:`~bench.sim.scenarios` (named scenarios and their checks), :mod:`~bench.sim.svg`
(plots). Run ``python -m bench.sim --help``.
"""
